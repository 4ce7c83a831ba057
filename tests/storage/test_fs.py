"""The in-memory file system's durability model, and the OS one on the same contract."""

from __future__ import annotations

import errno
import random

import pytest

from storage.checkpoint import (
    CheckpointError,
    read_offset_file,
    write_atomically,
    write_offset_file,
)
from storage.fs import FileSystem, MemoryFileSystem, OsFileSystem


@pytest.fixture(params=["memory", "os"])
def fs_and_root(request: pytest.FixtureRequest, tmp_path) -> tuple[FileSystem, str]:
    if request.param == "memory":
        return MemoryFileSystem(), "/root"
    return OsFileSystem(), str(tmp_path)


def test_append_read_truncate_contract(fs_and_root: tuple[FileSystem, str]) -> None:
    fs, root = fs_and_root
    fs.makedirs(f"{root}/a/b")
    handle = fs.open(f"{root}/a/b/file")
    handle.append(b"hello ")
    handle.append(memoryview(b"world"))
    assert handle.size() == 11
    assert handle.read_at(6, 100) == b"world"
    handle.truncate(5)
    handle.append(b"!")
    assert handle.read_at(0, 100) == b"hello!"
    handle.sync()
    handle.close()
    assert fs.file_size(f"{root}/a/b/file") == 6
    assert fs.listdir(f"{root}/a") == ["b"]
    fs.rename(f"{root}/a/b/file", f"{root}/a/b/renamed")
    assert fs.listdir(f"{root}/a/b") == ["renamed"]
    fs.remove(f"{root}/a/b/renamed")
    assert not fs.exists(f"{root}/a/b/renamed")
    fs.rmtree(f"{root}/a")
    assert not fs.exists(f"{root}/a")


def test_crash_loses_unsynced_writes_and_unsynced_names() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    durable = fs.open("/d/durable")
    durable.append(b"kept")
    durable.sync()
    fs.sync_dir("/d")
    durable.append(b" lost")
    volatile = fs.open("/d/volatile")
    volatile.append(b"never named durably")
    volatile.sync()
    fs.crash(tear=False)
    assert fs.listdir("/d") == ["durable"]
    reopened = fs.open("/d/durable")
    assert reopened.read_at(0, 100) == b"kept"
    with pytest.raises(OSError) as raised:
        durable.append(b"x")
    assert raised.value.errno == errno.EIO


def test_crash_may_tear_an_unsynced_append_to_a_prefix() -> None:
    torn_lengths = set()
    for seed in range(40):
        fs = MemoryFileSystem()
        fs.makedirs("/d")
        handle = fs.open("/d/f")
        handle.append(b"base")
        handle.sync()
        fs.sync_dir("/d")
        handle.append(b"0123456789")
        fs.crash(random.Random(seed))
        content = fs.open("/d/f").read_at(0, 100)
        assert (b"base0123456789").startswith(content) and content.startswith(b"base")
        torn_lengths.add(len(content))
    assert len(torn_lengths) > 2, "tears should keep prefixes of varying length"


def test_unsynced_truncate_reverts_on_crash() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    handle = fs.open("/d/f")
    handle.append(b"abcdef")
    handle.sync()
    fs.sync_dir("/d")
    handle.truncate(2)
    handle.append(b"XY")
    fs.crash(random.Random(1))
    assert fs.open("/d/f").read_at(0, 100) == b"abcdef"


def test_full_disk_writes_a_prefix_then_fails() -> None:
    fs = MemoryFileSystem(capacity_bytes=10)
    fs.makedirs("/d")
    handle = fs.open("/d/f")
    handle.append(b"12345678")
    with pytest.raises(OSError) as raised:
        handle.append(b"abcd")
    assert raised.value.errno == errno.ENOSPC
    assert handle.read_at(0, 100) == b"12345678ab"


def test_atomic_checkpoint_survives_crash_whole_or_not_at_all(fs_and_root) -> None:
    fs, root = fs_and_root
    fs.makedirs(root)
    path = f"{root}/offset"
    write_offset_file(fs, path, 41)
    write_offset_file(fs, path, 42)
    assert read_offset_file(fs, path) == 42
    write_atomically(fs, path, b"garbage")
    with pytest.raises(CheckpointError):
        read_offset_file(fs, path)
    if isinstance(fs, MemoryFileSystem):
        write_offset_file(fs, path, 7)
        fs.crash(random.Random(3))
        assert read_offset_file(fs, path) == 7
