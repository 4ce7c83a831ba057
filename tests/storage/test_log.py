"""SegmentedLog: appends, reads, rolls, truncation, retention, recovery, bad input."""

from __future__ import annotations

import random

import pytest

from storage.fs import MemoryFileSystem, OsFileSystem
from storage.log import (
    CorruptSegmentError,
    InvalidLeaderEpochError,
    InvalidTruncationError,
    LogConfig,
    LogStorageError,
    NonContiguousOffsetError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    SegmentedLog,
)
from storage.records import (
    CorruptRecordError,
    InvalidRecordError,
    RecordInput,
    build_batch,
    iter_batches,
    iter_records,
)

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=128)


def batch(*values: bytes, timestamp: int = 1_000, base_offset: int = 0, epoch: int = -1) -> bytes:
    records = [RecordInput(key=None, value=value, timestamp=timestamp) for value in values]
    return build_batch(records, base_offset=base_offset, partition_leader_epoch=epoch)


def values_from(log: SegmentedLog, start: int = 0) -> list[tuple[int, bytes | None]]:
    found: list[tuple[int, bytes | None]] = []
    offset = max(start, log.log_start_offset)
    while offset < log.log_end_offset:
        data = log.read(offset, 4096)
        for position, header in iter_batches(data):
            for record in iter_records(data[position : position + header.size_bytes]):
                if record.offset >= offset:
                    found.append((record.offset, record.value))
            offset = header.next_offset
    return found


@pytest.fixture
def memfs() -> MemoryFileSystem:
    return MemoryFileSystem()


def open_log(fs, config: LogConfig = SMALL, directory: str = "/data/t-0") -> SegmentedLog:
    return SegmentedLog.open(directory, config, fs=fs)


def test_append_assigns_offsets_and_stamps_leader_epoch(memfs) -> None:
    log = open_log(memfs)
    first = log.append(batch(b"a", b"b", base_offset=999), leader_epoch=3)
    second = log.append(batch(b"c") + batch(b"d", b"e"), leader_epoch=3)
    assert (first.first_offset, first.last_offset) == (0, 1)
    assert (second.first_offset, second.last_offset, second.batch_count) == (2, 4, 2)
    assert log.log_end_offset == 5
    headers = [header for _, header in iter_batches(log.read(0, 10_000))]
    assert [h.base_offset for h in headers] == [0, 2, 3]
    assert {h.partition_leader_epoch for h in headers} == {3}
    assert values_from(log) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]
    assert log.end_offset_for_epoch(3) == (3, 5)


def test_read_returns_whole_batches_at_least_one_and_respects_max_offset(memfs) -> None:
    log = open_log(memfs, LogConfig())
    for _index in range(5):
        log.append(batch(b"x" * 100, b"y" * 100), leader_epoch=0)
    one = log.read(3, max_bytes=10)  # smaller than a batch: still one whole batch
    headers = [h for _, h in iter_batches(one)]
    assert [h.base_offset for h in headers] == [2]
    everything = log.read(0, max_bytes=1 << 20)
    assert len([h for _, h in iter_batches(everything)]) == 5
    below_hwm = log.read(0, max_bytes=1 << 20, max_offset=5)
    assert [h.last_offset for _, h in iter_batches(below_hwm)] == [1, 3]
    assert log.read(10, 100) == b""
    with pytest.raises(OffsetOutOfRangeError):
        log.read(11, 100)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(-1, 100)


def test_segments_roll_by_size_and_reads_cross_them(memfs) -> None:
    log = open_log(memfs)
    for index in range(40):
        log.append(batch(bytes([index]) * 60), leader_epoch=0)
    assert len(log.segments) > 3
    names = memfs.listdir("/data/t-0")
    assert "00000000000000000000.log" in names and "00000000000000000000.index" in names
    assert values_from(log) == [(i, bytes([i]) * 60) for i in range(40)]
    log.close()
    reopened = open_log(memfs)
    assert values_from(reopened) == [(i, bytes([i]) * 60) for i in range(40)]
    assert reopened.log_end_offset == 40


def test_segments_roll_by_time_of_record_timestamps(memfs) -> None:
    log = open_log(memfs, LogConfig(segment_ms=1_000))
    log.append(batch(b"a", timestamp=10_000), leader_epoch=0)
    log.append(batch(b"b", timestamp=10_500), leader_epoch=0)
    assert len(log.segments) == 1
    log.append(batch(b"c", timestamp=11_001), leader_epoch=0)
    assert [s.base_offset for s in log.segments] == [0, 2]


def test_follower_appends_must_be_contiguous_and_keep_epochs(memfs) -> None:
    log = open_log(memfs)
    log.append_as_follower(batch(b"a", b"b", base_offset=0, epoch=1))
    log.append_as_follower(batch(b"c", base_offset=2, epoch=4))
    with pytest.raises(NonContiguousOffsetError):
        log.append_as_follower(batch(b"d", base_offset=5, epoch=4))
    with pytest.raises(NonContiguousOffsetError):
        log.append_as_follower(
            batch(b"d", base_offset=3, epoch=4) + batch(b"e", base_offset=7, epoch=4)
        )
    assert log.log_end_offset == 3
    assert [(e.epoch, e.start_offset) for e in log.epoch_cache.entries] == [(1, 0), (4, 2)]
    assert log.end_offset_for_epoch(2) == (1, 2)


def test_bad_batches_are_refused_and_leave_the_log_unchanged(memfs) -> None:
    log = open_log(memfs)
    log.append(batch(b"good"), leader_epoch=0)
    size_before = log.size_bytes()
    good = bytearray(batch(b"payload"))
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    wrong_magic = bytearray(good)
    wrong_magic[16] = 1
    short = bytes(good[:-3])
    bad_length = bytearray(good)
    bad_length[8:12] = (5).to_bytes(4, "big")
    for bad, error in [
        (flipped, CorruptRecordError),
        (wrong_magic, InvalidRecordError),
        (short, InvalidRecordError),
        (bad_length, InvalidRecordError),
        (bytes(good) + short, InvalidRecordError),  # a good batch then a broken one: all or nothing
        (b"", Exception),
    ]:
        with pytest.raises(error):
            log.append(bad, leader_epoch=0)
        assert log.log_end_offset == 1 and log.size_bytes() == size_before
    with pytest.raises(RecordTooLargeError):
        open_log(memfs, LogConfig(max_message_bytes=100), "/other").append(
            batch(b"z" * 200), leader_epoch=0
        )
    with pytest.raises(InvalidLeaderEpochError):
        log.append(batch(b"x"), leader_epoch=0) and log.append(batch(b"y"), leader_epoch=-5)
    assert values_from(log)[0] == (0, b"good")


def test_full_disk_during_append_leaves_no_half_batch(memfs) -> None:
    log = open_log(memfs, LogConfig())
    log.append(batch(b"a" * 50), leader_epoch=0)
    log.flush()
    memfs.capacity_bytes = memfs.used_bytes() + 30
    with pytest.raises(LogStorageError, match="No space"):
        log.append(batch(b"b" * 50), leader_epoch=0)
    assert log.log_end_offset == 1
    memfs.capacity_bytes = None
    log.append(batch(b"c"), leader_epoch=0)
    assert values_from(log) == [(0, b"a" * 50), (1, b"c")]
    log.close()
    assert values_from(open_log(memfs, LogConfig())) == [(0, b"a" * 50), (1, b"c")]


def test_truncate_to_removes_whole_batches_and_epochs(memfs) -> None:
    log = open_log(memfs)
    for epoch in range(1, 20):
        log.append(batch(b"v" * 40, b"w" * 40), leader_epoch=epoch)
    log.truncate_to(21)  # inside the batch [20, 21]: it goes whole
    assert log.log_end_offset == 20
    assert log.epoch_cache.latest_epoch() == 10
    log.append(batch(b"new"), leader_epoch=30)
    assert values_from(log)[-1] == (20, b"new")
    log.advance_log_start_offset(8)
    with pytest.raises(InvalidTruncationError):
        log.truncate_to(7)
    log.truncate_fully_and_start_at(100)
    assert (log.log_start_offset, log.log_end_offset) == (100, 100)
    assert log.epoch_cache.entries == ()
    log.append(batch(b"after"), leader_epoch=31)
    assert values_from(log) == [(100, b"after")]


def test_retention_by_size_and_time_never_deletes_the_active_segment(memfs) -> None:
    log = open_log(memfs, LogConfig(segment_bytes=400, retention_bytes=800))
    for index in range(30):
        log.append(batch(bytes([index]) * 50, timestamp=1_000 + index), leader_epoch=0)
    segments_before = len(log.segments)
    deleted = log.delete_old_segments(now_ms=2_000)
    assert deleted > 0 and len(log.segments) == segments_before - deleted
    assert log.size_bytes() >= 800 - 400
    assert log.log_start_offset == log.segments[0].base_offset
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    timed = open_log(memfs, LogConfig(segment_bytes=400, retention_ms=100), "/timed")
    for index in range(30):
        timed.append(batch(bytes([index]) * 50, timestamp=1_000 + index), leader_epoch=0)
    timed.delete_old_segments(now_ms=10_000)
    assert len(timed.segments) == 1 and timed.log_end_offset == 30


def test_offset_for_timestamp_finds_the_first_record_at_or_after(memfs) -> None:
    log = open_log(memfs)
    for index in range(50):
        records = [
            RecordInput(key=None, value=b"v" * 20, timestamp=10_000 + 10 * index + delta)
            for delta in range(3)
        ]
        log.append(build_batch(records), leader_epoch=0)
    found = log.offset_for_timestamp(10_000 + 10 * 30 + 1)
    assert found is not None and (found.offset, found.timestamp) == (91, 10_301)
    assert log.offset_for_timestamp(0).offset == 0
    assert log.offset_for_timestamp(99_999) is None


def test_recovery_cuts_a_torn_tail_and_rebuilds_indexes(memfs) -> None:
    log = open_log(memfs, LogConfig(index_interval_bytes=64))
    for index in range(10):
        log.append(batch(bytes([index]) * 30), leader_epoch=0)
    log.flush()
    for index in range(10, 20):
        log.append(batch(bytes([index]) * 30), leader_epoch=0)
    memfs.crash(random.Random(7))  # seeded so the tail is torn mid-batch
    recovered = open_log(memfs, LogConfig(index_interval_bytes=64))
    assert 10 <= recovered.log_end_offset < 20
    assert values_from(recovered) == [(i, bytes([i]) * 30) for i in range(recovered.log_end_offset)]
    recovered.append(batch(b"next"), leader_epoch=0)
    assert values_from(recovered)[-1] == (recovered.log_end_offset - 1, b"next")


def test_bit_flip_in_the_tail_is_detected_and_cut(memfs) -> None:
    log = open_log(memfs)
    for index in range(6):
        log.append(batch(bytes([index]) * 30), leader_epoch=0)
    log.close()
    segment_path = "/data/t-0/00000000000000000000.log"
    second_batch = len(batch(b"\0" * 30))
    memfs.corrupt(segment_path, second_batch + 70)
    recovered = open_log(memfs)
    assert recovered.log_end_offset == 1
    assert values_from(recovered) == [(0, b"\0" * 30)]


def test_flipped_base_offset_outside_the_crc_is_caught_by_contiguity(memfs) -> None:
    log = open_log(memfs)
    for index in range(4):
        log.append(batch(bytes([index]) * 30), leader_epoch=0)
    log.close()
    memfs.corrupt("/data/t-0/00000000000000000000.log", len(batch(b"\0" * 30)) * 2 + 7)
    assert open_log(memfs).log_end_offset == 2


def test_corrupt_index_files_are_rebuilt(memfs) -> None:
    config = LogConfig(segment_bytes=600, index_interval_bytes=64)
    log = open_log(memfs, config)
    for index in range(40):
        log.append(batch(bytes([index]) * 30), leader_epoch=0)
    log.close()
    handle = memfs.open("/data/t-0/00000000000000000000.index")
    handle.truncate(handle.size() - 3)
    handle.sync()
    reopened = open_log(memfs, config)
    assert values_from(reopened) == [(i, bytes([i]) * 30) for i in range(40)]
    assert len(reopened.segments[0].offset_index) > 0


def test_real_files_round_trip(tmp_path) -> None:
    directory = str(tmp_path / "topic-0")
    log = SegmentedLog.open(directory, SMALL, fs=OsFileSystem())
    for index in range(30):
        log.append(batch(bytes([index]) * 64), leader_epoch=index // 10)
    log.close()
    reopened = SegmentedLog.open(directory, SMALL)
    assert values_from(reopened) == [(i, bytes([i]) * 64) for i in range(30)]
    assert [(e.epoch, e.start_offset) for e in reopened.epoch_cache.entries] == [
        (0, 0),
        (1, 10),
        (2, 20),
    ]
    reopened.close()


def test_a_torn_segment_below_the_recovery_point_is_still_recovered(memfs) -> None:
    log = open_log(memfs)
    for index in range(40):
        log.append(batch(bytes([index]) * 60), leader_epoch=0)
    log.close()
    first = "/data/t-0/00000000000000000000.log"
    handle = memfs.open(first)
    handle.truncate(handle.size() - 10)  # bit rot / a lost tail in an old segment
    handle.sync()
    reopened = open_log(memfs)
    surviving = values_from(reopened)
    assert surviving == [(i, bytes([i]) * 60) for i in range(len(surviving))]
    assert len(reopened.segments) == 1
    reopened.append(batch(b"next"), leader_epoch=0)
    assert values_from(reopened)[-1] == (len(surviving), b"next")


def test_bit_rot_in_a_trusted_segment_is_caught_on_first_read(memfs) -> None:
    log = open_log(memfs)
    for index in range(40):
        log.append(batch(bytes([index]) * 60), leader_epoch=0)
    log.close()
    # Flip a record byte (inside the CRC) of the third batch of the first, trusted segment.
    memfs.corrupt("/data/t-0/00000000000000000000.log", 2 * len(batch(b"\0" * 60)) + 80)
    reopened = open_log(memfs)
    assert reopened.log_end_offset == 40  # not re-scanned at open: it was synced
    served = reopened.read_slice(0, 10_000)
    assert [h.base_offset for _, h in iter_batches(served.data)] == [0, 1]
    assert served.next_offset == 2
    with pytest.raises(CorruptSegmentError):
        reopened.read(2, 10_000)


def test_read_slice_reports_where_to_continue(memfs) -> None:
    log = open_log(memfs, LogConfig(index_interval_bytes=64))
    for index in range(30):
        log.append(batch(bytes([index]) * 40, bytes([index]) * 40), leader_epoch=0)
    offset, seen = 0, []
    while offset < log.log_end_offset:
        data, offset = log.read_slice(offset, 300)
        seen += [h.base_offset for _, h in iter_batches(data)]
    assert seen == list(range(0, 60, 2))


def test_a_full_disk_while_flushing_an_index_leaves_no_partial_entry(memfs) -> None:
    from storage.index import OFFSET_ENTRY, OffsetIndex

    memfs.makedirs("/i")
    handle = memfs.open("/i/x.index")
    index = OffsetIndex(0, handle)
    index.append(10, 100)
    index.flush()
    index.append(20, 200)
    index.append(30, 300)
    memfs.capacity_bytes = memfs.used_bytes() + 5  # room for part of one entry
    with pytest.raises(OSError):
        index.flush()
    assert handle.size() == OFFSET_ENTRY.size  # cut back to the whole entries
    memfs.capacity_bytes = None
    index.flush()
    reloaded = OffsetIndex(0, memfs.open("/i/x.index"))
    reloaded.load(log_size=1_000)
    assert reloaded.positions == [100, 200, 300]
