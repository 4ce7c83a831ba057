"""The trio driver of the group coordinator (issue 16): `broker.groups` wired to the
broker's `__consumer_offsets` partitions.

One `GroupCoordinator` per `__consumer_offsets` partition this broker leads, learnt
from the ReplicaManager's leadership hook. On becoming leader a partition's records
are replayed from its log (requests meanwhile get COORDINATOR_LOAD_IN_PROGRESS); on
losing leadership its coordinator is dropped and every held request is answered
NOT_COORDINATOR. Each call's `Effects` are applied in order: the records are appended
through the internal produce path with acks=all (so they are answered only once the
high-water mark passed them), then the replies are delivered, some of them to
requests held since an earlier call (JoinGroup, SyncGroup). A failed append drops the
coordinator's state (what it decided is not durable) and reloads it from the log.

The topic is created by the first FindCoordinator or group request, through the
controller like CreateTopics: `offsets_topic_num_partitions` partitions (50 by
default), RF min(3, live brokers), min.insync.replicas 2 where RF >= 3,
cleanup.policy=compact (Kafka's): the broker's log cleaner keeps the latest record of
each group and offset key, and drops tombstones after delete.retention.ms, so a replay
reads a log with gaps between offsets (it takes records by their own offsets).
Committed offsets expire (`GroupCoordinator.expire_offsets`, tombstones written) every
`offsets_retention_check_interval_ms`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from broker.data_apis import DataApis
from broker.groups import Effects, GroupConfig, GroupCoordinator, GroupRecord, partition_for
from broker.groups.messages import OffsetFetchResponse, Response
from broker.groups.txn_offsets import PendingTxnOffsets, TxnReplay, complete
from broker.internal_topics import InternalTopic, append_as_coordinator
from broker.partition import Partition
from broker.replica_manager import ReplicaManager
from client.protocol.errors import ErrorCode, KafkaError
from storage.records import iter_batches, iter_records

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_TOPIC_NUM_PARTITIONS = 50  # offsets.topic.num.partitions
OFFSETS_TOPIC_SEGMENT_BYTES = 100 * 1024 * 1024  # offsets.topic.segment.bytes
COMMIT_TIMEOUT_MS = 5_000  # offsets.commit.timeout.ms
OFFSETS_RETENTION_CHECK_INTERVAL_MS = 600_000  # offsets.retention.check.interval.ms
TICK_MAX_S = 0.5
READ_BYTES = 1 << 20

T = TypeVar("T")


class NotStarted(KafkaError):
    """`carried_out`: the work was never started (its nursery is gone or closing)."""


async def carried_out(nursery: trio.Nursery | None, work: Callable[[], Awaitable[T]]) -> T:
    """`work()`'s result, the work run as a task of `nursery` (a coordinator driver's).

    A caller cancelled meanwhile (its connection closed: `broker.kafka_connection`
    cancels the answers of a connection whose peer went away) stops waiting, but the
    work goes on to its end, as Kafka finishes a request whose connection closed: a
    coordinator's decision is never left half carried out (appended but not waited
    for, its markers or held replies never sent). The nursery cancelled (the node
    stopping) ends the work too; its caller, if still there, gets NOT_COORDINATOR.
    An AssertionError stays in the nursery (a broken invariant stops the node).
    """
    if nursery is None:
        raise NotStarted(ErrorCode.NOT_COORDINATOR, "the coordinator is not running")
    done = trio.Event()
    results: list[T] = []
    errors: list[Exception] = []

    async def run() -> None:
        try:
            results.append(await work())
        except AssertionError:
            raise
        except Exception as error:
            errors.append(error)
        finally:
            done.set()

    try:
        nursery.start_soon(run)
    except RuntimeError:  # closed to new tasks: the node is stopping
        raise NotStarted(ErrorCode.NOT_COORDINATOR, "the coordinator stopped") from None
    await done.wait()
    if errors:
        raise errors[0]
    if not results:
        raise KafkaError(ErrorCode.NOT_COORDINATOR, "the coordinator stopped")
    return results[0]


@attrs.define(eq=False)
class _Held:
    """One request waiting for its reply."""

    done: trio.Event = attrs.field(factory=trio.Event)
    response: Response | None = None
    error: KafkaError | None = None


@attrs.define(eq=False)
class _Slot:
    """One led partition: loading (coordinator None) or loaded."""

    partition: Partition
    leader_epoch: int
    coordinator: GroupCoordinator | None = None
    held: dict[object, _Held] = attrs.field(factory=dict)
    dropped: bool = False
    # Offsets of open transactions (TxnOffsetCommit), and markers met while loading.
    txn_offsets: PendingTxnOffsets = attrs.field(factory=PendingTxnOffsets)
    txn_completions: list[tuple[int, bool]] = attrs.field(factory=list)


class GroupDriver:
    def __init__(
        self,
        replicas: ReplicaManager,
        data: DataApis,
        *,
        forward: Callable[[int, Any], Any],
        num_partitions: int = OFFSETS_TOPIC_NUM_PARTITIONS,
        config: GroupConfig | None = None,
        rng: random.Random | None = None,
        offsets_retention_check_interval_ms: int = OFFSETS_RETENTION_CHECK_INTERVAL_MS,
        offsets_topic_segment_bytes: int = OFFSETS_TOPIC_SEGMENT_BYTES,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.offsets_retention_check_interval_ms = offsets_retention_check_interval_ms
        self.offsets_topic_segment_bytes = offsets_topic_segment_bytes
        # Commit timestamps and retention are wall clock; tests may pass their own.
        self._wall_ms = wall_ms if wall_ms is not None else lambda: int(time.time() * 1000)
        self.replicas = replicas
        self.data = data
        self._forward = forward  # (api key, body) -> awaitable answer, via the controller
        self.num_partitions = num_partitions
        self.config = config if config is not None else GroupConfig()
        self.rng = rng if rng is not None else random.Random()
        self.slots: dict[int, _Slot] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._topic = InternalTopic(
            OFFSETS_TOPIC,
            partitions=self.num_partitions,
            segment_bytes=self.offsets_topic_segment_bytes,
            image=lambda: self.replicas.image,
            forward=self._forward,
        )

    def now_ms(self) -> int:
        return self._wall_ms()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.replicas.leadership_listeners.append(self.on_leadership)
            for partition in list(self.replicas.partitions.values()):
                self.on_leadership(partition)
            nursery.start_soon(self._timer)
            nursery.start_soon(self._expire)
            task_status.started()
            await trio.sleep_forever()

    # ------------------------------------------------------------------ leadership

    def on_leadership(self, partition: Partition) -> None:
        """ReplicaManager hook: a partition's role changed (or it was removed)."""
        if partition.topic != OFFSETS_TOPIC:
            return
        slot = self.slots.get(partition.index)
        current = self.replicas.partitions.get((partition.topic, partition.index))
        leads = partition.is_leader and current is partition
        if slot is not None and (
            not leads
            or slot.leader_epoch != partition.leader_epoch
            or slot.partition is not partition
        ):
            self._drop(slot, "leadership moved")
            slot = None
        if leads and slot is None and self._nursery is not None:
            slot = _Slot(partition=partition, leader_epoch=partition.leader_epoch)
            self.slots[partition.index] = slot
            self._nursery.start_soon(self._load, slot)

    def _drop(self, slot: _Slot, why: str) -> None:
        log.info("%s: group coordinator unloaded (%s)", slot.partition, why)
        slot.dropped = True
        if self.slots.get(slot.partition.index) is slot:
            del self.slots[slot.partition.index]
        for held in slot.held.values():
            if not held.done.is_set():
                held.error = KafkaError(ErrorCode.NOT_COORDINATOR, why)
                held.done.set()
        slot.held.clear()

    async def _load(self, slot: _Slot) -> None:
        await trio.lowlevel.checkpoint()
        partition = slot.partition
        records: list[GroupRecord] = []
        # Transactional offsets wait for their marker (broker.group_txn_offsets).
        transactions = TxnReplay()
        offset = partition.log.log_start_offset
        end = partition.log.log_end_offset
        while offset < end and not slot.dropped:
            data = partition.log.read(offset, READ_BYTES, end)
            if not data:
                break
            for position, header in iter_batches(data):
                if header.is_control:
                    if header.next_offset > offset:
                        transactions.marker(header, data, position, records)
                    offset = header.next_offset
                    continue
                for record in iter_records(data, position):
                    if record.offset >= offset:
                        try:
                            read = GroupRecord.from_wire(record.key, record.value)
                        except ValueError as error:
                            log.warning("%s@%d: unreadable: %s", partition, record.offset, error)
                            continue
                        if header.is_transactional:
                            transactions.hold(header.producer_id, read)
                        else:
                            records.append(read)
                offset = header.next_offset
            await trio.lowlevel.checkpoint()
        if slot.dropped:
            return
        slot.coordinator = GroupCoordinator.replay(
            records, self.now_ms(), self.config, rng=random.Random(self.rng.random())
        )
        slot.txn_offsets = transactions.pending()
        for producer_id, committed in slot.txn_completions:  # markers written meanwhile
            complete(slot.coordinator, slot.txn_offsets, producer_id, committed, self.now_ms())
        slot.txn_completions.clear()
        log.info(
            "%s: group coordinator loaded (%d records, %d groups)",
            partition,
            len(records),
            len(slot.coordinator.groups),
        )
        self._wake.set()

    # ------------------------------------------------------------------ calls

    async def ensure_topic(self) -> None:
        """Create `__consumer_offsets` through the controller if the image lacks it."""
        await self._topic.ensure()

    def partition_of(self, group_id: str) -> int:
        return partition_for(group_id, self.num_partitions)

    def _slot(self, group_id: str) -> _Slot:
        slot = self.slots.get(self.partition_of(group_id))
        if slot is None:
            raise KafkaError(ErrorCode.NOT_COORDINATOR, f"not the coordinator of {group_id!r}")
        if slot.coordinator is None:
            raise KafkaError(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, f"{slot.partition} loading")
        return slot

    def coordinator(self, group_id: str) -> GroupCoordinator:
        """For reads (OffsetFetch, DescribeGroups): the loaded coordinator or an error."""
        coordinator = self._slot(group_id).coordinator
        assert coordinator is not None
        return coordinator

    def stable_only(self, group_id: str, answer: OffsetFetchResponse) -> OffsetFetchResponse:
        """OffsetFetch with require_stable (KIP-447): UNSTABLE_OFFSET_COMMIT, no offset,
        where an open transaction holds an offset of the group's partition."""
        slot = self.slots.get(self.partition_of(group_id))
        if slot is None or not slot.txn_offsets.by_producer:
            return answer
        return attrs.evolve(
            answer,
            partitions=tuple(
                attrs.evolve(
                    item, offset=-1, error_code=ErrorCode.UNSTABLE_OFFSET_COMMIT, metadata=""
                )
                if slot.txn_offsets.has(group_id, item.topic, item.partition)
                else item
                for item in answer.partitions
            ),
        )

    def loaded(self) -> list[GroupCoordinator]:
        return [s.coordinator for s in self.slots.values() if s.coordinator is not None]

    def loading(self) -> bool:
        return any(s.coordinator is None for s in self.slots.values())

    async def call(self, group_id: str, method: str, *args: Any) -> Response:
        """`GroupCoordinator.<method>(*args, token, now_ms)` for the group's partition;
        the reply once it is due (maybe after later calls)."""
        if not group_id:
            raise KafkaError(ErrorCode.INVALID_GROUP_ID, "the group id is empty")
        slot = self._slot(group_id)
        assert slot.coordinator is not None
        token = object()
        held = slot.held[token] = _Held()
        try:
            effects = getattr(slot.coordinator, method)(*args, token, self.now_ms())
            # Waited for in the driver's task: a caller whose connection closes does
            # not take with it the replies this call owes others (a SyncGroup leader's
            # assignment to its followers) nor the reload if its records are lost.
            self._start_apply(slot, effects)
            await held.done.wait()
        finally:  # answered, or the connection went away
            slot.held.pop(token, None)
        if held.error is not None:
            raise held.error
        assert held.response is not None
        return held.response

    async def _complete(
        self, slot: _Slot, last: int | None, replies: list[tuple[object, Response]]
    ) -> None:
        """Once the records up to `last` are committed, deliver `replies`; if they are
        not, the slot is dropped (its held requests answered NOT_COORDINATOR)."""
        if last is not None and not await self.committed(slot, last):
            return
        self._deliver(slot, replies)

    def _deliver(self, slot: _Slot, replies: list[tuple[object, Response]]) -> None:
        for token, response in replies:
            held = slot.held.get(token)
            if held is not None and not held.done.is_set():
                held.response = response
                held.done.set()

    async def committed(self, slot: _Slot, last: int) -> bool:
        """Wait until `last` (appended by this coordinator) is committed; False, the
        slot dropped and reloading, if it is not within the commit timeout."""
        try:
            with trio.fail_after(COMMIT_TIMEOUT_MS / 1000):
                await slot.partition.wait_committed(last, slot.leader_epoch)
            needed = self.replicas.min_insync_replicas(OFFSETS_TOPIC)
            if len(slot.partition.isr) < needed:
                raise KafkaError(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, "ISR shrank")
        except (KafkaError, trio.TooSlowError) as error:
            log.warning("%s: group records not committed: %r", slot.partition, error)
            self._failed(slot)
            return False
        return True

    def _failed(self, slot: _Slot) -> None:
        if slot.dropped:
            return
        self._drop(slot, "group records not committed")
        if slot.partition.is_leader and self._nursery is not None:
            self.on_leadership(slot.partition)  # reload what is durable

    def _append(self, slot: _Slot, records: list[GroupRecord]) -> int:
        """The last offset appended; -1 if the append was refused."""
        return append_as_coordinator(
            slot.partition,
            slot.leader_epoch,
            [record.to_wire() for record in records],
            now_ms=self.now_ms(),
            min_insync_replicas=self.replicas.min_insync_replicas(OFFSETS_TOPIC),
            what="group records",
        )

    # ------------------------------------------------------------------ timers

    async def _timer(self) -> None:
        while True:
            now = self.now_ms()
            deadlines = []
            for slot in list(self.slots.values()):
                coordinator = slot.coordinator
                if coordinator is None or slot.dropped:
                    continue
                deadline = coordinator.next_deadline_ms()
                if deadline is not None and deadline <= now:
                    self._start_apply(slot, coordinator.tick(now))
                    deadline = coordinator.next_deadline_ms()
                if deadline is not None:
                    deadlines.append(deadline)
            wait_s = TICK_MAX_S
            if deadlines:
                wait_s = min(wait_s, max(0.0, (min(deadlines) - now) / 1000))
            self._wake = trio.Event()
            with trio.move_on_after(max(wait_s, 0.005)):
                await self._wake.wait()

    async def _expire(self) -> None:
        while True:
            await trio.sleep(self.offsets_retention_check_interval_ms / 1000)
            self.expire_offsets_now()

    def expire_offsets_now(self) -> None:
        """Kafka's offsets cleanup on every loaded coordinator (tombstones appended)."""
        for slot in list(self.slots.values()):
            if slot.coordinator is not None and not slot.dropped:
                self._start_apply(slot, slot.coordinator.expire_offsets(self.now_ms()))

    def _start_apply(self, slot: _Slot, effects: Effects) -> None:
        """A call's or a timer's effects: the records appended now (so records keep
        the order of the calls that made them), waited for in a task of the driver's
        nursery, then the replies delivered (at once if there is nothing to wait for)."""
        self._wake.set()
        if not effects.records and not effects.replies:
            return
        last = self._append(slot, effects.records) if effects.records and not slot.dropped else None
        if last == -1:
            self._failed(slot)
            return
        if last is None:
            self._deliver(slot, effects.replies)
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._complete, slot, last, effects.replies)
