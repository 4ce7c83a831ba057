"""The trio driver of the transaction coordinator (issue 17): `broker.transactions`
wired to the broker's `__transaction_state` partitions, as `group_driver` wires the
group coordinator to `__consumer_offsets`.

One `TransactionCoordinator` per `__transaction_state` partition this broker leads,
learnt from the ReplicaManager's leadership hook; its coordinator epoch is the
partition's leader epoch. On becoming leader a partition's records are replayed
(requests meanwhile get COORDINATOR_LOAD_IN_PROGRESS), then `resume` resends the
markers of every transaction found prepared; on losing leadership the coordinator is
dropped and requests get NOT_COORDINATOR (the marker rounds it started stop: the new
coordinator resends them with its own epoch).

Calls on one coordinator run one at a time (a lock per partition, decision 0019): the
call decides, its records are appended with acks=all and waited for, then it is
answered, then its markers are sent in a task of their own. A call that needs a
producer id gets one from the `ProducerIdManager` (the controller's blocks) and is
made again with it. A failed append drops the coordinator (what it decided is not
durable) and reloads it from the log.

Markers (`TxnMarkers`) go to each partition's leader in this broker's image, one
native WriteTxnMarkers per leader on its REPLICATION listener (the one path, also for
partitions this broker leads). Partitions answered NONE, or UNKNOWN_TOPIC_OR_PARTITION
(deleted), or missing from the image count as written; the others are retried with a
growing backoff until all are written, then `markers_written` completes the
transaction. INVALID_PRODUCER_EPOCH or TRANSACTION_COORDINATOR_FENCED say this
coordinator is stale: its round stops, as Kafka's does.

The topic is created by the first FindCoordinator or InitProducerId of a
transactional id, through the controller: `transaction_state_log_num_partitions` (50),
RF min(3, live brokers), min.insync.replicas 2 where RF >= 3, cleanup.policy=compact
(each id's latest record is all a replay needs).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from broker.group_driver import NotStarted, carried_out
from broker.groups.hashing import partition_for
from broker.internal_topics import InternalTopic, append_as_coordinator
from broker.listeners import BROKER_LISTENER, REPLICATION_LISTENER
from broker.partition import Partition
from broker.producer_ids import ProducerIdManager
from broker.replica_manager import ReplicaManager
from broker.transactions import Effects, TransactionCoordinator, TxnConfig, TxnRecord
from broker.transactions.messages import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    Response,
    TopicPartition,
    TxnMarkers,
    markers_body,
)
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.rpc import RpcClient
from storage.records import iter_batches, iter_records

log = logging.getLogger(__name__)

TRANSACTION_STATE_TOPIC = "__transaction_state"
TRANSACTION_STATE_NUM_PARTITIONS = 50  # transaction.state.log.num.partitions
TRANSACTION_STATE_SEGMENT_BYTES = 100 * 1024 * 1024  # transaction.state.log.segment.bytes
COMMIT_TIMEOUT_MS = 5_000
# Past the leader's own wait for the marker's replication (broker.txn_markers, 30 s),
# so that a slow ISR is answered rather than retried into a second marker.
MARKER_REQUEST_TIMEOUT_S = 40.0
MARKER_BACKOFF_MIN_S = 0.02
MARKER_BACKOFF_MAX_S = 1.0
TICK_MAX_S = 0.5
READ_BYTES = 1 << 20
# Answers that end a marker round for a partition without a retry.
MARKER_WRITTEN = frozenset({ErrorCode.NONE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION})
MARKER_STALE = frozenset(
    {ErrorCode.INVALID_PRODUCER_EPOCH, ErrorCode.TRANSACTION_COORDINATOR_FENCED}
)

Address = tuple[int, str, int, int, str]  # node id, host, port, error code, message


@attrs.define(eq=False)
class _Slot:
    """One led `__transaction_state` partition: loading (coordinator None) or loaded."""

    partition: Partition
    leader_epoch: int
    coordinator: TransactionCoordinator | None = None
    # One call at a time. A semaphore, not a trio.Lock: a call takes it in its
    # caller's task (in arrival order) and frees it in the driver's (`TxnDriver.call`).
    lock: trio.Semaphore = attrs.field(factory=lambda: trio.Semaphore(1, max_value=1))
    dropped: bool = False
    ticking: bool = False


class TxnDriver:
    def __init__(
        self,
        replicas: ReplicaManager,
        producer_ids: ProducerIdManager,
        *,
        forward: Callable[[int, Any], Any],
        config: TxnConfig | None = None,
        rng: random.Random | None = None,
        segment_bytes: int = TRANSACTION_STATE_SEGMENT_BYTES,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.replicas = replicas
        self.producer_ids = producer_ids
        self._forward = forward  # (api key, body) -> awaitable answer, via the controller
        self.config = config if config is not None else TxnConfig()
        self.rng = rng if rng is not None else random.Random()
        self.segment_bytes = segment_bytes
        # Transaction timeouts and expiry are wall clock; tests may pass their own.
        self._wall_ms = wall_ms if wall_ms is not None else lambda: int(time.time() * 1000)
        self.slots: dict[int, _Slot] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._topic = InternalTopic(
            TRANSACTION_STATE_TOPIC,
            partitions=self.num_partitions,
            segment_bytes=self.segment_bytes,
            image=lambda: self.replicas.image,
            forward=self._forward,
        )
        self._marker_clients: dict[int, RpcClient] = {}
        self.marker_rounds = 0  # WriteTxnMarkers requests sent (tests read it)
        # Run when the driver stops (the verifier's connections to other coordinators).
        self.closers: list[Callable[[], Awaitable[None]]] = []

    def now_ms(self) -> int:
        return self._wall_ms()

    @property
    def num_partitions(self) -> int:
        return self.config.transaction_state_partitions

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.replicas.leadership_listeners.append(self.on_leadership)
                for partition in list(self.replicas.partitions.values()):
                    self.on_leadership(partition)
                nursery.start_soon(self._timer)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                for client in self._marker_clients.values():
                    await client.aclose()
                for close in self.closers:
                    await close()

    # ------------------------------------------------------------------ leadership

    def on_leadership(self, partition: Partition) -> None:
        """ReplicaManager hook: a partition's role changed (or it was removed)."""
        if partition.topic != TRANSACTION_STATE_TOPIC:
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
            if partition.index >= self.num_partitions:
                log.error("%s: beyond the %d partitions configured", partition, self.num_partitions)
                return
            slot = _Slot(partition=partition, leader_epoch=partition.leader_epoch)
            self.slots[partition.index] = slot
            self._nursery.start_soon(self._load, slot)

    def _drop(self, slot: _Slot, why: str) -> None:
        log.info("%s: transaction coordinator unloaded (%s)", slot.partition, why)
        slot.dropped = True
        if self.slots.get(slot.partition.index) is slot:
            del self.slots[slot.partition.index]

    async def _load(self, slot: _Slot) -> None:
        await trio.lowlevel.checkpoint()
        partition = slot.partition
        records: list[TxnRecord] = []
        offset = partition.log.log_start_offset
        end = partition.log.log_end_offset
        while offset < end and not slot.dropped:
            data = partition.log.read(offset, READ_BYTES, end)
            if not data:
                break
            for position, header in iter_batches(data):
                if not header.is_control:
                    for record in iter_records(data, position):
                        if record.offset >= offset:
                            try:
                                records.append(TxnRecord.from_wire(record.key, record.value))
                            except ValueError as error:
                                log.error("%s@%d: unreadable: %s", partition, record.offset, error)
                offset = header.next_offset
            await trio.lowlevel.checkpoint()
        if slot.dropped:
            return
        try:
            coordinator = TransactionCoordinator.replay(
                records, partition.index, slot.leader_epoch, self.config
            )
        except ValueError as error:  # a corrupt partition: stay loading, say why
            log.error("%s: transaction state cannot be loaded: %s", partition, error)
            return
        async with slot.lock:
            if slot.dropped:
                return
            slot.coordinator = coordinator
            log.info(
                "%s: transaction coordinator loaded at epoch %d (%d records, %d ids)",
                partition,
                slot.leader_epoch,
                len(records),
                len(coordinator.transactions),
            )
            try:
                await self._apply(slot, coordinator.resume(self.now_ms()))
            except KafkaError:
                return  # dropped and reloading
        self._wake.set()

    # ------------------------------------------------------------------ the topic

    async def ensure_topic(self) -> None:
        """Create `__transaction_state` through the controller if the image lacks it."""
        await self._topic.ensure()

    def partition_of(self, transactional_id: str) -> int:
        return partition_for(transactional_id, self.num_partitions)

    async def find_coordinator(self, transactional_id: str) -> Address:
        """FindCoordinator key_type 1: the leader of the id's partition, on the client
        listener (the topic is created if need be, answered COORDINATOR_NOT_AVAILABLE)."""
        none = (-1, "", -1)
        if not transactional_id:
            return (*none, ErrorCode.INVALID_REQUEST, "the transactional id is empty")
        image = self.replicas.image
        topic = image.topic(TRANSACTION_STATE_TOPIC)
        if topic is None:
            await self.ensure_topic()
            message = f"{TRANSACTION_STATE_TOPIC} is being created"
            return (*none, ErrorCode.COORDINATOR_NOT_AVAILABLE, message)
        registration = topic.partitions.get(self.partition_of(transactional_id))
        leader = registration.leader if registration is not None else -1
        broker = image.brokers.get(leader)
        listener = broker.listener(BROKER_LISTENER) if broker is not None else None
        if broker is None or broker.fenced or listener is None:
            return (*none, ErrorCode.COORDINATOR_NOT_AVAILABLE, "the coordinator has no leader")
        return leader, listener.host, listener.port, ErrorCode.NONE, ""

    # ------------------------------------------------------------------ calls

    def _slot(self, transactional_id: str) -> _Slot:
        slot = self.slots.get(self.partition_of(transactional_id))
        if slot is None:
            message = f"not the coordinator of {transactional_id!r}"
            raise KafkaError(ErrorCode.NOT_COORDINATOR, message)
        if slot.coordinator is None:
            raise KafkaError(ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, f"{slot.partition} loading")
        return slot

    def coordinator(self, transactional_id: str) -> TransactionCoordinator:
        """For reads (DescribeTransactions): the loaded coordinator or an error."""
        coordinator = self._slot(transactional_id).coordinator
        assert coordinator is not None
        return coordinator

    def loaded(self) -> list[TransactionCoordinator]:
        return [s.coordinator for s in self.slots.values() if s.coordinator is not None]

    def loading(self) -> bool:
        return any(s.coordinator is None for s in self.slots.values())

    async def call(self, transactional_id: str, method: str, request: Any) -> Response:
        """`TransactionCoordinator.<method>(request, token, now_ms)` on the id's
        coordinator, its effects carried out; its answer once its records are durable.

        The slot is taken here, in the order calls arrive (a connection's requests
        reach this in the order sent); the call is then decided and carried out in a
        task of the driver's nursery (`carried_out`), which frees the slot: a caller
        cancelled because its connection closed must not leave a decision half done
        (PrepareCommit durable, its markers never sent: the transaction stuck until a
        reload, every later call answered CONCURRENT_TRANSACTIONS)."""
        if self.replicas.image.topic(TRANSACTION_STATE_TOPIC) is None:
            await self.ensure_topic()
            raise KafkaError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "no transaction state yet")
        slot = self._slot(transactional_id)
        nursery = self._nursery
        token = object()
        await slot.lock.acquire()  # in arrival order (FIFO); _decide releases it
        try:
            effects = await carried_out(nursery, lambda: self._decide(slot, method, request, token))
        except NotStarted:
            slot.lock.release()
            raise
        response = effects.reply_to(token)
        assert response is not None, (method, effects)
        return response

    async def _decide(self, slot: _Slot, method: str, request: Any, token: object) -> Effects:
        """The call's decision, its effects carried out; frees the slot its caller
        took (the slot's lock has no owner: taken by the caller, freed here)."""
        try:
            coordinator = self._still_loaded(slot)
            handler = getattr(coordinator, method)
            effects = handler(request, token, self.now_ms())
            if effects.producer_id_needed:
                try:
                    fresh = await self.producer_ids.next_id()
                except KafkaError as error:
                    raise KafkaError(
                        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, error.message
                    ) from None
                if self._still_loaded(slot) is not coordinator:
                    raise KafkaError(ErrorCode.NOT_COORDINATOR, "the coordinator was reloaded")
                effects = handler(request, token, self.now_ms(), fresh_producer_id=fresh)
                assert not effects.producer_id_needed, (method, request)
            await self._apply(slot, effects)
            return effects
        finally:
            slot.lock.release()

    def _still_loaded(self, slot: _Slot) -> TransactionCoordinator:
        if slot.dropped:
            raise KafkaError(ErrorCode.NOT_COORDINATOR, f"{slot.partition}: coordinator moved")
        assert slot.coordinator is not None
        return slot.coordinator

    async def _apply(self, slot: _Slot, effects: Effects) -> None:
        """Append the records, wait until committed, then start the marker rounds;
        KafkaError(NOT_COORDINATOR) if they were not committed (the slot reloads)."""
        assert slot.lock.value == 0
        if effects.records:
            last = self._append(slot, effects.records)
            if last >= 0:
                try:
                    with trio.fail_after(COMMIT_TIMEOUT_MS / 1000):
                        await slot.partition.wait_committed(last, slot.leader_epoch)
                    needed = self.replicas.min_insync_replicas(TRANSACTION_STATE_TOPIC)
                    if len(slot.partition.isr) < needed:
                        raise KafkaError(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, "ISR shrank")
                except (KafkaError, trio.TooSlowError) as error:
                    log.warning("%s: transaction records not committed: %r", slot.partition, error)
                    last = -1
            if last < 0:
                self._failed(slot)
                raise KafkaError(ErrorCode.NOT_COORDINATOR, "transaction state not written")
        assert self._nursery is not None
        for markers in effects.markers:
            self._nursery.start_soon(self._send_markers, slot, markers)
        self._wake.set()

    def _failed(self, slot: _Slot) -> None:
        if slot.dropped:
            return
        self._drop(slot, "transaction records not committed")
        if slot.partition.is_leader and self._nursery is not None:
            self.on_leadership(slot.partition)  # reload what is durable

    def _append(self, slot: _Slot, records: list[TxnRecord]) -> int:
        """The last offset appended; -1 if the append was refused."""
        return append_as_coordinator(
            slot.partition,
            slot.leader_epoch,
            [record.to_wire() for record in records],
            now_ms=self.now_ms(),
            min_insync_replicas=self.replicas.min_insync_replicas(TRANSACTION_STATE_TOPIC),
            what="transaction records",
        )

    # ------------------------------------------------------------------ markers

    async def _send_markers(self, slot: _Slot, markers: TxnMarkers) -> None:
        """One marker round: every partition written (or gone), then completed."""
        coordinator = slot.coordinator
        pending = set(markers.partitions)
        backoff = MARKER_BACKOFF_MIN_S
        while pending and not slot.dropped:
            by_leader, gone = self._leaders(pending)
            pending -= gone
            answers: dict[TopicPartition, int] = {}
            async with trio.open_nursery() as nursery:
                for leader, partitions in by_leader.items():
                    nursery.start_soon(self._write_markers, leader, markers, partitions, answers)
            for partition, code in answers.items():
                if code in MARKER_WRITTEN:
                    pending.discard(partition)
                elif code in MARKER_STALE:
                    log.warning(
                        "%s: markers of %r at %s refused (%s): this coordinator is stale",
                        slot.partition,
                        markers.transactional_id,
                        partition,
                        ErrorCode(code).name,
                    )
                    return
            if pending:
                await trio.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, MARKER_BACKOFF_MAX_S)
        async with slot.lock:
            if slot.dropped or slot.coordinator is not coordinator or coordinator is None:
                return
            effects = coordinator.markers_written(
                markers.transactional_id, markers.producer_id, markers.producer_epoch, self.now_ms()
            )
            try:
                await self._apply(slot, effects)
            except KafkaError:
                return  # dropped and reloading: the new coordinator resends

    def _leaders(
        self, partitions: set[TopicPartition]
    ) -> tuple[dict[int, list[TopicPartition]], set[TopicPartition]]:
        """Partitions by their leader in this broker's image, and those gone from it."""
        image = self.replicas.image
        by_leader: dict[int, list[TopicPartition]] = {}
        gone: set[TopicPartition] = set()
        for topic_partition in sorted(partitions):
            name, index = topic_partition
            topic = image.topic(name)
            registration = topic.partitions.get(index) if topic is not None else None
            if registration is None:
                gone.add(topic_partition)  # deleted: nothing left to mark
            elif registration.leader >= 0:
                by_leader.setdefault(registration.leader, []).append(topic_partition)
        return by_leader, gone

    async def _write_markers(
        self,
        leader: int,
        markers: TxnMarkers,
        partitions: list[TopicPartition],
        answers: dict[TopicPartition, int],
    ) -> None:
        client = self._marker_client(leader)
        if client is None:
            return
        self.marker_rounds += 1
        try:
            answer = await client.request(
                ApiKey.WRITE_TXN_MARKERS,
                API_VERSION,
                markers_body(markers, partitions),
                timeout_s=MARKER_REQUEST_TIMEOUT_S,
            )
        except KafkaError as error:
            log.info("markers of %r to broker %d: %s", markers.transactional_id, leader, error)
            return
        wanted = set(partitions)
        for item in answer.get("partitions", ()) if isinstance(answer, dict) else ():
            try:
                key = (item["topic"], item["partition"])
                code = int(item["error_code"])
            except (KeyError, TypeError, ValueError):
                continue
            if key in wanted:
                answers[key] = code

    def _marker_client(self, broker_id: int) -> RpcClient | None:
        override = self.replicas.broker_address_overrides.get(broker_id)
        if override is not None:
            address: tuple[str, int] | None = override
        else:
            registration = self.replicas.image.brokers.get(broker_id)
            listener = registration.listener(REPLICATION_LISTENER) if registration else None
            address = None if listener is None else (listener.host, listener.port)
        if address is None:
            return None
        client = self._marker_clients.get(broker_id)
        if client is None or (client.host, client.port) != address:
            if client is not None and self._nursery is not None:
                self._nursery.start_soon(client.aclose)
            client = self._marker_clients[broker_id] = RpcClient(
                *address,
                client_id=f"txn-coordinator-{self.replicas.broker_id}",
                rng=random.Random(self.rng.random()),
            )
        return client

    # ------------------------------------------------------------------ verification

    async def verify_local(
        self, transactional_id: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> int:
        """KIP-890 part 1 at this coordinator: was the partition added to the producer's
        open transaction? The code as the coordinator answers AddPartitionsToTxn v4."""
        request = AddPartitionsToTxnRequest(
            transactional_id=transactional_id,
            producer_id=producer_id,
            producer_epoch=epoch,
            partitions=((topic, partition),),
            verify_only=True,
        )
        answer = await self.call(transactional_id, "add_partitions_to_txn", request)
        assert isinstance(answer, AddPartitionsToTxnResponse), answer
        if answer.error_code != ErrorCode.NONE:
            return answer.error_code
        return answer.results[0].error_code if answer.results else ErrorCode.INVALID_TXN_STATE

    def leads(self, transactional_id: str) -> bool:
        return self.partition_of(transactional_id) in self.slots

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
                if deadline is not None and deadline <= now and not slot.ticking:
                    slot.ticking = True
                    assert self._nursery is not None
                    self._nursery.start_soon(self._tick, slot)
                elif deadline is not None:
                    deadlines.append(deadline)
            wait_s = TICK_MAX_S
            if deadlines:
                wait_s = min(wait_s, max(0.0, (min(deadlines) - now) / 1000))
            self._wake = trio.Event()
            with trio.move_on_after(max(wait_s, 0.005)):
                await self._wake.wait()

    async def _tick(self, slot: _Slot) -> None:
        """Timeouts (abort with a fence) and expired ids, as one call."""
        try:
            async with slot.lock:
                if slot.dropped or slot.coordinator is None:
                    return
                try:
                    await self._apply(slot, slot.coordinator.tick(self.now_ms()))
                except KafkaError:
                    return
        finally:
            slot.ticking = False
            self._wake.set()


__all__ = [
    "TRANSACTION_STATE_NUM_PARTITIONS",
    "TRANSACTION_STATE_TOPIC",
    "TxnDriver",
]
