"""ListOffsets' max timestamp (KIP-734) on the log: the segments' maxima name the
segment, one batch is read, and the answer is the first record with the largest
timestamp, as a scan of every record finds it."""

from __future__ import annotations

import random

from storage.fs import MemoryFileSystem
from storage.log import LogConfig, OffsetAndTimestamp, SegmentedLog
from storage.records import RecordInput, build_batch, iter_batches, iter_records

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=128)
SEEDS = 40


def scanned(log: SegmentedLog) -> OffsetAndTimestamp | None:
    best: OffsetAndTimestamp | None = None
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 20)
        for position, header in iter_batches(data):
            for record in iter_records(data[position : position + header.size_bytes]):
                if record.offset >= offset and (best is None or record.timestamp > best.timestamp):
                    best = OffsetAndTimestamp(record.offset, record.timestamp)
            offset = header.next_offset
    return best


def test_the_first_record_with_the_largest_timestamp_across_segments() -> None:
    segmented = 0
    for seed in range(SEEDS):
        rng = random.Random(seed)
        log = SegmentedLog.open("/data/t-0", SMALL, fs=MemoryFileSystem())
        assert log.max_timestamp_record() is None  # empty
        for _ in range(rng.randrange(1, 60)):
            # Few distinct timestamps: ties, within a batch and across segments.
            records = [
                RecordInput(value=b"v" * 20, timestamp=1_000 + rng.randrange(8) * 100)
                for _ in range(rng.randrange(1, 6))
            ]
            log.append(build_batch(records), leader_epoch=0)
        segmented += len(log.segments) > 1
        assert log.max_timestamp_record() == scanned(log), seed
    assert segmented >= SEEDS // 2


def test_a_reopened_log_answers_from_its_rebuilt_segment_maxima() -> None:
    fs = MemoryFileSystem()
    log = SegmentedLog.open("/data/t-0", SMALL, fs=fs)
    stamps = [5_000, 1_000, 9_000, 2_000, 9_000, 3_000] * 8
    for stamp in stamps:
        log.append(build_batch([RecordInput(value=b"x" * 40, timestamp=stamp)]), leader_epoch=0)
    assert log.max_timestamp_record() == OffsetAndTimestamp(2, 9_000)
    log.flush()
    log.close()
    reopened = SegmentedLog.open("/data/t-0", SMALL, fs=fs)
    assert reopened.max_timestamp_record() == OffsetAndTimestamp(2, 9_000)
