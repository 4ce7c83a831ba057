"""Log compaction against a model: the latest value of every key survives every clean.

The model is the list of records appended (offset, key, value, append time). After
every step, reading the whole log must give a subsequence of the model, in offset
order, holding for each key its latest record; a key whose latest record is a
tombstone may have gone only once a clean ran `delete_retention_ms` after it was
written; null-key records all stay. Crashes (of the in-memory file system, losing what
was never synced and maybe tearing the last write) happen between steps and in the
middle of a cleaning, at any of its file-system operations: the reopened log must then
read as before the cleaning or as after it, one swapped run at a time. A pass may also
run in steps (`clean_in_steps`, as the broker's cleaner runs it) with appends, rolls
and truncations above the high-water mark between its steps: it completes, or gives up
(CleaningAborted) when what it read changed, and the model holds either way.

The check can fail: `test_the_model_catches_a_cleaner_that_drops_the_latest_value`
plants a cleaner whose keep rule is off by one (it drops the record the offset map
points at, the newest value of its key) and requires the machine to find it.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Generator

import attrs
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import storage.cleaner as cleaner
from storage.cleaner import (
    CleanerConfig,
    CleaningAborted,
    CleanResult,
    clean,
    clean_in_steps,
)
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import (
    Compression,
    Record,
    RecordInput,
    build_batch,
    iter_batches,
    iter_records,
)

DIRECTORY = "/data/compacted-0"
CONFIG = LogConfig(
    segment_bytes=900, index_interval_bytes=150, segment_ms=10**12, allow_offset_gaps=True
)
RETENTION_MS = 10_000
KEYS = [b"a", b"b", b"c", b"d", b"e", b"f"]


class CrashNow(Exception):
    """Raised by CountdownFileSystem at the chosen operation."""


class CountdownFileSystem(MemoryFileSystem):
    """Raises CrashNow before its n-th rename, remove, directory sync or file sync."""

    def __init__(self) -> None:
        super().__init__()
        self.countdown: int | None = None

    def _tick(self) -> None:
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown < 0:
                self.countdown = None
                raise CrashNow()

    def rename(self, source: str, target: str) -> None:
        self._tick()
        super().rename(source, target)

    def remove(self, path: str) -> None:
        self._tick()
        super().remove(path)

    def sync_dir(self, path: str) -> None:
        self._tick()
        super().sync_dir(path)

    def sync_latency_hook(self) -> None:
        self._tick()


@attrs.frozen
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def read_all(log: SegmentedLog) -> list[Rec]:
    """Every record from the log start, following gaps between batches."""
    out: list[Rec] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 10_000)
        if not data:
            break  # a gap runs up to the (empty) active segment
        for position, header in iter_batches(data):
            for record in iter_records(data, position):
                out.append(Rec(record.offset, record.key, record.value))
            offset = header.next_offset
    offsets = [r.offset for r in out]
    assert offsets == sorted(set(offsets)), "offsets repeat or go back"
    return out


def encode(records: list[tuple[bytes | None, bytes | None]], now: int, gzip: bool) -> bytes:
    inputs = [RecordInput(key=k, value=v, timestamp=now) for k, v in records]
    return build_batch(inputs, compression=Compression.GZIP if gzip else Compression.NONE)


record_strategy = st.tuples(
    st.sampled_from([*KEYS, None]) | st.sampled_from(KEYS),
    st.none() | st.binary(min_size=1, max_size=12),
)


class CleanerMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def open_log(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fs = CountdownFileSystem()
        self.log = SegmentedLog.open(DIRECTORY, CONFIG, fs=self.fs)
        self.model: list[tuple[Rec, int]] = []  # (record, append time)
        self.clock = 1_000
        self.latest_clean_ms: int | None = None
        self.durable_end = 0
        # A pass in steps, as the broker runs it, and the clock it started at.
        self.pass_steps: Generator[int, None, CleanResult] | None = None
        self.pass_clock = 0
        self.high_watermark = 0
        # Truncations stay at or above what any clean may have mapped: as in a broker,
        # where the cleaner stays below the high-water mark and only an unclean
        # election truncates below it.
        self.truncation_floor = 0

    # -- helpers

    def cleaner_config(self, ratio: float) -> CleanerConfig:
        return CleanerConfig(delete_retention_ms=RETENTION_MS, min_cleanable_dirty_ratio=ratio)

    def cleaned_at(self, clock: int) -> None:
        self.latest_clean_ms = max(clock, self.latest_clean_ms or clock)

    def drop_pass(self) -> None:
        if self.pass_steps is not None:
            self.pass_steps.close()  # as a cancelled task's: its .cleaned file goes
            self.pass_steps = None

    def reopen_after_crash(self, tear: bool) -> None:
        self.drop_pass()
        self.fs.crash(self.rng, tear=tear)
        self.log = SegmentedLog.open(DIRECTORY, CONFIG, fs=self.fs)
        assert self.log.log_end_offset >= self.durable_end, "flushed records lost"
        end = self.log.log_end_offset
        self.model = [(r, t) for r, t in self.model if r.offset < end]
        self.durable_end = end

    # -- rules

    @rule(
        records=st.lists(record_strategy, min_size=1, max_size=5),
        gzip=st.booleans(),
        tick=st.integers(0, 4_000),
        then_roll=st.sampled_from([False, False, True]),
    )
    def append(
        self,
        records: list[tuple[bytes | None, bytes | None]],
        gzip: bool,
        tick: int,
        then_roll: bool,
    ) -> None:
        self.clock += tick
        info = self.log.append(encode(records, self.clock, gzip), leader_epoch=0)
        for index, (key, value) in enumerate(records):
            self.model.append((Rec(info.first_offset + index, key, value), self.clock))
        if then_roll:
            self.roll()

    @rule()
    def flush(self) -> None:
        self.log.flush()
        self.durable_end = self.log.log_end_offset

    @rule()
    def roll(self) -> None:
        self.log.roll()
        self.durable_end = self.log.log_end_offset  # a roll syncs the old segment

    @rule(ratio=st.sampled_from([0.0, 0.5, 0.9]), tick=st.integers(0, 12_000))
    def clean(self, ratio: float, tick: int) -> None:
        self.drop_pass()
        self.clock += tick
        self.truncation_floor = max(self.truncation_floor, self.log.active_segment.base_offset)
        result = clean(self.log, self.clock, self.cleaner_config(ratio))
        if result.cleaned:
            self.cleaned_at(self.clock)
        # (A truncation to a segment's base makes the one before active again, and the
        # checkpoint may then lie inside the active segment.)
        assert result.end_offset <= self.log.log_end_offset

    @rule(ratio=st.sampled_from([0.0, 0.5]), tick=st.integers(0, 12_000), data=st.data())
    def crash_while_cleaning(self, ratio: float, tick: int, data: st.DataObject) -> None:
        """Crash at the n-th operation of a clean: before or after, run by run."""
        self.drop_pass()
        self.clock += tick
        self.truncation_floor = max(self.truncation_floor, self.log.active_segment.base_offset)
        self.log.flush()  # what a crash may lose at the tail is checked elsewhere
        self.durable_end = self.log.log_end_offset
        before = read_all(self.log)
        # The same clean, run to its end on a copy of the disk, gives the "after".
        twin_fs = copy.deepcopy(self.fs)
        twin = SegmentedLog.open(DIRECTORY, CONFIG, fs=twin_fs)
        twin_result = clean(twin, self.clock, self.cleaner_config(ratio))
        after = read_all(twin)
        boundaries = sorted({0, *(s.base_offset for s in twin.segments), 2**63})
        self.fs.countdown = data.draw(st.integers(0, 40), label="crash at operation")
        try:
            result = clean(self.log, self.clock, self.cleaner_config(ratio))
        except CrashNow:
            self.reopen_after_crash(tear=data.draw(st.booleans(), label="tear"))
        else:
            self.fs.countdown = None
            assert result.cleaned == twin_result.cleaned
        got = read_all(self.log)
        mixtures = [
            [r for r in after if r.offset < cut] + [r for r in before if r.offset >= cut]
            for cut in boundaries
        ]
        assert got in mixtures, "a crash left neither the old nor the cleaned content"
        if got != before:
            self.cleaned_at(self.clock)

    @rule(tear=st.booleans())
    def crash(self, tear: bool) -> None:
        self.reopen_after_crash(tear)

    @rule()
    def close_and_reopen(self) -> None:
        self.drop_pass()
        self.log.close()
        self.log = SegmentedLog.open(DIRECTORY, CONFIG, fs=self.fs)
        self.durable_end = self.log.log_end_offset

    # -- a pass in steps, with appends, rolls and truncations between them

    @rule()
    def advance_high_watermark(self) -> None:
        self.high_watermark = self.log.log_end_offset

    @precondition(lambda self: self.pass_steps is None)
    @rule(ratio=st.sampled_from([0.0, 0.5]), tick=st.integers(0, 12_000))
    def start_pass(self, ratio: float, tick: int) -> None:
        self.clock += tick
        self.pass_clock = self.clock
        self.high_watermark = min(self.high_watermark, self.log.log_end_offset)
        self.truncation_floor = max(self.truncation_floor, self.high_watermark)
        self.pass_steps = clean_in_steps(
            self.log, self.clock, self.cleaner_config(ratio), max_offset=self.high_watermark
        )

    @precondition(lambda self: self.pass_steps is not None)
    @rule(steps=st.integers(1, 12))
    def step_pass(self, steps: int) -> None:
        assert self.pass_steps is not None
        before = read_all(self.log)
        try:
            for _ in range(steps):
                next(self.pass_steps)
        except StopIteration as done:
            self.pass_steps = None
            result: CleanResult = done.value
            assert result.end_offset <= self.log.log_end_offset
        except CleaningAborted:
            self.pass_steps = None
        if read_all(self.log) != before:
            self.cleaned_at(self.pass_clock)

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        low = max(self.truncation_floor, self.high_watermark, self.log.log_start_offset)
        if low >= self.log.log_end_offset:
            return
        target = data.draw(st.integers(low, self.log.log_end_offset), label="truncate to")
        self.log.truncate_to(target)  # to the start of the batch holding `target`
        end = self.log.log_end_offset
        assert low <= end <= target
        self.model = [(r, t) for r, t in self.model if r.offset < end]
        self.durable_end = min(self.durable_end, end)

    # -- invariants

    @invariant()
    def latest_value_of_every_key(self) -> None:
        if not hasattr(self, "log"):
            return
        check_against_model(read_all(self.log), self.model, self.latest_clean_ms)


def check_against_model(
    got: list[Rec], model: list[tuple[Rec, int]], latest_clean_ms: int | None
) -> None:
    written = {r.offset: r for r, _ in model}
    for record in got:
        assert written.get(record.offset) == record, f"{record} was never written there"
    present = {r.offset for r in got}
    latest: dict[bytes, tuple[Rec, int]] = {}
    for record, appended_ms in model:
        if record.key is None:
            assert record.offset in present, f"null-key record {record} was removed"
        else:
            latest[record.key] = (record, appended_ms)
    for key, (record, appended_ms) in latest.items():
        if record.offset in present:
            continue
        assert record.value is None, f"the latest value of {key!r} is gone: {record}"
        assert latest_clean_ms is not None and latest_clean_ms >= appended_ms + RETENTION_MS, (
            f"tombstone {record} removed before delete.retention.ms passed"
        )
        assert all(r.key != key for r in got), f"older records of deleted {key!r} came back"


CleanerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCleanerAgainstModel = CleanerMachine.TestCase


# ---------------------------------------------------------------------- planted bug


def _drops_the_latest(record: Record, offset_map: dict[bytes, int], horizon_passed: bool) -> bool:
    if record.key is None:
        return True
    latest = offset_map.get(record.key)
    if latest is not None and record.offset <= latest:  # the planted off-by-one
        return False
    return record.value is not None or not horizon_passed


def test_the_model_catches_a_cleaner_that_drops_the_latest_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cleaner, "_keep_record", _drops_the_latest)
    # Dropping the newest record of a key shows as a lost value or, when the newest
    # was a tombstone, as a tombstone gone before its time.
    with pytest.raises(AssertionError, match=r"latest value|tombstone"):
        run_state_machine_as_test(
            CleanerMachine,
            settings=settings(
                max_examples=200,
                stateful_step_count=30,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            ),
        )


def test_the_planted_bug_fails_a_small_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bug on a fixed history, and the real cleaner on it."""

    def history() -> tuple[list[Rec], list[tuple[Rec, int]]]:
        log = SegmentedLog.open(DIRECTORY, CONFIG, fs=MemoryFileSystem())
        log.append(encode([(b"k", b"v1")], 10, False), leader_epoch=0)
        log.append(encode([(b"k", b"v2")], 20, False), leader_epoch=0)
        log.roll()
        assert clean(log, 30, CleanerConfig()).cleaned
        model = [(Rec(0, b"k", b"v1"), 10), (Rec(1, b"k", b"v2"), 20)]
        return read_all(log), model

    got, model = history()
    assert got == [Rec(1, b"k", b"v2")]
    check_against_model(got, model, 30)
    monkeypatch.setattr(cleaner, "_keep_record", _drops_the_latest)
    got, model = history()
    with pytest.raises(AssertionError, match="latest value"):
        check_against_model(got, model, 30)
