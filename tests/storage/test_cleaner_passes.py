"""One cleaning pass, rule by rule: the active segment, offsets and order, producer
fields, gaps, tombstones and their horizon, the dirty ratio and compaction lag, the
high-water mark, batches kept whole, and a crash at every file-system operation (the
model test of the same rules is tests/storage/test_cleaner.py)."""

from __future__ import annotations

import random
import struct

import attrs
import pytest

from storage.cleaner import (
    DELETE_HORIZON_BIT,
    CleanerConfig,
    clean,
)
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, NonContiguousOffsetError, SegmentedLog
from storage.records import (
    Compression,
    ControlRecordType,
    RecordInput,
    build_batch,
    build_control_batch,
    compute_crc,
    iter_batches,
    iter_records,
    read_header,
)
from tests.storage.test_cleaner import (
    CONFIG,
    DIRECTORY,
    KEYS,
    RETENTION_MS,
    CountdownFileSystem,
    CrashNow,
    Rec,
    encode,
    read_all,
)


def new_log(fs: MemoryFileSystem | None = None, config: LogConfig = CONFIG) -> SegmentedLog:
    return SegmentedLog.open(DIRECTORY, config, fs=fs or MemoryFileSystem())


def put(log: SegmentedLog, key: bytes | None, value: bytes | None, now: int = 100) -> int:
    return log.append(encode([(key, value)], now, False), leader_epoch=0).first_offset


def test_active_segment_is_never_touched() -> None:
    log = new_log()
    for index in range(3):
        put(log, b"k", b"%d" % index)
    log.roll()
    for index in range(3, 6):
        put(log, b"k", b"%d" % index)
    active = log.active_segment
    active_bytes = active.log.read_at(0, active.size)
    result = clean(log, 1_000, CleanerConfig())
    assert result.cleaned and result.end_offset == 3
    assert log.active_segment is active
    assert active.log.read_at(0, active.size) == active_bytes
    # The map covers the inactive part only: its last k stays beside the active ones.
    assert read_all(log) == [Rec(o, b"k", b"%d" % o) for o in range(2, 6)]


def test_offsets_and_order_are_kept_and_batches_keep_their_spans() -> None:
    log = new_log()
    log.append(encode([(b"a", b"1"), (b"b", b"1"), (b"c", b"1")], 100, False), leader_epoch=3)
    log.append(encode([(b"a", b"2"), (b"d", b"1")], 100, True), leader_epoch=3)
    log.append(encode([(b"b", b"2")], 100, False), leader_epoch=4)
    log.roll()
    clean(log, 1_000, CleanerConfig())
    assert read_all(log) == [
        Rec(2, b"c", b"1"),
        Rec(3, b"a", b"2"),
        Rec(4, b"d", b"1"),
        Rec(5, b"b", b"2"),
    ]
    data = log.read(0, 10_000)
    headers = [header for _, header in iter_batches(data)]
    # Base offsets and last offset deltas as written; epochs and codec kept.
    assert [(h.base_offset, h.last_offset) for h in headers] == [(0, 2), (3, 4), (5, 5)]
    assert [h.partition_leader_epoch for h in headers] == [3, 3, 4]
    assert [h.compression for h in headers] == [Compression.NONE, Compression.GZIP, 0]
    assert [h.record_count for h in headers] == [1, 2, 1]
    assert log.log_end_offset == 6


def test_producer_fields_are_kept_in_a_rewritten_batch() -> None:
    log = new_log()
    records = [RecordInput(key=b"a", value=b"1", timestamp=5), RecordInput(key=b"b", value=b"1")]
    batch = build_batch(records, producer_id=77, producer_epoch=2, base_sequence=10)
    log.append(batch, leader_epoch=0)
    put(log, b"a", b"2")
    log.roll()
    clean(log, 1_000, CleanerConfig())
    header = read_header(log.read(0, 10_000))
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (77, 2, 10)
    assert (header.base_offset, header.last_offset_delta, header.record_count) == (0, 1, 1)


def test_a_whole_removed_batch_leaves_a_gap_and_a_follower_copies_across_it() -> None:
    leader = new_log()
    for value in (b"1", b"2", b"3"):
        put(leader, b"k", value)
    put(leader, b"other", b"x")
    leader.roll()
    put(leader, b"k", b"4")
    leader.roll()
    clean(leader, 1_000, CleanerConfig())
    follower_fs = MemoryFileSystem()
    follower = new_log(follower_fs)
    offset = 0
    while offset < leader.log_end_offset:
        data = leader.read(offset, 1_000)
        follower.append_as_follower(data)
        offset = follower.log_end_offset
    # Offsets 0-2 went (batches whole), so the follower's first batch starts at 3.
    assert read_all(follower) == read_all(leader) == [Rec(3, b"other", b"x"), Rec(4, b"k", b"4")]
    assert follower.log_end_offset == leader.log_end_offset == 5
    # The follower's active segment has the gap: recovery must keep it whole.
    follower_fs.crash()
    follower = new_log(follower_fs)
    assert follower.log_end_offset == 0  # nothing was flushed: a crash may lose all of it
    follower.append_as_follower(leader.read(0, 1_000))
    follower.flush()
    follower_fs.crash()
    assert read_all(new_log(follower_fs)) == [Rec(3, b"other", b"x"), Rec(4, b"k", b"4")]


def test_a_gap_is_refused_by_a_log_that_does_not_allow_them() -> None:
    leader = new_log()
    put(leader, b"k", b"1")
    put(leader, b"k", b"2")
    leader.roll()
    put(leader, b"k", b"3")
    clean(leader, 1_000, CleanerConfig())
    strict = new_log(config=attrs.evolve(CONFIG, allow_offset_gaps=False))
    with pytest.raises(NonContiguousOffsetError):
        strict.append_as_follower(leader.read(0, 1_000))
    with pytest.raises(AssertionError, match="gapless"):
        clean(strict_with_segments(), 1_000, CleanerConfig())


def strict_with_segments() -> SegmentedLog:
    log = new_log(config=attrs.evolve(CONFIG, allow_offset_gaps=False))
    put(log, b"k", b"1")
    log.roll()
    return log


def test_tombstones_go_only_after_a_clean_and_delete_retention() -> None:
    log = new_log()
    put(log, b"k", b"1", now=100)
    put(log, b"k", None, now=100)
    put(log, b"j", b"1", now=100)
    log.roll()
    config = CleanerConfig(delete_retention_ms=RETENTION_MS, min_cleanable_dirty_ratio=0.0)
    assert clean(log, 1_000, config).cleaned
    assert read_all(log) == [Rec(1, b"k", None), Rec(2, b"j", b"1")]
    header = read_header(log.read(1, 1_000))
    assert header.attributes & DELETE_HORIZON_BIT
    assert header.base_timestamp == 1_000 + RETENTION_MS  # the horizon
    # Record timestamps are kept, relative to the horizon now.
    assert [r.timestamp for r in iter_records(log.read(1, 1_000))] == [100]
    # Nothing dirty and the horizon not reached: no pass.
    assert not clean(log, 1_000 + RETENTION_MS - 1, config).cleaned
    assert read_all(log)[0] == Rec(1, b"k", None)
    # The horizon passed: a pass runs for the tombstone alone and drops it.
    result = clean(log, 1_000 + RETENTION_MS, config)
    assert result.cleaned and result.tombstones_removed == 1
    assert read_all(log) == [Rec(2, b"j", b"1")]


def test_dirty_ratio_and_compaction_lag_are_honoured() -> None:
    log = new_log()
    for index in range(6):
        put(log, b"k%d" % (index % 2), b"%d" % index, now=100)
    log.roll()
    # Compaction lag: records of time 100 are not 1000 ms old at 1099.
    lagged = CleanerConfig(min_compaction_lag_ms=1_000)
    assert not clean(log, 1_099, lagged).cleaned
    assert clean(log, 1_100, lagged).cleaned
    assert [r.offset for r in read_all(log)] == [4, 5]
    # Now all clean: a small dirty tail is below the ratio, a big one above it.
    put(log, b"k0", b"6", now=200)
    log.roll()
    result = clean(log, 5_000, CleanerConfig(min_cleanable_dirty_ratio=0.9))
    assert not result.cleaned and 0 < result.dirty_ratio <= 0.9
    assert clean(log, 5_000, CleanerConfig(min_cleanable_dirty_ratio=0.3)).cleaned
    assert [r.offset for r in read_all(log)] == [5, 6]


def test_nothing_past_max_offset_is_cleaned() -> None:
    log = new_log()
    put(log, b"k", b"1")
    log.roll()
    put(log, b"k", b"2")
    log.roll()
    put(log, b"k", b"3")
    result = clean(log, 1_000, CleanerConfig(), max_offset=1)
    assert result.end_offset == 1
    assert [r.offset for r in read_all(log)] == [0, 1, 2]  # offset 1's segment is unsettled
    clean(log, 1_000, CleanerConfig(min_cleanable_dirty_ratio=0.0), max_offset=3)
    assert [r.offset for r in read_all(log)] == [1, 2]  # the active segment is not mapped


def test_control_batches_null_keys_and_opaque_batches_are_kept_whole() -> None:
    log = new_log()
    put(log, b"k", b"1")
    marker = build_control_batch(ControlRecordType.COMMIT, b"\x00\x00\x00\x00\x00\x00", timestamp=1)
    log.append_as_follower(_at(marker, log.log_end_offset))
    put(log, None, b"no key")
    opaque = bytearray(encode([(b"k", b"snappy?")], 100, False))
    struct.pack_into(">h", opaque, 21, Compression.SNAPPY)  # a codec we cannot decode
    struct.pack_into(">I", opaque, 17, compute_crc(opaque))
    log.append(bytes(opaque), leader_epoch=0)
    put(log, b"k", b"2")
    log.roll()
    before = log.read(0, 10_000)
    clean(log, 1_000, CleanerConfig())
    after = log.read(0, 10_000)
    kept = [(h.base_offset, h.is_control, h.compression) for _, h in iter_batches(after)]
    assert kept == [(1, True, 0), (2, False, 0), (3, False, Compression.SNAPPY), (4, False, 0)]
    assert _batch(after, 1) == _batch(before, 1) and _batch(after, 3) == _batch(before, 3)


def _at(batch: bytes, base_offset: int) -> bytes:
    patched = bytearray(batch)
    struct.pack_into(">q", patched, 0, base_offset)
    return bytes(patched)


def _position_of(data: bytes, base_offset: int) -> int:
    for position, header in iter_batches(data):
        if header.base_offset == base_offset:
            return position
    raise KeyError(base_offset)


def _batch(data: bytes, base_offset: int) -> bytes:
    position = _position_of(data, base_offset)
    return data[position : position + read_header(data, position).size_bytes]


def test_a_crash_at_every_operation_of_a_clean_leaves_old_or_new_run_by_run() -> None:
    def build() -> tuple[CountdownFileSystem, SegmentedLog]:
        fs = CountdownFileSystem()
        log = new_log(fs)
        for round_ in range(4):
            for key in KEYS:
                put(log, key, b"%s%d" % (key, round_))
            log.roll()
        return fs, log

    _, reference = build()
    before = read_all(reference)
    clean(reference, 1_000, CleanerConfig())
    after = read_all(reference)
    assert after != before
    cuts = sorted({0, *(segment.base_offset for segment in reference.segments)})
    assert len(reference.segments) == 3  # two runs of two segments, and the active one
    mixtures = [
        [r for r in after if r.offset < cut] + [r for r in before if r.offset >= cut]
        for cut in cuts
    ]
    outcomes = set()
    for crash_at in range(60):
        fs, log = build()
        fs.countdown = crash_at
        try:
            clean(log, 1_000, CleanerConfig())
        except CrashNow:
            fs.crash(random.Random(crash_at))
            got = read_all(new_log(fs))
            assert got in mixtures, f"crash at operation {crash_at}"
            outcomes.add(mixtures.index(got))
        else:
            break
    assert outcomes == {0, 1, 2}  # before, the first run swapped, both
    # An interrupted swap never leaves its files behind.
    assert not [n for n in fs.listdir(DIRECTORY) if n.endswith((".cleaned", ".swap"))]
