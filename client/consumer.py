"""The trio consumer: assign partitions and seek, or subscribe in a group; poll; commit.

    consumer = Consumer("127.0.0.1:9092", auto_offset_reset="earliest")
    consumer.assign([("orders", 0), ("orders", 1)])
    records = await consumer.poll(timeout_s=1.0)

In a group (Kafka's classic protocol: `client/consumer_coordinator.py`,
`client/group_member.py`), the group's members share the partitions of the topics they
subscribe to, and a rebalance completes inside `poll`:

    consumer = Consumer(bootstrap, group_id="billing", auto_offset_reset="earliest")
    consumer.subscribe(["orders"], listener=MyListener())  # on_assigned / on_revoked / on_lost
    while True:
        for record in await consumer.poll(1.0):
            handle(record)

Delivery recipes:

- at-least-once (the default, `enable_auto_commit=True`): each poll first commits what
  the previous poll returned (once `auto_commit_interval_ms` has passed), and revoke
  and close commit what was consumed; a crash after handling records and before the
  next commit hands them to the partition's next owner again. Explicitly: handle the
  records, then `await consumer.commit()` (or `commit_async()`).
- at-most-once (`enable_auto_commit=False`): commit right after poll, before handling
  (`records = await consumer.poll(); await consumer.commit(); handle(records)`); a crash
  while handling loses the rest of that poll's records, never repeats one.

Each `poll` fetches from every assigned partition's leader at once (one Fetch per
leader, long-polling up to `fetch_max_wait_ms`) and returns the records after each
partition's position, advancing it. A leader change (NOT_LEADER_OR_FOLLOWER,
FENCED_LEADER_EPOCH, a broker that does not answer) refreshes metadata and the next
poll goes to the new leader. A position outside the log is reset by
`auto_offset_reset` ("earliest", "latest") or raised ("none").
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import trio

from client.cluster import DEFAULT_BOOTSTRAP, RETRY_BACKOFF_MS, ClusterClient
from client.consumer_coordinator import CommitCallback, ConsumerCoordinator
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from client.read_committed import ReadCommittedFilter, is_abort_marker
from storage.records import RecordBatchError, iter_batches, iter_records

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
CONSUMER_REPLICA_ID = -1
READ_UNCOMMITTED, READ_COMMITTED = 0, 1
ISOLATION_LEVELS = {"read_uncommitted": READ_UNCOMMITTED, "read_committed": READ_COMMITTED}
# Fetch sessions (KIP-227) are not used: every fetch is a full one.
SESSIONLESS_ID, SESSIONLESS_EPOCH = 0, -1
FetchTopic = kafka.FetchRequest.FetchTopic
FetchPartition = kafka.FetchRequest.FetchPartition
ListOffsetsTopic = kafka.ListOffsetsRequest.ListOffsetsTopic
ListOffsetsPartition = kafka.ListOffsetsRequest.ListOffsetsPartition


@attrs.frozen(slots=True)
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class OffsetOutOfRange(KafkaError):
    def __init__(self, tp: TopicPartition, offset: int) -> None:
        super().__init__(
            ErrorCode.OFFSET_OUT_OF_RANGE, f"{tp[0]}-{tp[1]}: offset {offset} is out of range"
        )
        self.tp = tp


class CorruptRecord(KafkaError):
    """Kafka's CorruptRecordException: the record at `offset` of `tp` cannot be read.

    Raised by `poll` once the records before it have been returned; fetching again
    would bring the same bytes, so it is not retried. `seek(tp, offset + 1)` skips it.
    """

    def __init__(self, tp: TopicPartition, offset: int, reason: str) -> None:
        super().__init__(
            ErrorCode.CORRUPT_MESSAGE, f"{tp[0]}-{tp[1]}: the record at offset {offset}: {reason}"
        )
        self.tp = tp
        self.offset = offset

    @property
    def retriable(self) -> bool:
        return False


class Consumer:
    def __init__(
        self,
        bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP,
        *,
        auto_offset_reset: str = "latest",
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 50 * 1024 * 1024,
        max_partition_fetch_bytes: int = 1024 * 1024,
        request_timeout_ms: int = 30_000,
        client_id: str = "pykraft-consumer",
        metadata_max_age_ms: int = 300_000,
        group_id: str | None = None,
        group_instance_id: str | None = None,
        session_timeout_ms: int = 45_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        partition_assignment_strategy: Sequence[str] = ("range", "cooperative-sticky"),
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5_000,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ValueError("auto_offset_reset must be earliest, latest or none")
        if isolation_level not in ISOLATION_LEVELS:
            raise ValueError("isolation_level must be read_uncommitted or read_committed")
        # read_committed (KIP-98): fetches stop at the last stable offset, "latest" is
        # the last stable offset, and aborted transactions' records are dropped.
        self.isolation_level = isolation_level
        self._isolation = ISOLATION_LEVELS[isolation_level]
        self.auto_offset_reset = auto_offset_reset
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.cluster = ClusterClient(
            bootstrap,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            metadata_max_age_ms=metadata_max_age_ms,
        )
        self._positions: dict[TopicPartition, int | None] = {}  # None: to be reset
        self._reset_to: dict[TopicPartition, int] = {}  # a pending seek to a timestamp
        self._corrupt: CorruptRecord | None = None  # raised by the next poll
        self._group: ConsumerCoordinator | None = None
        if group_id is not None:
            self._group = ConsumerCoordinator(
                self,
                group_id=group_id,
                group_instance_id=group_instance_id,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms,
                partition_assignment_strategy=partition_assignment_strategy,
                enable_auto_commit=enable_auto_commit,
                auto_commit_interval_ms=auto_commit_interval_ms,
            )

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """With a group: a last auto-commit, `on_revoked`, LeaveGroup; then disconnect."""
        try:
            if self._group is not None:
                await self._group.close()
        finally:
            await self.cluster.aclose()

    # ------------------------------------------------------------------ groups

    def _require_group(self) -> ConsumerCoordinator:
        if self._group is None:
            raise ValueError("this consumer has no group_id")
        return self._group

    def subscribe(self, topics: Iterable[str] | re.Pattern[str], listener: Any = None) -> None:
        """Join the group for these topics (or every topic matching the pattern, checked
        again every `metadata_max_age_ms`); the next poll joins."""
        self._require_group().subscribe(topics, listener)
        self._positions = {}

    async def unsubscribe(self) -> None:
        await self._require_group().unsubscribe()
        self._positions = {}

    def subscription(self) -> list[str]:
        group = self._group
        return list(group.topics or group._joined_topics) if group and group.subscribed else []

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit now (each the next offset to read); the positions if none are given."""
        await self._require_group().commit(offsets)

    def commit_async(
        self,
        offsets: dict[TopicPartition, int] | None = None,
        callback: CommitCallback | None = None,
    ) -> None:
        """Commit in the background, in order; `callback(offsets, error_or_None)` after."""
        self._require_group().commit_async(offsets, callback)

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        return await self._require_group().committed(partitions)

    def consumed_positions(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """The known position of each (assigned) partition: what a commit would say."""
        wanted = self._positions if partitions is None else partitions
        return {tp: position for tp in wanted if (position := self._positions.get(tp)) is not None}

    def assign_owned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group's assignment (kept positions stay, new partitions are to be set)."""
        wanted = list(partitions)
        self._positions = {tp: self._positions.get(tp) for tp in wanted}

    # ------------------------------------------------------------------ positions

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        if self._group is not None and self._group.subscribed:
            raise ValueError("subscribed: the group assigns the partitions")
        wanted = [(str(t), int(p)) for t, p in partitions]
        self._positions = {tp: self._positions.get(tp) for tp in wanted}

    def assignment(self) -> list[TopicPartition]:
        return list(self._positions)

    def _require_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._positions:
            raise ValueError(f"{tp} is not assigned to this consumer")

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._require_assigned(tp)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._positions[tp] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._positions):
            self._require_assigned(tp)
            self._positions[tp] = None
            self._reset_to[tp] = EARLIEST_TIMESTAMP

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._positions):
            self._require_assigned(tp)
            self._positions[tp] = None
            self._reset_to[tp] = LATEST_TIMESTAMP

    async def position(self, tp: TopicPartition) -> int:
        self._require_assigned(tp)
        if self._positions[tp] is None:
            await self._reset_positions()
        position = self._positions[tp]
        assert position is not None
        return position

    async def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """The first offset at or after each timestamp (None if there is none yet)."""
        found = await self.list_offsets(timestamps)
        return {tp: (offset if offset >= 0 else None) for tp, offset in found.items()}

    async def list_offsets(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The offset for each (-2 earliest, -1 latest, else by timestamp), from each
        partition's leader; retriable errors (a leader or its epoch changed) are retried
        after a metadata refresh for up to a request timeout, as Kafka's consumer does."""
        deadline = trio.current_time() + self.cluster.request_timeout_s
        while True:
            try:
                return await self._list_offsets_once(timestamps)
            except KafkaError as error:
                if not error.retriable or trio.current_time() >= deadline:
                    raise
            await trio.sleep(RETRY_BACKOFF_MS / 1000)

    async def _list_offsets_once(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        by_leader = await self._group_by_leader(timestamps)
        answers: dict[TopicPartition, int] = {}
        for leader, tps in by_leader.items():
            version = await self.cluster.version_for(leader, ApiKey.LIST_OFFSETS)
            topics: dict[str, list[Any]] = {}
            for tp in tps:
                topics.setdefault(tp[0], []).append(
                    ListOffsetsPartition(
                        partition_index=tp[1],
                        # KIP-320 (v4+): a leader of another epoch says so.
                        current_leader_epoch=self._leader_epoch(tp) if version >= 4 else -1,
                        timestamp=timestamps[tp],
                    )
                )
            request = kafka.ListOffsetsRequest(
                replica_id=CONSUMER_REPLICA_ID,
                isolation_level=self._isolation,
                topics=tuple(
                    ListOffsetsTopic(name=t, partitions=tuple(p)) for t, p in topics.items()
                ),
            )
            response = await self.cluster.request_broker(leader, request, version=version)
            for topic in response.topics:
                for result in topic.partitions:
                    if result.error_code != ErrorCode.NONE:
                        await self.cluster.refresh([topic.name])
                        raise KafkaError(
                            result.error_code, f"{topic.name}-{result.partition_index}"
                        )
                    answers[(topic.name, result.partition_index)] = result.offset
        return answers

    def _leader_epoch(self, tp: TopicPartition) -> int:
        leader = self.cluster.leader(*tp)
        return -1 if leader is None else leader.leader_epoch

    async def _group_by_leader(
        self, tps: Iterable[TopicPartition]
    ) -> dict[int, list[TopicPartition]]:
        grouped: dict[int, list[TopicPartition]] = {}
        missing = []
        for tp in tps:
            leader = self.cluster.leader(*tp)
            if leader is None:
                missing.append(tp)
            else:
                grouped.setdefault(leader.leader, []).append(tp)
        if missing:
            await self.cluster.refresh(sorted({t for t, _ in missing}))
            for tp in missing:
                leader = self.cluster.leader(*tp)
                if leader is not None:
                    grouped.setdefault(leader.leader, []).append(tp)
        return grouped

    async def _reset_positions(self) -> None:
        pending = [tp for tp, position in self._positions.items() if position is None]
        if not pending:
            return
        default = EARLIEST_TIMESTAMP if self.auto_offset_reset == "earliest" else LATEST_TIMESTAMP
        wanted = {tp: self._reset_to.get(tp, default) for tp in pending}
        for tp, offset in (await self.list_offsets(wanted)).items():
            self._positions[tp] = offset
            self._reset_to.pop(tp, None)

    # ------------------------------------------------------------------ polling

    async def poll(self, timeout_s: float = 1.0) -> list[ConsumerRecord]:
        """Records after each assigned partition's position (possibly none by the timeout)."""
        records: list[ConsumerRecord] = []
        group = self._group
        if group is not None:
            # Not bounded by the timeout: a join waits for the group (its rebalance timeout).
            await group.maintain()
        with trio.move_on_after(timeout_s):
            while not records:
                if group is not None and group.needs_rejoin:
                    break  # the next poll rejoins; these partitions may be another's
                try:
                    await self._reset_positions()
                    by_leader = await self._group_by_leader(self._positions)
                except KafkaError as error:
                    if not error.retriable:
                        raise
                    await trio.sleep(0.1)
                    continue
                if not by_leader:
                    await trio.sleep(0.1)
                    continue
                wait_ms = max(0, min(self.fetch_max_wait_ms, int(timeout_s * 1000)))
                async with trio.open_nursery() as nursery:
                    for leader, tps in by_leader.items():
                        nursery.start_soon(self._fetch_from, leader, tps, wait_ms, records)
                if self._corrupt is not None and not records:
                    error, self._corrupt = self._corrupt, None
                    raise error
        return records

    async def _fetch_from(
        self, leader: int, tps: list[TopicPartition], wait_ms: int, out: list[ConsumerRecord]
    ) -> None:
        try:
            version = await self.cluster.version_for(leader, ApiKey.FETCH)
            topics: dict[str, list[Any]] = {}
            for tp in tps:
                position = self._positions.get(tp)
                if position is None:
                    continue
                topics.setdefault(tp[0], []).append(
                    FetchPartition(
                        partition=tp[1],
                        # KIP-320 (v9+): a leader of another epoch refuses, and we look again.
                        current_leader_epoch=self._leader_epoch(tp) if version >= 9 else -1,
                        fetch_offset=position,
                        partition_max_bytes=self.max_partition_fetch_bytes,
                    )
                )
            request = kafka.FetchRequest(
                replica_id=CONSUMER_REPLICA_ID,
                max_wait_ms=wait_ms,
                min_bytes=self.fetch_min_bytes,
                max_bytes=self.fetch_max_bytes,
                isolation_level=self._isolation,
                session_id=SESSIONLESS_ID,
                session_epoch=SESSIONLESS_EPOCH,
                topics=tuple(FetchTopic(topic=t, partitions=tuple(p)) for t, p in topics.items()),
            )
            response = await self.cluster.request_broker(leader, request, version=version)
        except KafkaError as error:
            log.debug("fetch from broker %d failed: %s", leader, error)
            # The refresh may fail too (every broker down); the next poll tries again.
            # Raised here, it would leave poll() wrapped in the nursery's group.
            with contextlib.suppress(KafkaError):
                await self.cluster.refresh([])
            return
        for topic in response.responses:
            for result in topic.partitions:
                tp = (topic.topic, result.partition_index)
                if result.error_code == ErrorCode.OFFSET_OUT_OF_RANGE:
                    if self.auto_offset_reset == "none":
                        raise OffsetOutOfRange(tp, self._positions.get(tp) or -1)
                    self._positions[tp] = None
                    continue
                if result.error_code != ErrorCode.NONE:
                    await self.cluster.refresh([topic.topic])
                    continue
                # diverging_epoch is only sent to a fetcher that names its last fetched
                # epoch (followers); preferred_read_replica only to one that names its
                # rack (KIP-392). This consumer names neither, so both stay unset.
                if result.records and tp in self._positions:
                    self._take(tp, result.records, out, result.aborted_transactions)

    def _take(
        self,
        tp: TopicPartition,
        data: bytes,
        out: list[ConsumerRecord],
        aborted: Iterable[Any] | None = None,
    ) -> None:
        position = self._positions[tp]
        assert position is not None
        walk = (
            ReadCommittedFilter((a.producer_id, a.first_offset) for a in aborted or ())
            if self._isolation == READ_COMMITTED
            else None
        )
        try:
            for offset_in_data, header in iter_batches(data):
                # The walk sees every batch in order, those below the position too.
                if walk is not None and walk.skips(
                    header, is_abort_marker(data, offset_in_data, header)
                ):
                    position = max(position, header.next_offset)
                    continue
                if header.next_offset <= position or header.is_control:
                    position = max(position, header.next_offset)
                    continue
                for record in iter_records(data, offset_in_data):
                    if record.offset >= position:
                        out.append(
                            ConsumerRecord(
                                topic=tp[0],
                                partition=tp[1],
                                offset=record.offset,
                                timestamp=record.timestamp,
                                key=record.key,
                                value=record.value,
                                headers=record.headers,
                            )
                        )
                        position = record.offset + 1
                position = header.next_offset
        except RecordBatchError as error:
            # Keep what came before it; the next poll (or this one, if nothing came
            # before) raises, naming where. Fetching again would only loop on it.
            self._corrupt = CorruptRecord(tp, position, str(error))
        self._positions[tp] = position
