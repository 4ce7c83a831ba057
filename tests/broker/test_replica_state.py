"""High-water mark, ISR and truncation rules, driven by hypothesis against simple models."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from broker.partition import Partition
from broker.replica_state import FollowerState, high_watermark, lagging, record_fetch
from kraft.metadata.image import PartitionRegistration
from storage.divergence import diverging_epoch
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch

LEADER = 1
FOLLOWERS = (2, 3)


def new_log(fs: MemoryFileSystem, name: str) -> SegmentedLog:
    return SegmentedLog.open(f"/{name}", LogConfig(segment_bytes=2048), fs=fs)


def batch_at(offset: int, epoch: int, count: int) -> bytes:
    # Content is a function of (offset, epoch): equal bytes mean the same history.
    return build_batch(
        [RecordInput(timestamp=1, value=f"{epoch}:{offset + i}".encode()) for i in range(count)]
    )


def test_caught_up_at_the_previous_fetch_when_keeping_up_with_a_busy_leader() -> None:
    state = FollowerState()
    record_fetch(state, 0, leader_end=0, now_ms=100)  # caught up: at the end
    assert state.last_caught_up_ms == 100
    record_fetch(state, 10, leader_end=20, now_ms=200)  # behind now, but past the end at 100
    assert state.last_caught_up_ms == 100
    record_fetch(state, 20, leader_end=30, now_ms=300)  # reached the end seen at 200
    assert state.last_caught_up_ms == 200
    record_fetch(state, 21, leader_end=40, now_ms=400)  # not the end seen at 300
    assert state.last_caught_up_ms == 200
    assert lagging((1, 2), 1, {2: state}, now_ms=400 + 10, lag_max_ms=200) == [2]
    assert lagging((1, 2), 1, {2: state}, now_ms=399, lag_max_ms=200) == []


def test_high_watermark_is_the_slowest_isr_member_and_never_goes_back() -> None:
    followers = {2: FollowerState(log_end_offset=5), 3: FollowerState(log_end_offset=9)}
    assert high_watermark(0, 10, 1, {1, 2, 3}, followers) == 5
    assert high_watermark(0, 10, 1, {1, 3}, followers) == 9
    assert high_watermark(7, 10, 1, {1, 2, 3}, followers) == 7  # never back
    assert high_watermark(0, 10, 1, {1, 2, 4}, followers) == 0  # 4 never fetched: unknown


class LeaderModel(RuleBasedStateMachine):
    """A leader partition under appends, follower fetches and ISR changes."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = MemoryFileSystem()
        self.partition = Partition(
            topic="t", topic_id="id", index=0, log=new_log(self.fs, "t-0"), broker_id=LEADER
        )
        self.now = 1_000
        self.isr: tuple[int, ...] = (1, 2, 3)
        self.partition.apply(self._registration(epoch=0, partition_epoch=0), self.now)
        self.follower_ends = dict.fromkeys(FOLLOWERS, 0)
        self.seen_high_watermark = 0

    def _registration(self, *, epoch: int, partition_epoch: int) -> PartitionRegistration:
        return PartitionRegistration(
            replicas=(1, 2, 3),
            isr=self.isr,
            leader=LEADER,
            leader_epoch=epoch,
            partition_epoch=partition_epoch,
        )

    @rule(count=st.integers(1, 5))
    def append(self, count: int) -> None:
        self.partition.append_as_leader(batch_at(self.partition.log.log_end_offset, 0, count))

    @rule(follower=st.sampled_from(FOLLOWERS), data=st.data())
    def fetch(self, follower: int, data: st.DataObject) -> None:
        end = self.partition.log.log_end_offset
        offset = data.draw(st.integers(self.follower_ends[follower], end))
        self.now += data.draw(st.integers(0, 50))
        assert (
            self.partition.on_follower_fetch(follower, offset, 0 if offset else -1, self.now)
            is None
        )
        self.follower_ends[follower] = offset

    @rule(follower=st.sampled_from(FOLLOWERS), committed=st.booleans())
    def change_isr(self, follower: int, committed: bool) -> None:
        new = (
            tuple(r for r in self.isr if r != follower)
            if follower in self.isr
            else tuple(sorted((*self.isr, follower)))
        )
        self.partition.pending_isr = new  # in flight ...
        if committed:  # ... and maybe committed already
            self.isr = new
            self.partition.apply(
                self._registration(epoch=0, partition_epoch=self.partition.partition_epoch + 1),
                self.now,
            )

    @invariant()
    def high_watermark_is_safe(self) -> None:
        hw = self.partition.high_watermark
        assert hw >= self.seen_high_watermark, "the high-water mark went back"
        assert hw <= self.partition.log.log_end_offset
        if hw > self.seen_high_watermark:
            # It only moves to where every member of the ISR, committed or proposed
            # (KIP-497's maximal ISR), holds everything below it.
            for member in set(self.isr) | set(self.partition.pending_isr or ()):
                if member != LEADER:
                    assert self.follower_ends[member] >= hw, (member, hw)
        self.seen_high_watermark = hw


LeaderModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLeaderModel = LeaderModel.TestCase


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(leader chunks, follower chunks, common length): [(epoch, records)] each.

    One leader writes each epoch, so two logs can differ only after the last epoch
    they share a prefix of; the leader's history has the newest epoch.
    """
    common = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))
    epochs = sorted(draw(st.sets(st.integers(1, 30), min_size=len(common), max_size=len(common))))
    prefix = [(epoch, count) for epoch, count in zip(epochs, common, strict=True)]
    last = epochs[-1] if epochs else 0
    later = sorted(draw(st.sets(st.integers(last + 1, 60), min_size=1, max_size=6)))
    leader_epochs = draw(st.sets(st.sampled_from(later), min_size=1))
    follower_epochs = [e for e in later if e not in leader_epochs and e < max(leader_epochs)]
    follower_epochs = (
        draw(st.lists(st.sampled_from(follower_epochs), unique=True)) if follower_epochs else []
    )
    leader = prefix + [(e, draw(st.integers(1, 4))) for e in sorted(leader_epochs)]
    follower = prefix + [(e, draw(st.integers(1, 4))) for e in sorted(follower_epochs)]
    return leader, follower, sum(common)


def build(fs: MemoryFileSystem, name: str, chunks: list[tuple[int, int]]) -> SegmentedLog:
    log = new_log(fs, name)
    for epoch, count in chunks:
        log.append(batch_at(log.log_end_offset, epoch, count), leader_epoch=epoch)
    return log


def whole(log: SegmentedLog) -> bytes:
    return bytes(log.read(log.log_start_offset, 1 << 20)) if log.log_end_offset else b""


@settings(max_examples=300, deadline=None)
@given(histories())
def test_a_follower_truncates_to_the_divergence_and_ends_equal_to_the_leader(case) -> None:
    leader_chunks, follower_chunks, common = case
    fs = MemoryFileSystem()
    leader = build(fs, "leader", leader_chunks)
    follower_log = build(fs, "follower", follower_chunks)
    follower = Partition(topic="t", topic_id="i", index=0, log=follower_log, broker_id=2)
    lowest = follower_log.log_end_offset
    for _ in range(20):  # each round trip settles at least one epoch
        fetch_offset = follower_log.log_end_offset
        diverging = diverging_epoch(leader, fetch_offset, follower.last_fetched_epoch())
        if diverging is not None:
            lowest = min(lowest, follower.truncate_to_divergence(diverging))
            continue
        if fetch_offset == leader.log_end_offset:
            break
        follower.append_as_follower(bytes(leader.read(fetch_offset, 1 << 20)), 0)
    assert whole(follower_log) == whole(leader)
    # It kept every record the two logs share: no truncation below the common prefix.
    assert lowest >= common
