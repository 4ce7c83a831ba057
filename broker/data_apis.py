"""Produce, Fetch, ListOffsets and DeleteRecords: the data plane of one broker.

Record batches cross this layer as opaque bytes: produce validates headers and CRCs
and patches offsets (SegmentedLog.append), fetch returns whole stored batches. No
record is decoded on a server path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from broker.log_cleaner import refuse_delete_records, refuse_keyless_records
from broker.partition import (
    INFLATION_RATIO_MAX,
    WATCH_HIGH_WATERMARK,
    WATCH_LAST_STABLE,
    WATCH_LOG_END,
    Partition,
)
from broker.replica_manager import ReplicaManager
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import (
    CONSUMER_REPLICA_ID,
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    READ_COMMITTED,
    AbortedTransaction,
    DeleteRecordsRequest,
    DeleteRecordsResponse,
    EpochEndOffset,
    FetchRequest,
    FetchResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    PartitionFetch,
    PartitionFetchResult,
    PartitionLowWatermark,
    PartitionOffset,
    PartitionProduce,
    PartitionProduceResult,
    ProduceRequest,
    ProduceResponse,
    TopicFetchResult,
    TopicLowWatermarks,
    TopicOffsets,
    TopicProduceResult,
)
from client.protocol.schema import from_body, to_body
from storage.log import (
    InvalidLeaderEpochError,
    LogError,
    LogStorageError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
)
from storage.records import ControlBatchError, RecordBatchError, UnsupportedCompressionError

log = logging.getLogger(__name__)

ACKS_NONE, ACKS_LEADER, ACKS_ALL = 0, 1, -1
# Kafka's broker fetch.max.bytes (55 MiB): no fetch answer is larger, whatever it asks
# (one batch larger than what is left still goes, KIP-74, bounded by the batch size).
FETCH_MAX_BYTES = 55 * 1024 * 1024


def _refuse_repeated_partitions(request: FetchRequest) -> None:
    seen: set[tuple[str, int]] = set()
    for topic in request.topics:
        for item in topic.partitions:
            key = (topic.name, item.partition)
            if key in seen:
                raise KafkaError(
                    ErrorCode.INVALID_REQUEST, f"{topic.name}-{item.partition} is named twice"
                )
            seen.add(key)


def _error_of(error: Exception) -> tuple[int, str]:
    if isinstance(error, KafkaError):
        return error.code, error.message
    if isinstance(error, RecordTooLargeError):
        return ErrorCode.MESSAGE_TOO_LARGE, str(error)
    if isinstance(error, UnsupportedCompressionError):
        return ErrorCode.UNSUPPORTED_COMPRESSION_TYPE, str(error)
    if isinstance(error, ControlBatchError):
        return ErrorCode.INVALID_RECORD, str(error)
    if isinstance(error, RecordBatchError):
        return ErrorCode.CORRUPT_MESSAGE, str(error)
    if isinstance(error, InvalidLeaderEpochError):
        return ErrorCode.FENCED_LEADER_EPOCH, str(error)
    if isinstance(error, LogStorageError):
        return ErrorCode.KAFKA_STORAGE_ERROR, str(error)
    if isinstance(error, OffsetOutOfRangeError):
        return ErrorCode.OFFSET_OUT_OF_RANGE, str(error)
    if isinstance(error, LogError):
        return ErrorCode.UNKNOWN_SERVER_ERROR, str(error)
    raise error


# KIP-890 part 1: (transactional id, producer id, epoch, topic, partition) -> the
# coordinator's error code for "is this partition part of that open transaction?".
VerifyTransaction = Callable[[str, int, int, str, int], Awaitable[int]]


class DataApis:
    def __init__(
        self,
        replicas: ReplicaManager,
        *,
        is_registered: Callable[[int, int], bool],
        verify_transaction: VerifyTransaction | None = None,
    ):
        self.replicas = replicas
        # (replica id, broker epoch) -> is that the broker's current incarnation?
        self.is_registered = is_registered
        self.verify_transaction = verify_transaction

    # ------------------------------------------------------------------ produce

    async def produce(self, body: Any) -> Any:
        response = await self.produce_request(from_body(ProduceRequest, body))
        return None if response is None else to_body(response)

    async def produce_request(self, request: ProduceRequest) -> ProduceResponse | None:
        """Produce, for either codec; None for acks=0 (no answer is due)."""
        if request.acks not in (ACKS_NONE, ACKS_LEADER, ACKS_ALL):
            raise KafkaError(ErrorCode.INVALID_REQUIRED_ACKS, f"acks={request.acks}")
        results: dict[tuple[str, int], PartitionProduceResult] = {}
        waits: list[tuple[str, int, Partition, int, int, int]] = []
        for topic in request.topics:
            for item in topic.partitions:
                if self.verify_transaction is None:
                    outcome = self._append(topic.name, item, request.acks, None)
                else:
                    outcome = await self._append_verified(
                        topic.name, item, request.acks, request.transactional_id
                    )
                if isinstance(outcome, PartitionProduceResult):
                    results[(topic.name, item.partition)] = outcome
                else:
                    partition, base, last = outcome
                    results[(topic.name, item.partition)] = PartitionProduceResult(
                        partition=item.partition,
                        error_code=ErrorCode.NONE,
                        base_offset=base,
                        log_start_offset=partition.log.log_start_offset,
                    )
                    if request.acks == ACKS_ALL or partition.flush_due():
                        waits.append(
                            (
                                topic.name,
                                item.partition,
                                partition,
                                base,
                                last,
                                partition.leader_epoch,
                            )
                        )
        await self._wait_durable(waits, results)
        waits = [w for w in waits if results[(w[0], w[1])].error_code == ErrorCode.NONE]
        if waits and request.acks == ACKS_ALL:
            await self._wait_replicated(waits, results, request.timeout_ms)
        if request.acks == ACKS_NONE:
            return None  # the RPC layer still answers; a Kafka client ignores it
        return _produce_response(request, results)

    async def _append_verified(
        self, topic: str, item: PartitionProduce, acks: int, transactional_id: str | None
    ) -> PartitionProduceResult | tuple[Partition, int, int]:
        """KIP-890 part 1: a transactional batch that would open a transaction here is
        first checked with its coordinator; the append re-validates with no await
        between its checks, the append and the producer state's record."""
        try:
            partition = self.replicas.partition(topic, item.partition)
            partition.require_leader(item.current_leader_epoch)
            pending = partition.unverified_transactions(item.records)
        except Exception:
            return self._append(topic, item, acks, {})  # which reports the error
        guards: dict[int, object] = {}
        if pending and transactional_id is None:
            return PartitionProduceResult(
                partition=item.partition,
                error_code=ErrorCode.INVALID_RECORD,
                error_message="transactional batches need the request's transactional_id",
            )
        assert self.verify_transaction is not None
        for producer_id, epoch in pending:
            assert transactional_id is not None
            guards[producer_id] = partition.begin_verification(producer_id)
            code = await self.verify_transaction(
                transactional_id, producer_id, epoch, topic, item.partition
            )
            if code != ErrorCode.NONE:
                return PartitionProduceResult(
                    partition=item.partition,
                    error_code=code,
                    error_message=f"producer {producer_id}: the coordinator did not verify "
                    f"{topic}-{item.partition} in transaction {transactional_id!r}",
                )
        return self._append(topic, item, acks, guards)

    def _append(
        self,
        topic: str,
        item: PartitionProduce,
        acks: int,
        verified: dict[int, object] | None,
    ) -> PartitionProduceResult | tuple[Partition, int, int]:
        try:
            partition = self.replicas.partition(topic, item.partition)
            partition.require_leader(item.current_leader_epoch)
            if acks == ACKS_ALL:
                needed = self.replicas.min_insync_replicas(topic)
                if len(partition.isr) < needed:
                    raise KafkaError(
                        ErrorCode.NOT_ENOUGH_REPLICAS,
                        f"{partition}: ISR {list(partition.isr)} is smaller than "
                        f"min.insync.replicas={needed}",
                    )
            refuse_keyless_records(
                topic,
                self.replicas.topic_settings(topic),
                item.records,
                inflated_bytes_max=partition.log.config.max_message_bytes * INFLATION_RATIO_MAX,
            )
            info = partition.append_as_leader(item.records, verified=verified)
        except Exception as error:
            code, message = _error_of(error)
            return PartitionProduceResult(
                partition=item.partition, error_code=code, error_message=message
            )
        return partition, info.first_offset, info.last_offset

    async def _wait_durable(
        self,
        waits: list[tuple[str, int, Partition, int, int, int]],
        results: dict[tuple[str, int], PartitionProduceResult],
    ) -> None:
        """flush.messages: appends that reached the count are synced before any answer
        (with group commit, one fsync covers every request waiting meanwhile)."""
        due = [w for w in waits if w[2].flush_due()]
        if not due:
            return
        now_ms = self.replicas.now_ms()

        async def sync_one(topic: str, index: int, partition: Partition, last: int) -> None:
            try:
                await partition.wait_durable(last + 1, now_ms)
            except KafkaError as error:
                results[(topic, index)] = PartitionProduceResult(
                    partition=index, error_code=error.code, error_message=error.message
                )

        async with trio.open_nursery() as nursery:
            for topic, index, partition, _, last, _ in due:
                nursery.start_soon(sync_one, topic, index, partition, last)

    async def _wait_replicated(
        self,
        waits: list[tuple[str, int, Partition, int, int, int]],
        results: dict[tuple[str, int], PartitionProduceResult],
        timeout_ms: int,
    ) -> None:
        async def wait_one(
            topic: str, index: int, partition: Partition, last: int, epoch: int
        ) -> None:
            try:
                await partition.wait_committed(last, epoch)
            except KafkaError as error:
                results[(topic, index)] = PartitionProduceResult(
                    partition=index, error_code=error.code, error_message=error.message
                )
                return
            committed(topic, index, partition)

        def committed(topic: str, index: int, partition: Partition) -> None:
            needed = self.replicas.min_insync_replicas(topic)
            if len(partition.isr) < needed:
                # Replicated, but by fewer than promised: Kafka says so and the
                # producer may retry (the write is kept).
                results[(topic, index)] = PartitionProduceResult(
                    partition=index,
                    error_code=ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                    error_message=f"ISR shrank to {list(partition.isr)} before replication",
                )

        # Committed already (an ISR of one commits at the append): no task waits for it.
        pending = {(topic, index) for topic, index, *_ in waits}
        behind = []
        for wait in waits:
            topic, index, partition, _, last, _ = wait
            if partition.high_watermark > last:
                committed(topic, index, partition)
                pending.discard((topic, index))
            else:
                behind.append(wait)
        if not behind:
            return
        with trio.move_on_after(max(0, timeout_ms) / 1000):
            async with trio.open_nursery() as nursery:
                for topic, index, partition, _, last, epoch in behind:
                    nursery.start_soon(
                        self._track, wait_one, pending, topic, index, partition, last, epoch
                    )
        for topic, index in pending:
            results[(topic, index)] = PartitionProduceResult(
                partition=index,
                error_code=ErrorCode.REQUEST_TIMED_OUT,
                error_message=f"not replicated to the ISR within {timeout_ms} ms",
            )

    @staticmethod
    async def _track(wait_one: Any, pending: set, topic: str, index: int, *args: Any) -> None:
        await wait_one(topic, index, *args)
        pending.discard((topic, index))

    # ------------------------------------------------------------------ fetch

    async def consumer_fetch(self, body: Any) -> Any:
        """Fetch on the client listener: consumers only."""
        return await self.fetch(body, replication=False)

    async def replica_fetch(self, body: Any) -> Any:
        """Fetch on the REPLICATION listener: followers only."""
        return await self.fetch(body, replication=True)

    async def fetch(self, body: Any, *, replication: bool) -> Any:
        return to_body(await self.fetch_request(from_body(FetchRequest, body), replication))

    async def fetch_request(self, request: FetchRequest, replication: bool) -> FetchResponse:
        """Fetch, for either codec: long-polls until `min_bytes` or `max_wait_ms`."""
        _refuse_repeated_partitions(request)
        from_follower = request.replica_id != CONSUMER_REPLICA_ID
        if from_follower != replication:
            raise KafkaError(
                ErrorCode.INVALID_REQUEST,
                "follower fetches are served on the REPLICATION listener, consumer fetches "
                "on the client listener",
            )
        if from_follower and not self.is_registered(request.replica_id, request.broker_epoch):
            raise KafkaError(
                ErrorCode.STALE_BROKER_EPOCH,
                f"replica {request.replica_id} epoch {request.broker_epoch} is not current",
            )
        deadline = trio.current_time() + max(0, request.max_wait_ms) / 1000
        if from_follower:
            watched = WATCH_LOG_END
        elif request.isolation_level == READ_COMMITTED:
            watched = WATCH_LAST_STABLE
        else:
            watched = WATCH_HIGH_WATERMARK
        first_pass = True
        while True:
            response, size = self._read_all(request, from_follower and first_pass)
            first_pass = False
            if (
                size >= request.min_bytes
                or trio.current_time() >= deadline
                or _must_answer_now(response)
            ):
                return response
            await self._park(request, watched, deadline)

    async def _park(self, request: FetchRequest, watched: int, deadline: float) -> None:
        """Until one of the fetch's own partitions moves what this fetcher reads up to
        (or changes leadership), or the deadline. Registered with no await since the
        read, so nothing that lands in between is missed."""
        changed = trio.Event()
        partitions = []
        for topic in request.topics:
            for item in topic.partitions:
                try:
                    partition = self.replicas.partition(topic.name, item.partition)
                except KafkaError:
                    continue  # gone since the read: nothing to wait for there
                partition.watch_offset(changed, watched)
                partitions.append(partition)
        try:
            with trio.move_on_at(deadline):
                await changed.wait()
        finally:
            for partition in partitions:
                partition.unwatch(changed)

    def _read_all(self, request: FetchRequest, record_fetch: bool) -> tuple[FetchResponse, int]:
        """Read every partition; `record_fetch`: count this as the follower's fetch."""
        now_ms = self.replicas.now_ms()
        budget = min(request.max_bytes, FETCH_MAX_BYTES)
        total = 0
        topics = []
        for topic in request.topics:
            results = []
            for item in topic.partitions:
                result = self._read_one(
                    topic.name,
                    item,
                    request.replica_id,
                    request.broker_epoch,
                    record_fetch,
                    budget,
                    now_ms,
                    request.isolation_level == READ_COMMITTED,
                )
                size = len(result.records)
                budget -= size
                total += size
                results.append(result)
            topics.append(TopicFetchResult(name=topic.name, partitions=tuple(results)))
        return FetchResponse(topics=tuple(topics)), total

    def _read_one(
        self,
        topic: str,
        item: PartitionFetch,
        replica_id: int,
        broker_epoch: int,
        record_fetch: bool,
        budget: int,
        now_ms: int,
        read_committed: bool = False,
    ) -> PartitionFetchResult:
        from_follower = replica_id != CONSUMER_REPLICA_ID
        # Followers copy the whole log, whatever level they name.
        read_committed = read_committed and not from_follower
        partition: Partition | None = None
        try:
            partition = self.replicas.partition(topic, item.partition)
            partition.require_leader(item.current_leader_epoch)
            log_ = partition.log
            if record_fetch:
                diverging = partition.on_follower_fetch(
                    replica_id, item.fetch_offset, item.last_fetched_epoch, now_ms, broker_epoch
                )
                self.replicas.isr_may_change()
                if diverging is not None:
                    return PartitionFetchResult(
                        partition=item.partition,
                        error_code=ErrorCode.NONE,
                        high_watermark=partition.high_watermark,
                        log_start_offset=log_.log_start_offset,
                        log_end_offset=log_.log_end_offset,
                        diverging_epoch=EpochEndOffset(
                            epoch=diverging.epoch, end_offset=diverging.end_offset
                        ),
                    )
            last_stable = -1 if from_follower else partition.last_stable_offset
            if from_follower:
                limit = log_.log_end_offset
            else:
                limit = last_stable if read_committed else partition.high_watermark
            if not log_.log_start_offset <= item.fetch_offset <= log_.log_end_offset:
                raise OffsetOutOfRangeError(
                    item.fetch_offset, log_.log_start_offset, log_.log_end_offset
                )
            data = b""
            aborted: tuple[AbortedTransaction, ...] | None = None
            if item.fetch_offset < limit and budget > 0:
                max_bytes = min(item.partition_max_bytes, budget)
                if read_committed:
                    sliced, upper = log_.read_slice(item.fetch_offset, max_bytes, limit)
                    data = bytes(sliced)
                    aborted = tuple(
                        AbortedTransaction(producer_id=pid, first_offset=first)
                        for pid, first in partition.aborted_transactions(item.fetch_offset, upper)
                    )
                else:
                    data = bytes(log_.read(item.fetch_offset, max_bytes, max_offset=limit))
            if read_committed and aborted is None:
                aborted = ()
            return PartitionFetchResult(
                partition=item.partition,
                error_code=ErrorCode.NONE,
                high_watermark=partition.high_watermark,
                log_start_offset=log_.log_start_offset,
                log_end_offset=log_.log_end_offset,
                records=data,
                last_stable_offset=last_stable,
                aborted_transactions=aborted,
            )
        except Exception as error:
            code, message = _error_of(error)
            result = PartitionFetchResult(
                partition=item.partition, error_code=code, error_message=message
            )
            if isinstance(error, OffsetOutOfRangeError):
                # The valid range, so the consumer can reset its position.
                result = PartitionFetchResult(
                    partition=item.partition,
                    error_code=code,
                    error_message=message,
                    log_start_offset=error.log_start_offset,
                    log_end_offset=error.log_end_offset,
                    high_watermark=-1 if partition is None else partition.high_watermark,
                )
            return result

    # ------------------------------------------------------------------ offsets

    def _each_partition(
        self,
        topics: Any,
        answer: Callable[[Partition, Any], Any],
        failed: Callable[[Any, int], Any],
        *,
        current_epoch: Callable[[Any], int] = lambda item: -1,
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """Per topic, each partition's answer from this broker as its leader (or error)."""
        out = []
        for topic in topics:
            results = []
            for item in topic.partitions:
                try:
                    partition = self.replicas.partition(topic.name, item.partition)
                    partition.require_leader(current_epoch(item))
                    results.append(answer(partition, item))
                except Exception as error:
                    results.append(failed(item, _error_of(error)[0]))
            out.append((topic.name, tuple(results)))
        return out

    async def list_offsets(self, body: Any) -> Any:
        return to_body(self.list_offsets_request(from_body(ListOffsetsRequest, body)))

    def list_offsets_request(self, request: ListOffsetsRequest) -> ListOffsetsResponse:
        answers = self._each_partition(
            request.topics,
            lambda partition, item: _offset_of(
                partition,
                item.partition,
                item.timestamp,
                read_committed=request.isolation_level == READ_COMMITTED,
            ),
            lambda item, code: PartitionOffset(partition=item.partition, error_code=code),
            current_epoch=lambda item: item.current_leader_epoch,
        )
        topics = tuple(TopicOffsets(name=name, partitions=parts) for name, parts in answers)
        return ListOffsetsResponse(topics=topics)

    async def delete_records(self, body: Any) -> Any:
        return to_body(self.delete_records_request(from_body(DeleteRecordsRequest, body)))

    def delete_records_request(self, request: DeleteRecordsRequest) -> DeleteRecordsResponse:
        answers = self._each_partition(
            request.topics,
            lambda partition, item: _delete_before(
                partition, item, self.replicas.topic_settings(partition.topic)
            ),
            lambda item, code: PartitionLowWatermark(partition=item.partition, error_code=code),
        )
        topics = tuple(TopicLowWatermarks(name=name, partitions=parts) for name, parts in answers)
        return DeleteRecordsResponse(topics=topics)


def _delete_before(
    partition: Partition, item: Any, settings: dict[str, str]
) -> PartitionLowWatermark:
    refuse_delete_records(partition.topic, settings)
    return PartitionLowWatermark(
        partition=item.partition,
        error_code=ErrorCode.NONE,
        low_watermark=partition.delete_records_before(item.offset),
    )


# ListOffsets' spec for the record with the largest timestamp (KIP-734, Kafka's v7+).
MAX_TIMESTAMP = -3


def _offset_of(
    partition: Partition, index: int, timestamp: int, *, read_committed: bool = False
) -> PartitionOffset:
    log_ = partition.log
    # read_committed sees up to the last stable offset, no further (KIP-98).
    visible_end = partition.last_stable_offset if read_committed else partition.high_watermark
    if timestamp == EARLIEST_TIMESTAMP:
        return PartitionOffset(
            partition=index, error_code=ErrorCode.NONE, offset=log_.log_start_offset
        )
    if timestamp == LATEST_TIMESTAMP:
        return PartitionOffset(
            partition=index,
            error_code=ErrorCode.NONE,
            offset=visible_end,
            leader_epoch=partition.leader_epoch,
        )
    if timestamp == MAX_TIMESTAMP:
        found = log_.max_timestamp_record()
    else:
        found = log_.offset_for_timestamp(timestamp)
    if found is None or found.offset >= visible_end:
        return PartitionOffset(partition=index, error_code=ErrorCode.NONE)  # -1: none yet
    return PartitionOffset(
        partition=index, error_code=ErrorCode.NONE, offset=found.offset, timestamp=found.timestamp
    )


def _produce_response(
    request: ProduceRequest, results: dict[tuple[str, int], PartitionProduceResult]
) -> ProduceResponse:
    return ProduceResponse(
        topics=tuple(
            TopicProduceResult(
                name=topic.name,
                partitions=tuple(results[(topic.name, p.partition)] for p in topic.partitions),
            )
            for topic in request.topics
        )
    )


def _must_answer_now(response: FetchResponse) -> bool:
    """An error or a divergence is news: holding it would lose it (the next pass of a
    long poll no longer counts the fetch, so it would not find the divergence again)."""
    return any(
        result.error_code != ErrorCode.NONE or result.diverging_epoch is not None
        for topic in response.topics
        for result in topic.partitions
    )
