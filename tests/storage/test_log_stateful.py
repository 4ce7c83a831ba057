"""The segmented log against a list of batches, through crashes and torn writes.

The model is the list of batches the log has accepted. After every step the log's
content, read back batch by batch, must equal the model. A crash of the in-memory
file system loses what was never synced and may tear the last write; after it the
log must reopen to a prefix of the model that still holds everything flushed before.
"""

from __future__ import annotations

import itertools
import random

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from storage.fs import MemoryFileSystem
from storage.log import (
    InvalidTruncationError,
    LogConfig,
    LogStorageError,
    NonContiguousOffsetError,
    SegmentedLog,
)
from storage.records import RecordInput, build_batch, iter_batches, iter_records

DIRECTORY = "/data/topic-0"
CONFIG = LogConfig(segment_bytes=700, index_interval_bytes=150, segment_ms=10_000)


@attrs.frozen
class ModelBatch:
    base_offset: int
    epoch: int
    timestamp: int
    values: tuple[bytes, ...]

    @property
    def next_offset(self) -> int:
        return self.base_offset + len(self.values)


def encode(
    values: tuple[bytes, ...], timestamp: int, base_offset: int = 0, epoch: int = -1
) -> bytes:
    records = [RecordInput(key=None, value=value, timestamp=timestamp) for value in values]
    return build_batch(records, base_offset=base_offset, partition_leader_epoch=epoch)


def read_everything(log: SegmentedLog) -> list[ModelBatch]:
    batches: list[ModelBatch] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1000)
        assert data, f"no data at {offset} below the log end {log.log_end_offset}"
        for position, header in iter_batches(data):
            batch = bytes(data[position : position + header.size_bytes])
            values = tuple(record.value or b"" for record in iter_records(batch))
            batches.append(
                ModelBatch(
                    header.base_offset, header.partition_leader_epoch, header.base_timestamp, values
                )
            )
            offset = header.next_offset
    return batches


values_strategy = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=6).map(tuple)


class LogMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def open_log(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fs = MemoryFileSystem()
        self.log = SegmentedLog.open(DIRECTORY, CONFIG, fs=self.fs)
        self.model: list[ModelBatch] = []
        self.log_start = 0
        self.durable_end = 0  # every offset below this was flushed
        self.end = 0  # the log end offset the model expects
        self.epoch = 0
        self.clock = 1_000

    # -- helpers

    def visible(self) -> list[ModelBatch]:
        return [batch for batch in self.model if batch.next_offset > self.log_start]

    # -- rules

    @rule(values=values_strategy, epoch_bump=st.integers(0, 1), tick=st.integers(0, 6_000))
    def append_as_leader(self, values: tuple[bytes, ...], epoch_bump: int, tick: int) -> None:
        self.epoch += epoch_bump
        self.clock += tick
        info = self.log.append(encode(values, self.clock), leader_epoch=self.epoch)
        assert info.first_offset == self.end
        assert info.last_offset == self.end + len(values) - 1
        self.model.append(ModelBatch(self.end, self.epoch, self.clock, values))
        self.end += len(values)

    @rule(values=values_strategy, epoch_bump=st.integers(0, 1))
    def append_as_follower(self, values: tuple[bytes, ...], epoch_bump: int) -> None:
        self.epoch += epoch_bump
        self.log.append_as_follower(encode(values, self.clock, self.end, self.epoch))
        self.model.append(ModelBatch(self.end, self.epoch, self.clock, values))
        self.end += len(values)

    @rule(values=values_strategy, gap=st.sampled_from([-1, 1, 5]))
    def follower_append_with_gap_is_refused(self, values: tuple[bytes, ...], gap: int) -> None:
        base = self.end + gap
        if base < 0:
            return
        try:
            self.log.append_as_follower(encode(values, self.clock, base, self.epoch))
        except NonContiguousOffsetError:
            return
        raise AssertionError("a non-contiguous follower append was accepted")

    @rule(values=values_strategy, room=st.integers(0, 60))
    def append_on_full_disk_leaves_no_trace(self, values: tuple[bytes, ...], room: int) -> None:
        self.fs.capacity_bytes = self.fs.used_bytes() + room
        try:
            self.log.append(encode(values, self.clock), leader_epoch=self.epoch)
        except LogStorageError:
            assert self.log.log_end_offset == self.end
        else:
            self.model.append(ModelBatch(self.end, self.epoch, self.clock, values))
            self.end += len(values)
        finally:
            self.fs.capacity_bytes = None

    @rule()
    def flush(self) -> None:
        self.log.flush()
        self.durable_end = self.end

    @rule()
    def roll(self) -> None:
        self.log.roll()

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.log_start, self.end + 2))
        self.log.truncate_to(offset)
        if offset < self.end:
            # A batch is indivisible: one that straddles `offset` goes whole.
            self.model = [batch for batch in self.model if batch.next_offset <= offset]
            self.end = self.model[-1].next_offset if self.model else 0
            if self.end < self.log_start:
                # The cut went below the start: the log restarts empty at its start.
                self.model, self.end = [], self.log_start
        # Truncation is durable at once; what stays below it keeps its durability.
        self.durable_end = min(self.durable_end, self.end)

    @precondition(lambda self: self.log_start > 0)
    @rule(data=st.data())
    def truncate_below_start_is_refused(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(0, self.log_start - 1))
        try:
            self.log.truncate_to(offset)
        except InvalidTruncationError:
            return
        raise AssertionError("truncation below the log start was accepted")

    @rule(data=st.data())
    def advance_log_start(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(0, self.end))
        moved = self.log.advance_log_start_offset(offset)
        assert moved == (offset > self.log_start)
        self.log_start = max(self.log_start, offset)
        if moved:
            self.durable_end = self.end

    @rule(retention=st.integers(0, 2000))
    def retention_by_size(self, retention: int) -> None:
        self.log.config = attrs.evolve(CONFIG, retention_bytes=retention, retention_ms=-1)
        try:
            self.log.delete_old_segments(now_ms=self.clock)
        finally:
            self.log.config = CONFIG
        self.log_start = self.log.log_start_offset

    @rule(age=st.integers(0, 20_000))
    def retention_by_time(self, age: int) -> None:
        self.log.config = attrs.evolve(CONFIG, retention_ms=age)
        try:
            self.log.delete_old_segments(now_ms=self.clock)
        finally:
            self.log.config = CONFIG
        self.log_start = self.log.log_start_offset

    @rule()
    def close_and_reopen(self) -> None:
        self.log.close()
        self.log = SegmentedLog.open(DIRECTORY, CONFIG, fs=self.fs)
        self.durable_end = self.end

    @rule(tear=st.booleans())
    def crash_and_reopen(self, tear: bool) -> None:
        self.fs.crash(self.rng, tear=tear)
        self.log = SegmentedLog.open(DIRECTORY, CONFIG, fs=self.fs)
        survived = read_everything(self.log)
        expected = self.visible()
        assert survived == expected[: len(survived)], "the surviving log is not a prefix"
        assert self.log.log_end_offset >= self.durable_end, (
            f"flushed data lost: end {self.log.log_end_offset} < flushed {self.durable_end}"
        )
        assert self.log.log_start_offset == self.log_start
        self.end = self.log.log_end_offset
        self.model = [batch for batch in self.model if batch.next_offset <= self.end]
        self.durable_end = self.end

    @rule(data=st.data())
    def read_matches_model(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.log_start, self.end))
        max_bytes = data.draw(st.integers(0, 400))
        max_offset = data.draw(st.none() | st.integers(self.log_start, self.end))
        result, next_offset = self.log.read_slice(offset, max_bytes, max_offset)
        headers = [header for _, header in iter_batches(result)]
        got = [header.base_offset for header in headers]
        assert next_offset == (headers[-1].next_offset if headers else offset)
        following = [batch for batch in self.visible() if batch.next_offset > offset]
        allowed = [
            batch.base_offset
            for batch in following
            if max_offset is None or batch.next_offset <= max_offset
        ]
        if not got:
            assert not following or not allowed or following[0].base_offset != allowed[0]
            return
        # A run of whole batches from the one holding `offset`, never past max_offset.
        assert got == allowed[: len(got)]
        if len(got) > 1:
            assert len(result) <= max_bytes

    # -- invariants

    @invariant()
    def content_equals_model(self) -> None:
        if not hasattr(self, "log"):
            return
        assert self.log.log_end_offset == self.end
        assert self.log.log_start_offset == self.log_start
        assert read_everything(self.log) == self.visible()

    @invariant()
    def epoch_cache_answers_for_every_visible_batch(self) -> None:
        if not hasattr(self, "log"):
            return
        cache = self.log.epoch_cache
        entries = cache.entries
        assert all(
            a.epoch < b.epoch and a.start_offset < b.start_offset
            for a, b in itertools.pairwise(entries)
        )
        assert all(entry.start_offset <= self.end for entry in entries)
        visible = self.visible()
        for batch in visible:
            assert cache.epoch_for_offset(max(batch.base_offset, self.log_start)) == batch.epoch
        # Where each epoch ended: the first offset of the next higher epoch, or the end.
        for index, batch in enumerate(visible):
            later = [b for b in visible[index:] if b.epoch > batch.epoch]
            expected_end = later[0].base_offset if later else self.end
            if not later and cache.latest_epoch() > batch.epoch:
                continue  # an epoch whose records were all truncated or deleted
            assert self.log.end_offset_for_epoch(batch.epoch) == (batch.epoch, expected_end)


LogMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSegmentedLogAgainstModel = LogMachine.TestCase
