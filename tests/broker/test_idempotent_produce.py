"""The idempotent producer through the partition: producer state wired into the log.

A retried batch is answered with its first offsets and not written again; batches out
of sequence or of a fenced epoch are refused with Kafka's codes (per partition in the
Produce answer); the state follows truncation, log-start moves, restarts and expiry.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.data_apis import DataApis
from broker.partition import Partition
from broker.producer_ids import ProducerIdManager
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import PartitionProduce, ProduceRequest, TopicProduce
from kraft.metadata.image import PartitionRegistration
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.producer_state import (
    ProducerState,
    ProducerStateConfig,
    list_snapshot_offsets,
    log_reader,
)
from storage.records import RecordInput, build_batch, iter_batches

BROKER = 1
TIMESTAMP = 1_000


def producer_batch(
    pid: int, epoch: int, sequence: int, count: int = 1, *, transactional: bool = False
) -> bytes:
    return build_batch(
        [
            RecordInput(timestamp=TIMESTAMP, value=f"{pid}:{sequence + i}".encode())
            for i in range(count)
        ],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=sequence,
        is_transactional=transactional,
    )


def open_partition(
    fs: MemoryFileSystem,
    *,
    segment_bytes: int = 1 << 20,
    config: ProducerStateConfig | None = None,
    now_wall_ms: int | None = None,
) -> Partition:
    log = SegmentedLog.open("/t-0", LogConfig(segment_bytes=segment_bytes), fs=fs)
    partition = Partition(
        topic="t",
        topic_id="id",
        index=0,
        log=log,
        broker_id=BROKER,
        producer_state_config=config,
        now_wall_ms=now_wall_ms,
    )
    partition.apply(
        PartitionRegistration(
            replicas=(BROKER,), isr=(BROKER,), leader=BROKER, leader_epoch=0, partition_epoch=0
        ),
        now_ms=0,
    )
    return partition


def batch_count(partition: Partition) -> int:
    log = partition.log
    data = b"".join(
        log.read(segment.base_offset, 1 << 30) for segment in log.segments if not segment.is_empty
    )
    return sum(1 for _ in iter_batches(data, validate=False))


def rebuilt_from_log(partition: Partition) -> ProducerState:
    log = partition.log
    state = ProducerState(
        map_end_offset=log.log_start_offset, log_start_offset=log.log_start_offset
    )
    state.replay(log_reader(log)(log.log_start_offset, log.log_end_offset))
    state.map_end_offset = max(state.map_end_offset, log.log_end_offset)
    return state


def refused_with(partition: Partition, batch: bytes) -> int:
    with pytest.raises(KafkaError) as raised:
        partition.append_as_leader(batch)
    return raised.value.code


# --------------------------------------------------------------------------- examples


def test_a_retried_batch_gets_its_first_offsets_and_is_not_written_again() -> None:
    partition = open_partition(MemoryFileSystem())
    first = partition.append_as_leader(producer_batch(7, 0, 0, count=3))
    second = partition.append_as_leader(producer_batch(7, 0, 3, count=2))
    end = partition.log.log_end_offset
    retry = partition.append_as_leader(producer_batch(7, 0, 0, count=3))
    assert (retry.first_offset, retry.last_offset) == (first.first_offset, first.last_offset)
    assert retry.batch_count == 0
    retry = partition.append_as_leader(producer_batch(7, 0, 3, count=2))
    assert (retry.first_offset, retry.last_offset) == (second.first_offset, second.last_offset)
    assert partition.log.log_end_offset == end
    assert batch_count(partition) == 2


def test_out_of_order_and_stale_epoch_batches_are_refused_with_kafkas_codes() -> None:
    partition = open_partition(MemoryFileSystem())
    partition.append_as_leader(producer_batch(7, 1, 0, count=2))
    end = partition.log.log_end_offset
    assert (
        refused_with(partition, producer_batch(7, 1, 5)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    assert (
        refused_with(partition, producer_batch(7, 1, 1)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    assert refused_with(partition, producer_batch(7, 0, 2)) == ErrorCode.INVALID_PRODUCER_EPOCH
    # A new epoch starts at sequence 0 or is out of order.
    assert (
        refused_with(partition, producer_batch(7, 2, 2)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    # Transactional batches are served now (issue 17 item 3): sequences still rule.
    assert refused_with(partition, producer_batch(7, 1, 0, transactional=True)) == (
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    assert partition.log.log_end_offset == end
    partition.append_as_leader(producer_batch(7, 2, 0))  # the bumped epoch, from 0
    assert refused_with(partition, producer_batch(7, 1, 2)) == ErrorCode.INVALID_PRODUCER_EPOCH
    # Batches without a producer id are never checked.
    partition.append_as_leader(build_batch([RecordInput(timestamp=TIMESTAMP, value=b"x")]))


def test_produce_answers_a_duplicate_with_its_offset_and_refusals_per_partition() -> None:
    partition = open_partition(MemoryFileSystem())

    class Replicas:
        def partition(self, topic: str, index: int) -> Partition:
            if index != 0:
                raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index}")
            return partition

        def min_insync_replicas(self, topic: str) -> int:
            return 1

        def now_ms(self) -> int:
            return 0

        def topic_settings(self, topic: str) -> dict[str, str]:
            return {}

    data = DataApis(Replicas(), is_registered=lambda *_: True)  # type: ignore[arg-type]

    async def produce(batch: bytes) -> Any:
        request = ProduceRequest(
            acks=-1,
            timeout_ms=10_000,
            topics=(
                TopicProduce(name="t", partitions=(PartitionProduce(partition=0, records=batch),)),
            ),
        )
        response = await data.produce_request(request)
        assert response is not None
        return response.topics[0].partitions[0]

    async def main() -> None:
        partition.append_as_leader(build_batch([RecordInput(timestamp=TIMESTAMP, value=b"x")]))
        first = await produce(producer_batch(3, 0, 0, count=4))
        assert (first.error_code, first.base_offset) == (ErrorCode.NONE, 1)
        again = await produce(producer_batch(3, 0, 0, count=4))
        assert (again.error_code, again.base_offset) == (ErrorCode.NONE, 1)
        gap = await produce(producer_batch(3, 0, 9))
        assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert "does not follow" in gap.error_message
        assert partition.log.log_end_offset == 5

    trio.run(main)


def test_a_reopened_partition_still_detects_duplicates_from_its_snapshot_and_tail() -> None:
    fs = MemoryFileSystem()
    partition = open_partition(fs, segment_bytes=400)
    answers = [
        partition.append_as_leader(producer_batch(5, 0, seq, count=2)) for seq in range(0, 40, 2)
    ]
    assert len(partition.log.segments) > 2
    snapshots = list_snapshot_offsets(fs, "/t-0")
    # One snapshot per roll, at each new segment's base.
    assert snapshots == [s.base_offset for s in partition.log.segments[1:]]
    partition.log.flush()  # a crash after the flush: no close, no snapshot of the tail
    reopened = open_partition(fs, segment_bytes=400)
    assert reopened.producer_state.state.view() == partition.producer_state.state.view()
    for seq, answer in zip(range(30, 40, 2), answers[-5:], strict=True):
        retry = reopened.append_as_leader(producer_batch(5, 0, seq, count=2))
        assert (retry.first_offset, retry.batch_count) == (answer.first_offset, 0)
    assert refused_with(reopened, producer_batch(5, 0, 0, count=2)) == (
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    reopened.append_as_leader(producer_batch(5, 0, 40))
    # A clean close snapshots the end, so the next open replays nothing.
    reopened.close()
    assert list_snapshot_offsets(fs, "/t-0")[-1] == reopened.log.log_end_offset


def test_a_follower_records_what_its_leader_wrote() -> None:
    leader = open_partition(MemoryFileSystem())
    for seq in range(0, 10, 2):
        leader.append_as_leader(producer_batch(9, 0, seq, count=2))
    leader.append_as_leader(producer_batch(4, 3, 0))
    follower_log = SegmentedLog.open("/f-0", LogConfig(), fs=MemoryFileSystem())
    follower = Partition(topic="t", topic_id="id", index=0, log=follower_log, broker_id=2)
    follower.append_as_follower(leader.log.read(0, 1 << 20), leader.high_watermark)
    assert follower.producer_state.state.view() == leader.producer_state.state.view()


def test_a_follower_restarting_behind_the_leaders_log_start_forgets_every_producer() -> None:
    fs = MemoryFileSystem()
    partition = open_partition(fs, segment_bytes=400)
    for seq in range(0, 20, 2):
        partition.append_as_leader(producer_batch(5, 0, seq, count=2))
    assert list_snapshot_offsets(fs, "/t-0")
    partition.restart_at(1_000)
    assert partition.producer_state.state.view() == rebuilt_from_log(partition).view()
    assert partition.producer_state.state.producers == {}
    assert list_snapshot_offsets(fs, "/t-0") == []
    assert partition.log.log_end_offset == 1_000


def test_a_follower_that_becomes_leader_answers_retries_of_its_old_leaders_batches() -> None:
    old_leader = open_partition(MemoryFileSystem())
    answers = [old_leader.append_as_leader(producer_batch(9, 0, seq, 2)) for seq in range(0, 12, 2)]
    follower_log = SegmentedLog.open("/f-0", LogConfig(), fs=MemoryFileSystem())
    follower = Partition(topic="t", topic_id="id", index=0, log=follower_log, broker_id=2)
    follower.append_as_follower(old_leader.log.read(0, 1 << 20), old_leader.high_watermark)
    follower.apply(
        PartitionRegistration(replicas=(2,), isr=(2,), leader=2, leader_epoch=1, partition_epoch=1),
        now_ms=0,
    )
    for seq, answer in zip(range(2, 12, 2), answers[1:], strict=True):
        retry = follower.append_as_leader(producer_batch(9, 0, seq, 2))
        assert (retry.first_offset, retry.batch_count) == (answer.first_offset, 0)
    assert (
        refused_with(follower, producer_batch(9, 0, 0, 2)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    assert follower.append_as_leader(producer_batch(9, 0, 12, 2)).first_offset == 12


def test_snapshots_go_with_the_segments_retention_and_delete_records_remove() -> None:
    fs = MemoryFileSystem()
    partition = open_partition(fs, segment_bytes=400)
    for seq in range(0, 40, 2):
        partition.append_as_leader(producer_batch(5, 0, seq, count=2))
    bases = [s.base_offset for s in partition.log.segments]
    partition.delete_records_before(bases[3])
    snapshots = list_snapshot_offsets(fs, "/t-0")
    assert min(snapshots) >= bases[3]
    assert snapshots[-1] == partition.log.log_end_offset  # the state as the start moved
    # The producer survives the deletion of all but its last batches, also on reopen.
    end = partition.log.log_end_offset
    partition.log.flush()
    reopened = open_partition(fs, segment_bytes=400)
    assert reopened.producer_state.state.entry(5) == partition.producer_state.state.entry(5)
    assert refused_with(reopened, producer_batch(5, 0, 3)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert reopened.log.log_end_offset == end
    # DeleteRecords again and again inside the active segment: snapshots stay bounded.
    for seq in range(40, 80, 2):
        reopened.append_as_leader(producer_batch(5, 0, seq, count=2))
        reopened.delete_records_before(reopened.high_watermark)
    segments = len(reopened.log.segments)
    assert len(list_snapshot_offsets(fs, "/t-0")) <= 2 * segments + 1


def test_idle_producers_expire_and_are_then_taken_at_any_sequence() -> None:
    config = ProducerStateConfig(producer_id_expiration_ms=60_000)
    partition = open_partition(MemoryFileSystem(), config=config)
    partition.append_as_leader(producer_batch(8, 0, 0))
    assert partition.expire_producers(TIMESTAMP + 59_999) == []
    assert (
        refused_with(partition, producer_batch(8, 0, 7)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    assert partition.expire_producers(TIMESTAMP + 60_000) == [8]
    partition.append_as_leader(producer_batch(8, 0, 7))


def test_expiry_runs_at_load_with_the_wall_clock_given() -> None:
    fs = MemoryFileSystem()
    config = ProducerStateConfig(producer_id_expiration_ms=60_000)
    partition = open_partition(fs, config=config)
    partition.append_as_leader(producer_batch(8, 0, 0))
    partition.close()
    assert open_partition(fs, config=config, now_wall_ms=TIMESTAMP).producer_state.state.entry(8)
    later = open_partition(fs, config=config, now_wall_ms=TIMESTAMP + 60_000)
    assert later.producer_state.state.entry(8) is None


# --------------------------------------------------------------------------- model


PRODUCERS = (1, 2, 3)


class IdempotentPartition(RuleBasedStateMachine):
    """Producers append, retry, skip sequences and bump epochs; the log rolls, is cut
    back (an unclean truncation), and the broker restarts. The partition's producer
    state always equals the state rebuilt from its log, and every retry of a batch
    still in the log and among its producer's last five is answered as a duplicate."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = MemoryFileSystem()
        self.partition = open_partition(self.fs, segment_bytes=350)
        self.partition.unclean_election = True  # so the model may cut below the HWM
        self.epochs = dict.fromkeys(PRODUCERS, 0)
        self.next_sequence = dict.fromkeys(PRODUCERS, 0)
        # pid -> [(epoch, sequence, count, first offset)], as written
        self.written: dict[int, list[tuple[int, int, int, int]]] = {p: [] for p in PRODUCERS}

    @rule(pid=st.sampled_from(PRODUCERS), count=st.integers(1, 3))
    def send(self, pid: int, count: int) -> None:
        epoch, sequence = self.epochs[pid], self.next_sequence[pid]
        info = self.partition.append_as_leader(producer_batch(pid, epoch, sequence, count))
        assert info.batch_count == 1
        self.written[pid].append((epoch, sequence, count, info.first_offset))
        self.next_sequence[pid] = sequence + count

    @precondition(lambda self: any(self.written.values()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from([p for p in PRODUCERS if self.written[p]]))
        epoch, sequence, count, first = data.draw(st.sampled_from(self.written[pid][-5:]))
        end = self.partition.log.log_end_offset
        latest_written_epoch = self.written[pid][-1][0]
        try:
            info = self.partition.append_as_leader(producer_batch(pid, epoch, sequence, count))
        except KafkaError as error:
            # Only a batch of an epoch older than the log's latest one is refused.
            assert error.code == ErrorCode.INVALID_PRODUCER_EPOCH, error
            assert epoch < latest_written_epoch
            return
        assert epoch == latest_written_epoch
        assert (info.first_offset, info.batch_count) == (first, 0)
        assert self.partition.log.log_end_offset == end

    @rule(pid=st.sampled_from(PRODUCERS), skip=st.integers(1, 3))
    def send_out_of_order(self, pid: int, skip: int) -> None:
        if not self.written[pid] or self.written[pid][-1][0] != self.epochs[pid]:
            return  # a fresh producer or epoch takes any first sequence: not a gap
        batch = producer_batch(pid, self.epochs[pid], self.next_sequence[pid] + skip)
        assert refused_with(self.partition, batch) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER

    @rule(pid=st.sampled_from(PRODUCERS))
    def bump_epoch(self, pid: int) -> None:
        self.epochs[pid] += 1
        self.next_sequence[pid] = 0

    @precondition(lambda self: self.partition.log.log_end_offset > 0)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        log = self.partition.log
        target = data.draw(st.integers(log.log_start_offset, log.log_end_offset - 1))
        self.partition.truncate_as_follower(target)
        end = log.log_end_offset
        for pid in PRODUCERS:
            self.written[pid] = [w for w in self.written[pid] if w[3] < end]
            # What the producer sends next follows what the log still holds (the
            # client resets its sequence after an OUT_OF_ORDER, or bumps its epoch).
            if self.written[pid]:
                epoch = self.written[pid][-1][0]
                self.epochs[pid] = max(self.epochs[pid], epoch) + 1
            else:
                self.epochs[pid] += 1
            self.next_sequence[pid] = 0

    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        if crash:
            self.partition.log.flush()
        else:
            self.partition.close()
        self.partition = open_partition(self.fs, segment_bytes=350)
        self.partition.unclean_election = True

    @invariant()
    def state_is_the_log_replayed(self) -> None:
        assert self.partition.producer_state.state.view() == rebuilt_from_log(self.partition).view()


IdempotentPartition.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_idempotent_partition = IdempotentPartition.TestCase


# --------------------------------------------------------------------------- producer ids


class FakeController:
    """Grants consecutive blocks as the controller does; can be told to fail."""

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self.next_first = 0
        self.asked = 0
        self.failing = False
        self.gate: trio.Event | None = None

    async def forward(self, api_key: int, body: Any) -> Any:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, "no controller answered")
        first, self.next_first = self.next_first, self.next_first + self.size
        return {"error_code": 0, "first_producer_id": first, "size": self.size, "message": ""}


def test_producer_ids_come_from_blocks_prefetched_at_90_percent_and_never_repeat() -> None:
    controller = FakeController(size=10)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            manager = ProducerIdManager(
                broker_id=1, broker_epoch=lambda: 5, forward=controller.forward
            )
            await nursery.start(manager.run)
            ids = [await manager.next_id() for _ in range(9)]
            assert ids == list(range(9)) and controller.asked == 1
            await trio.testing.wait_all_tasks_blocked()
            assert controller.asked == 2  # the 9th of 10 started the next block's fetch
            ids += [await manager.next_id() for _ in range(21)]
            assert ids == list(range(30))
            # Many at once with no id at hand: the fetch in flight serves them all (15
            # ids are 2 blocks: 2 or 3 fetches with the prefetches, never one each).
            await trio.testing.wait_all_tasks_blocked()
            controller.gate = trio.Event()
            asked = controller.asked
            got: list[int] = []

            async def one() -> None:
                got.append(await manager.next_id())

            async with trio.open_nursery() as waiting:
                for _ in range(15):
                    waiting.start_soon(one)
                await trio.testing.wait_all_tasks_blocked()
                controller.gate.set()
            assert len(set(got)) == 15 and not set(got) & set(ids)
            assert controller.asked - asked <= 3
            # A controller that does not answer: a retriable error, then ids again.
            controller.gate = None
            controller.failing = True
            with pytest.raises(KafkaError) as raised:
                for _ in range(30):
                    await manager.next_id()
            assert raised.value.code == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
            controller.failing = False
            assert await manager.next_id() >= 30
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_an_unregistered_broker_hands_out_no_producer_id() -> None:
    controller = FakeController()

    async def main() -> None:
        manager = ProducerIdManager(
            broker_id=1, broker_epoch=lambda: -1, forward=controller.forward
        )
        with pytest.raises(KafkaError) as raised:
            await manager.next_id()
        assert raised.value.code == ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
        assert controller.asked == 0

    trio.run(main)
