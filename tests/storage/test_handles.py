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


def test_the_least_recently_used_unpinned_file_is_the_one_closed() -> None:
    fs = HandleLimitedFileSystem(MemoryFileSystem(), max_open=3)
    fs.makedirs("/d")
    a, b, c = (fs.open(f"/d/{name}") for name in "abc")
    a.append(b"x")  # a is now the most recently used; b the least
    reopens = fs.reopens
    d = fs.open("/d/d")
    assert fs.open_count == 3
    a.append(b"x")
    c.append(b"x")
    d.append(b"x")
    assert fs.reopens == reopens  # a, c and d were still open: b was closed
    b.append(b"x")  # reopened, closing the least recently used: a
    assert fs.reopens == reopens + 1 and fs.open_count == 3
    raw = c.pin()
    d.append(b"x")
    b.append(b"x")  # c is now the least recently used, but pinned
    reopens = fs.reopens
    e = fs.open("/d/e")
    assert fs.open_count == 3
    raw.sync()  # still open
    c.unpin()
    e.append(b"x")
    b.append(b"x")
    c.append(b"x")
    assert fs.reopens == reopens  # d went instead of c
    d.append(b"x")
    assert fs.reopens == reopens + 1
