"""The bound on open log files (issue 14, finding 3): a log with many segments works
the same within a handful of handles."""

from __future__ import annotations

import random

from storage.fs import MemoryFileSystem, OsFileSystem
from storage.handles import HandleLimitedFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch, iter_batches


def batch(i: int) -> bytes:
    return build_batch([RecordInput(timestamp=i, key=None, value=b"v%05d" % i)])


def values(data: bytes) -> int:
    return sum(1 for _ in iter_batches(data))


def test_a_log_of_many_segments_stays_within_its_handles(tmp_path) -> None:
    fs = HandleLimitedFileSystem(OsFileSystem(), max_open=4)
    config = LogConfig(segment_bytes=200)  # a segment per batch or two
    log = SegmentedLog.open(str(tmp_path / "t-0"), config, fs=fs)
    for i in range(100):
        log.append(batch(i), leader_epoch=0)
        assert fs.open_count <= 4
    assert len(list(tmp_path.joinpath("t-0").glob("*.log"))) > 30
    rng = random.Random(1)
    for _ in range(200):  # reads all over the log reopen what they need
        offset = rng.randrange(100)
        data = log.read(offset, max_bytes=1000)
        assert values(data) >= 1 and fs.open_count <= 4
    log.truncate_to(50)
    log.append(batch(50), leader_epoch=1)
    log.close()
    assert fs.open_count == 0 and fs.reopens > 0
    reopened = SegmentedLog.open(str(tmp_path / "t-0"), config, fs=fs)
    assert reopened.log_end_offset == 51
    reopened.close()


def test_a_pinned_file_is_never_closed_under_a_sync() -> None:
    fs = HandleLimitedFileSystem(MemoryFileSystem(), max_open=1)
    fs.makedirs("/d")
    first = fs.open("/d/a")
    raw = first.pin()
    second = fs.open("/d/b")  # over the bound, but `first` is pinned
    second.append(b"x")
    raw.sync()  # still open
    first.close()  # while pinned: closed only at the unpin
    raw.sync()
    first.unpin()
    assert fs.open_count == 1  # only `second`
