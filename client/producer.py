"""The trio producer: Kafka's knobs and guarantees.

    async with Producer("127.0.0.1:9092", acks="all") as producer:
        delivery = await producer.send("orders", b"value", key=b"customer-7")
        metadata = await delivery        # RecordMetadata(topic, partition, offset, timestamp)
        await producer.send_and_wait("orders", b"another")

`send` returns as soon as the record is in the accumulator (it waits only for
metadata of a new topic, or for room when `buffer_records` records are pending, and
yields once before it opens a new batch, so that the sender runs while a loop sends).
A sender task drains ready batches to each partition's leader, at most
`max_in_flight` requests per partition, and retries retriable errors after
refreshing metadata, putting the batch back at the head of its partition's queue, so
with `max_in_flight=1` the partition's order survives retries. A delivery fails once
`delivery_timeout_ms` has passed since the record was appended, or at once on a
non-retriable error. Success is only reported for what the broker acknowledged at
the requested `acks`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio

from client.accumulator import Delivery, ProducerBatch, RecordAccumulator, RecordMetadata
from client.cluster import DEFAULT_BOOTSTRAP, RETRY_BACKOFF_MS, ClusterClient
from client.idempotence import INIT_RETRY_ON, ProducerSequences, init_producer_id
from client.partitioner import murmur2, to_positive
from client.protocol import environment
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.transaction_manager import (
    GroupMetadata,
    TransactionAbortable,
    TransactionManager,
    TxnState,
)
from storage.records import Compression

log = logging.getLogger(__name__)

ACKS = {"all": -1, "-1": -1, -1: -1, "1": 1, 1: 1, "0": 0, 0: 0}
COMPRESSION = {codec.name.lower(): codec for codec in Compression}  # Kafka's compression.type
KEY_HASH_CACHE_SIZE = 100_000
MAX_IN_FLIGHT_IDEMPOTENT = 5  # what a leader's producer state remembers per producer
TopicProduceData = kafka.ProduceRequest.TopicProduceData
PartitionProduceData = kafka.ProduceRequest.PartitionProduceData
# Errors after which the leader must be looked up again.
REFRESH_ON = frozenset(
    {
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.NETWORK_EXCEPTION,
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.BROKER_NOT_AVAILABLE,
    }
)


class Producer:
    def __init__(
        self,
        bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP,
        *,
        acks: str | int = "all",
        linger_ms: int = 5,
        batch_size: int = 16_384,
        compression: str = "none",
        max_in_flight: int = 5,
        retry_backoff_ms: int = RETRY_BACKOFF_MS,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        buffer_records: int = 200_000,
        client_id: str = "pykraft-producer",
        enable_idempotence: bool | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        if acks not in ACKS:
            raise ValueError(f"acks must be all, 1 or 0, got {acks!r}")
        if transactional_id is not None:
            if enable_idempotence is False:
                raise ValueError("a transactional producer is idempotent")
            enable_idempotence = True
        if enable_idempotence is None:  # Kafka 3's default: on, unless the settings forbid it
            enable_idempotence = ACKS[acks] == -1 and max_in_flight <= MAX_IN_FLIGHT_IDEMPOTENT
        elif enable_idempotence and ACKS[acks] != -1:
            raise ValueError("enable_idempotence needs acks=all")
        elif enable_idempotence and max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT:
            raise ValueError(
                f"enable_idempotence allows max_in_flight up to {MAX_IN_FLIGHT_IDEMPOTENT}"
            )
        if compression not in COMPRESSION:
            raise ValueError(
                f"compression must be one of {', '.join(COMPRESSION)}, got {compression!r}"
            )
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.acks = ACKS[acks]
        self.max_in_flight = max_in_flight
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.request_timeout_ms = request_timeout_ms
        self.buffer_records = buffer_records
        self.cluster = ClusterClient(
            bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms
        )
        self.accumulator = RecordAccumulator(
            batch_size=batch_size, linger_ms=linger_ms, compression=COMPRESSION[compression]
        )
        self.idempotent = enable_idempotence
        self.sequences = ProducerSequences() if enable_idempotence else None
        self.transactions = (
            None
            if transactional_id is None
            else TransactionManager(self.cluster, transactional_id, transaction_timeout_ms)
        )
        self._in_flight: dict[tuple[str, int], int] = {}
        self._sticky: dict[str, int] = {}
        # murmur2 in Python costs ~1.5 us; keys repeat in most workloads.
        self._key_hashes: dict[bytes, int] = {}
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self.retries = 0
        self.rng = environment.current().new_rng()
        self._wall_ms = environment.current().wall_ms  # the environment the producer is made in

    async def __aenter__(self) -> Producer:
        if self.sequences is not None and self.transactions is None:
            await self._new_identity()  # a transactional producer's is init_transactions'
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._sender)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.flush()
            await self._abort_open_transaction()
        finally:
            self._closed = True
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            await self._nursery_manager.__aexit__(None, None, None)
            if self.transactions is not None:
                await self.transactions.aclose()
            await self.cluster.aclose()

    async def close(self) -> None:
        await self.__aexit__(None, None, None)

    async def _abort_open_transaction(self) -> None:
        """Closing inside a transaction aborts it, as Kafka's producer does, rather than
        leave it open (and the partitions' last stable offsets held) until the
        coordinator's transaction timeout. Best effort, within two request timeouts."""
        transactions = self.transactions
        if transactions is None or transactions.state is not TxnState.IN_TRANSACTION:
            return
        if transactions.fatal is not None:
            return
        with trio.move_on_after(2 * self.request_timeout_ms / 1000):
            try:
                await self.abort_transaction()
                log.info(
                    "%s: the open transaction was aborted at close", transactions.transactional_id
                )
            except KafkaError as error:
                log.info("%s: abort at close failed: %s", transactions.transactional_id, error)

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes | None]] = (),
        timestamp: int | None = None,
    ) -> Delivery:
        """Queue one record; the returned Delivery is awaited for its metadata."""
        if self._nursery is None or self._closed:
            raise RuntimeError("use the producer inside `async with Producer(...)`")
        while self.accumulator.records >= self.buffer_records:
            await self._progress.wait()  # backpressure, like buffer.memory
        known = self.cluster.partitions.get(topic)
        count = len(known) if known else await self.cluster.partition_count(topic, wait_s=1.0)
        if partition is None:
            if key is None:
                partition = self._sticky_partition(topic, count)
            else:
                hashed = self._key_hashes.get(key)
                partition = (self._hash_key(key) if hashed is None else hashed) % count
        elif not 0 <= partition < count:
            raise KafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic} has no partition {partition}"
            )
        stamp = self._wall_ms() if timestamp is None else timestamp
        tp = (topic, partition)
        transactions = self.transactions
        if transactions is not None and tp not in transactions.added:
            await transactions.add_partition(tp)  # before any batch of it goes out
        accumulator = self.accumulator
        delivery = accumulator.append_to_open(tp, stamp, key, value, headers)
        if delivery is None:
            # A new batch: first let the sender run (a loop of sends never yields
            # otherwise, and the brokers would idle until backpressure). Nothing is
            # appended yet, so a cancellation here loses no record.
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise RuntimeError("the producer is closed")
            delivery = accumulator.append(tp, stamp, key, value, headers, trio.current_time())
        elif delivery.batch.size_bytes < accumulator.batch_size:
            # The sender already knows this batch (its creation woke it) and when it
            # lingers out: only a batch that fills up needs it sooner.
            return delivery
        if key is None and accumulator.open_batch_is_full(tp):
            self._sticky.pop(topic, None)  # KIP-480: move on once the batch is full
        if not self._wake.is_set():
            self._wake.set()
        return delivery

    async def send_and_wait(self, topic: str, value: bytes | None, **kwargs: Any) -> RecordMetadata:
        return await (await self.send(topic, value, **kwargs))

    def _hash_key(self, key: bytes) -> int:
        if len(self._key_hashes) >= KEY_HASH_CACHE_SIZE:
            self._key_hashes.clear()
        hashed = self._key_hashes[key] = to_positive(murmur2(key))
        return hashed

    def _sticky_partition(self, topic: str, count: int) -> int:
        sticky = self._sticky.get(topic)
        if sticky is None or sticky >= count:
            sticky = self._sticky[topic] = self.rng.randrange(count)
        return sticky

    async def flush(self) -> None:
        """Until every record sent so far is acknowledged or failed."""
        self.accumulator.flushing = True
        self._wake.set()
        try:
            while self.accumulator.records > 0:
                await self._progress.wait()
        finally:
            self.accumulator.flushing = False

    # ------------------------------------------------------------------ transactions

    def _transactions(self) -> TransactionManager:
        if self.transactions is None:
            raise RuntimeError("a producer made without transactional_id has no transactions")
        if self._nursery is None or self._closed:
            raise RuntimeError("use the producer inside `async with Producer(...)`")
        return self.transactions

    async def init_transactions(self) -> None:
        """Fences older producers of the transactional id, aborting what they left open."""
        transactions = self._transactions()
        producer_id, epoch = await transactions.init()
        self._take_identity(producer_id, epoch)

    def _take_identity(self, producer_id: int, epoch: int) -> None:
        assert self.sequences is not None
        self.sequences.new_identity(producer_id, epoch, self.accumulator.waiting_retries())
        self.accumulator.sequences = self.sequences
        self.accumulator.transactional = True

    def begin_transaction(self) -> None:
        self._transactions().begin()

    async def send_offsets_to_transaction(
        self, offsets: Mapping[tuple[str, int], int], group: GroupMetadata | str
    ) -> None:
        """Commit a consumer group's offsets (the next offset to read, per partition)
        with the transaction: `group` is `consumer_group_metadata(consumer)`, or a
        group id alone for a group without members."""
        metadata = GroupMetadata(group) if isinstance(group, str) else group
        await self._transactions().send_offsets(offsets, metadata)

    async def commit_transaction(self) -> None:
        """Every record sent, then EndTxn commit; TransactionAbortable if one failed."""
        transactions = self._transactions()
        transactions.require(TxnState.IN_TRANSACTION)
        await self.flush()
        transactions.require(TxnState.IN_TRANSACTION)  # fenced while flushing?
        if transactions.abortable is not None:
            raise TransactionAbortable(
                transactions.abortable.code,
                f"the transaction cannot commit ({transactions.abortable}): abort it",
            )
        bumped = await transactions.end(commit=True)
        if bumped is not None:  # KIP-890 part 2: the next transaction is a new epoch
            self._take_identity(*bumped)

    async def abort_transaction(self) -> None:
        """Unsent records dropped (their deliveries fail), EndTxn abort."""
        transactions = self._transactions()
        transactions.require(TxnState.IN_TRANSACTION)
        self._drop_queued(
            TransactionAbortable(ErrorCode.TRANSACTION_ABORTABLE, "the transaction was aborted")
        )
        await self.flush()  # what is in flight is answered first
        bumped = await transactions.end(commit=False)
        assert self.sequences is not None
        if bumped is not None:  # KIP-890 part 2: the end bumped it; sequences start anew
            self._take_identity(*bumped)
        elif self.sequences.bump_due:  # a gap: the next transaction starts a new epoch
            self._take_identity(*await transactions.init(bump=True))

    # ------------------------------------------------------------------ the sender task

    async def _sender(self) -> None:
        assert self._nursery is not None
        while True:
            sequences = self.sequences
            if sequences is not None and sequences.bump_due and self.transactions is not None:
                # A gap in the open transaction: it can only abort, which bumps the epoch.
                self._drop_queued(
                    TransactionAbortable(
                        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                        "an earlier batch of the transaction failed",
                    )
                )
            elif sequences is not None and sequences.bump_due:
                if not any(self._in_flight.values()):
                    await self._new_identity()
                    continue
                await self._wake.wait()  # until the requests in flight are answered
                self._wake = trio.Event()
                continue
            now = trio.current_time()
            for batch in self.accumulator.expire(now, self.delivery_timeout_s):
                self._complete(
                    batch,
                    KafkaError(
                        ErrorCode.REQUEST_TIMED_OUT,
                        f"not delivered within delivery_timeout_ms to {batch.tp}",
                    ),
                )
            muted = {tp for tp, n in self._in_flight.items() if n >= self.max_in_flight}
            if self.transactions is not None:
                # A partition's first batch of a transaction alone: the leader verifies
                # it with the coordinator, and a second one would void that check.
                opened = self.transactions.opened
                muted.update(tp for tp, n in self._in_flight.items() if n and tp not in opened)
            ready, next_s = self.accumulator.ready(now, muted)
            by_leader: dict[int, list[ProducerBatch]] = {}
            unknown = False
            for tp in ready:
                leader = self.cluster.leader(*tp)
                if leader is None:
                    unknown = True
                    continue
                by_leader.setdefault(leader.leader, []).append(self.accumulator.drain(tp))
                self._in_flight[tp] = self._in_flight.get(tp, 0) + 1
            for leader_id, batches in by_leader.items():
                self._nursery.start_soon(self._send_request, leader_id, batches)
            if unknown:
                self._nursery.start_soon(self._refresh_quietly)
                next_s = min(next_s, now + self.retry_backoff_s)
            with trio.move_on_at(next_s if math.isfinite(next_s) else now + 1.0):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _new_identity(self) -> None:
        """InitProducerId: the first, or a bump of the current epoch (KIP-360),
        asked again after a backoff while no broker answers."""
        sequences = self.sequences
        assert sequences is not None
        while True:
            try:
                producer_id, epoch = await init_producer_id(
                    self.cluster, producer_id=sequences.producer_id, epoch=sequences.epoch
                )
            except KafkaError as error:
                if not (error.retriable or error.code in INIT_RETRY_ON):
                    raise
                log.info("InitProducerId failed, asking again: %s", error)
                await trio.sleep(self.retry_backoff_s)
                continue
            if sequences.producer_id >= 0:
                log.info("producer epoch bumped: id %d epoch %d", producer_id, epoch)
            sequences.new_identity(producer_id, epoch, self.accumulator.waiting_retries())
            self.accumulator.sequences = sequences
            return

    async def _refresh_quietly(self) -> None:
        try:
            await self.cluster.refresh([])
        except KafkaError as error:
            log.debug("metadata refresh failed: %s", error)

    async def _send_request(self, leader_id: int, batches: list[ProducerBatch]) -> None:
        by_topic: dict[str, list[Any]] = {}
        for batch in batches:
            by_topic.setdefault(batch.tp[0], []).append(
                PartitionProduceData(index=batch.tp[1], records=batch.build())
            )
        transactions = self.transactions
        request = kafka.ProduceRequest(
            transactional_id=None if transactions is None else transactions.transactional_id,
            acks=self.acks,
            timeout_ms=self.request_timeout_ms,
            topic_data=tuple(
                TopicProduceData(name=t, partition_data=tuple(p)) for t, p in by_topic.items()
            ),
        )
        outcomes: dict[tuple[str, int], Any] = {}
        try:
            response = await self.cluster.request_broker(leader_id, request)
        except KafkaError as failure:
            codes = {batch.tp: (failure.code, failure.message) for batch in batches}
        else:
            codes = {}
            if response is None:  # acks=0: the broker says nothing; the offset is unknown
                outcomes = {batch.tp: None for batch in batches}
            else:
                for topic in response.responses:
                    for result in topic.partition_responses:
                        tp = (topic.name, result.index)
                        if result.error_code == ErrorCode.NONE:
                            outcomes[tp] = result
                        else:
                            codes[tp] = (result.error_code, _error_text(tp, result))
        refresh = False
        sequences = self.sequences
        for batch in batches:
            self._in_flight[batch.tp] -= 1
            if batch.tp in outcomes:
                result = outcomes[batch.tp]
                if result is None:
                    batch.succeed(-1)
                else:
                    batch.succeed(result.base_offset, result.log_append_time_ms)
                if sequences is not None:
                    sequences.acknowledged(batch)
                if transactions is not None:
                    transactions.opened.add(batch.tp)
                self.accumulator.completed(batch)
                continue
            code, text = codes.get(
                batch.tp,
                (ErrorCode.UNKNOWN_SERVER_ERROR, f"{batch.tp[0]}-{batch.tp[1]}: not answered"),
            )
            error = KafkaError(code, text)
            expired = trio.current_time() - batch.created_s >= self.delivery_timeout_s
            retriable = error.retriable
            if sequences is not None and batch.base_sequence >= 0:
                if code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER:
                    # Refused for an earlier batch the leader has not taken yet: retried
                    # after it. The next one expected refused: records were lost.
                    retriable = not sequences.is_next(batch)
                elif code == ErrorCode.UNKNOWN_PRODUCER_ID:
                    sequences.bump_due = True  # not written: retried under the new epoch
                    retriable = True
            if retriable and not expired:
                self.retries += 1
                refresh |= code in REFRESH_ON
                self.accumulator.requeue(batch, trio.current_time() + self.retry_backoff_s)
            else:
                self._complete(batch, error)
        if refresh:
            await self._refresh_quietly()
        self._progress.set()
        self._progress = trio.Event()
        self._wake.set()

    def _drop_queued(self, error: KafkaError) -> None:
        for batch in self.accumulator.take_queued():
            self._complete(batch, error)

    def _complete(self, batch: ProducerBatch, error: KafkaError) -> None:
        if self.sequences is not None:
            self.sequences.failed(batch)
        if self.transactions is not None:
            self.transactions.batch_failed(error)
        batch.fail(error)
        self.accumulator.completed(batch)
        self._progress.set()
        self._progress = trio.Event()


def _error_text(tp: tuple[str, int], result: Any) -> str:
    """What a Produce answer says of one partition's failure (v8+: the records named)."""
    text = f"producing to {tp[0]}-{tp[1]}"
    if result.error_message:
        text += f": {result.error_message}"
    for record in result.record_errors[:3]:
        text += f"; record {record.batch_index}: {record.batch_index_error_message or '?'}"
    return text
