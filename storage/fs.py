"""The file system seam: every byte the storage layer keeps goes through here.

Two implementations share one small interface:

- `OsFileSystem`: real files through `os` calls (`pread`, `write`, `fdatasync`).
- `MemoryFileSystem`: files in memory with an explicit durability model, for the
  property tests and the deterministic simulator. A write is volatile until the file
  is synced; a directory entry (create, rename, remove) is volatile until its
  directory is synced. `crash()` throws away everything volatile and may tear the
  last unsynced write of a file (keep a prefix of it), which is what a power loss
  does to a real disk with a write-back cache. It can also run out of space
  (`capacity_bytes`) and fail a write half way, like ENOSPC does.

The interface is synchronous: the storage layer is plain code; a trio caller that
must not block moves `sync()` to a worker thread itself.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
from collections.abc import Iterator
from typing import Protocol

import attrs


class File(Protocol):
    """An open file that is appended to at its end and read by position."""

    @property
    def path(self) -> str: ...

    def size(self) -> int: ...

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data` at the end; on error the file may hold a prefix of it."""

    def read_at(self, position: int, size: int) -> bytes:
        """Up to `size` bytes from `position` (fewer only at the end of the file)."""

    def truncate(self, size: int) -> None: ...

    def sync(self) -> None:
        """Make every write so far durable (fdatasync)."""

    def close(self) -> None: ...


class FileSystem(Protocol):
    blocking_io: bool  # whether a sync waits for a device (and so belongs off the loop)

    def open(self, path: str, *, create: bool = True) -> File: ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]:
        """Entry names, sorted, so that callers never depend on directory order."""

    def makedirs(self, path: str) -> None:
        """Create a directory and its parents, durably (like mkdir -p + fsync of parents)."""

    def remove(self, path: str) -> None: ...

    def rmtree(self, path: str) -> None: ...

    def rename(self, source: str, target: str) -> None:
        """Atomically replace `target` with `source`; durable after `sync_dir`."""

    def sync_dir(self, path: str) -> None: ...

    def file_size(self, path: str) -> int: ...


# ---------------------------------------------------------------------------------
# Real files


class OsFile:
    __slots__ = ("_fd", "_path", "_size")

    def __init__(self, path: str, fd: int) -> None:
        self._path = path
        self._fd = fd
        self._size = os.fstat(fd).st_size

    @property
    def path(self) -> str:
        return self._path

    def size(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        try:
            written = os.write(self._fd, data)
            self._size += written
            if written < len(data):  # short write: finish it, or raise trying
                view = memoryview(data)[written:]
                while view:
                    written = os.write(self._fd, view)
                    self._size += written
                    view = view[written:]
        except OSError:
            # A short write followed by an error leaves a prefix on disk; the size we
            # track must still match the file so the caller can truncate it away.
            self._size = os.fstat(self._fd).st_size
            raise

    def read_at(self, position: int, size: int) -> bytes:
        return os.pread(self._fd, size, position)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileSystem:
    # A sync waits for the device: run it off the event loop.
    blocking_io = True

    def open(self, path: str, *, create: bool = True) -> OsFile:
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        return OsFile(path, os.open(path, flags, 0o644))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: str) -> None:
        missing: list[str] = []
        current = os.path.abspath(path)
        while not os.path.isdir(current):
            missing.append(current)
            current = os.path.dirname(current)
        os.makedirs(path, exist_ok=True)
        for created in reversed(missing):
            self.sync_dir(os.path.dirname(created))

    def remove(self, path: str) -> None:
        os.remove(path)

    def rmtree(self, path: str) -> None:
        for name in os.listdir(path):
            child = os.path.join(path, name)
            if os.path.isdir(child) and not os.path.islink(child):
                self.rmtree(child)
            else:
                os.remove(child)
        os.rmdir(path)

    def rename(self, source: str, target: str) -> None:
        os.replace(source, target)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def file_size(self, path: str) -> int:
        return os.path.getsize(path)


# ---------------------------------------------------------------------------------
# In-memory files with a durability model


class _Inode:
    """File content shared by every open handle and every name that points at it."""

    __slots__ = ("data", "synced_before_truncate", "synced_size")

    def __init__(self) -> None:
        self.data = bytearray()
        # Writes only append, so the durable content is `data[:synced_size]` unless a
        # truncate cut below it since the last sync: then the copy taken just before.
        self.synced_size = 0
        self.synced_before_truncate: bytes | None = None

    def durable_content(self) -> bytes:
        if self.synced_before_truncate is not None:
            return self.synced_before_truncate
        return bytes(self.data[: self.synced_size])


@attrs.define
class MemoryFileSystemStats:
    writes: int = 0
    bytes_written: int = 0
    syncs: int = 0
    dir_syncs: int = 0
    crashes: int = 0


class MemoryFile:
    __slots__ = ("_closed", "_fs", "_generation", "_inode", "_path")

    def __init__(self, fs: MemoryFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self._path = path
        self._inode = inode
        self._closed = False
        self._generation = fs.generation

    @property
    def path(self) -> str:
        return self._path

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"I/O on closed file {self._path}")
        if self._generation != self._fs.generation:
            raise OSError(errno.EIO, f"file handle from before a crash: {self._path}")

    def size(self) -> int:
        return len(self._inode.data)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        payload = bytes(data)
        allowed = self._fs.reserve_space(len(payload))
        self._inode.data += payload[:allowed]
        self._fs.stats.writes += 1
        self._fs.stats.bytes_written += allowed
        if allowed < len(payload):
            raise OSError(errno.ENOSPC, f"No space left on device: {self._path}")

    def read_at(self, position: int, size: int) -> bytes:
        self._check_open()
        return bytes(self._inode.data[position : position + size])

    def truncate(self, size: int) -> None:
        self._check_open()
        inode = self._inode
        if size < len(inode.data):
            if size < inode.synced_size and inode.synced_before_truncate is None:
                inode.synced_before_truncate = bytes(inode.data[: inode.synced_size])
            self._fs.release_space(len(inode.data) - size)
            del inode.data[size:]
        else:
            grow = size - len(inode.data)
            self._fs.reserve_space(grow, partial=False)
            inode.data += bytes(grow)

    def sync(self) -> None:
        self._check_open()
        self._fs.sync_latency_hook()
        self._inode.synced_size = len(self._inode.data)
        self._inode.synced_before_truncate = None
        self._fs.stats.syncs += 1

    def close(self) -> None:
        self._closed = True


class MemoryFileSystem:
    """An in-memory file system that loses what was never synced when it crashes.

    Durability rules (the usual POSIX reading, as ext4/XFS behave with barriers):
    - file content is durable up to its last `sync()`;
    - a directory's set of names is durable as of its last `sync_dir()`; `makedirs`
      is durable at once (directories are set up before a node runs);
    - `crash(rng)` reverts both, and for each file that had unsynced writes keeps, at
      random, a prefix of its unsynced tail (a torn write).
    Handles opened before a crash fail with EIO afterwards, like a dead process's fds.
    """

    blocking_io = False  # syncs are instant (and a worker thread would break determinism)

    def __init__(self, *, capacity_bytes: int | None = None) -> None:
        self._dirs: dict[str, dict[str, _Inode]] = {"/": {}}
        self._durable_dirs: dict[str, dict[str, _Inode]] = {"/": {}}
        # Bumped by each crash: handles from an older generation are dead.
        self.generation = 0
        self.capacity_bytes = capacity_bytes
        self.stats = MemoryFileSystemStats()

    # -- space accounting

    def used_bytes(self) -> int:
        return sum(len(inode.data) for inode in self._all_live_inodes())

    def _all_live_inodes(self) -> Iterator[_Inode]:
        seen: set[int] = set()
        for entries in self._dirs.values():
            for inode in entries.values():
                if id(inode) not in seen:
                    seen.add(id(inode))
                    yield inode

    def reserve_space(self, wanted: int, *, partial: bool = True) -> int:
        if self.capacity_bytes is None:
            return wanted
        free = max(0, self.capacity_bytes - self.used_bytes())
        if wanted <= free:
            return wanted
        if not partial:
            raise OSError(errno.ENOSPC, "No space left on device")
        return free

    def release_space(self, amount: int) -> None:
        """Space is computed from live content; nothing to track."""

    def sync_latency_hook(self) -> None:
        """Overridden by the simulator to model a slow disk; a no-op here."""

    # -- names

    @staticmethod
    def _norm(path: str) -> str:
        normalized = posixpath.normpath(posixpath.join("/", path))
        return normalized

    def _split(self, path: str) -> tuple[str, str]:
        norm = self._norm(path)
        parent, name = posixpath.split(norm)
        if parent not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, f"No such directory: {parent}")
        return parent, name

    def open(self, path: str, *, create: bool = True) -> MemoryFile:
        parent, name = self._split(path)
        entries = self._dirs[parent]
        inode = entries.get(name)
        if inode is None:
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"No such file: {path}")
            if self._norm(path) in self._dirs:
                raise IsADirectoryError(errno.EISDIR, f"Is a directory: {path}")
            inode = _Inode()
            entries[name] = inode
        return MemoryFile(self, self._norm(path), inode)

    def exists(self, path: str) -> bool:
        norm = self._norm(path)
        if norm in self._dirs:
            return True
        parent, name = posixpath.split(norm)
        return name in self._dirs.get(parent, {})

    def is_dir(self, path: str) -> bool:
        return self._norm(path) in self._dirs

    def listdir(self, path: str) -> list[str]:
        norm = self._norm(path)
        if norm not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, f"No such directory: {path}")
        names = set(self._dirs[norm])
        prefix = norm.rstrip("/") + "/"
        for directory in self._dirs:
            if directory != norm and directory.startswith(prefix):
                rest = directory[len(prefix) :]
                if "/" not in rest:
                    names.add(rest)
        return sorted(names)

    def makedirs(self, path: str) -> None:
        norm = self._norm(path)
        parts = [p for p in norm.split("/") if p]
        current = "/"
        for part in parts:
            current = posixpath.join(current, part)
            if current not in self._dirs:
                self._dirs[current] = {}
                self._durable_dirs[current] = {}

    def remove(self, path: str) -> None:
        parent, name = self._split(path)
        if name not in self._dirs[parent]:
            raise FileNotFoundError(errno.ENOENT, f"No such file: {path}")
        del self._dirs[parent][name]

    def rmtree(self, path: str) -> None:
        norm = self._norm(path)
        if norm not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, f"No such directory: {path}")
        prefix = norm.rstrip("/") + "/"
        for directory in [d for d in self._dirs if d == norm or d.startswith(prefix)]:
            del self._dirs[directory]
            del self._durable_dirs[directory]

    def rename(self, source: str, target: str) -> None:
        src_parent, src_name = self._split(source)
        dst_parent, dst_name = self._split(target)
        inode = self._dirs[src_parent].pop(src_name, None)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, f"No such file: {source}")
        self._dirs[dst_parent][dst_name] = inode

    def sync_dir(self, path: str) -> None:
        norm = self._norm(path)
        if norm not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, f"No such directory: {path}")
        self._durable_dirs[norm] = dict(self._dirs[norm])
        self.stats.dir_syncs += 1

    def file_size(self, path: str) -> int:
        parent, name = self._split(path)
        inode = self._dirs[parent].get(name)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, f"No such file: {path}")
        return len(inode.data)

    # -- faults

    def crash(self, rng: random.Random | None = None, *, tear: bool = True) -> None:
        """Lose everything not synced; with `rng`, maybe keep a torn part of the tail."""
        self.generation += 1
        self._dirs = {d: dict(entries) for d, entries in self._durable_dirs.items()}
        for inode in self._all_live_inodes():
            durable = inode.durable_content()
            torn_tail = b""
            # Only a pure append since the last sync can tear into a prefix; after a
            # truncate below the synced size the file reverts to its synced content.
            appended = len(inode.data) - inode.synced_size
            pure_append = inode.synced_before_truncate is None and appended > 0
            if tear and rng is not None and pure_append and rng.random() < 0.5:
                start = inode.synced_size
                torn_tail = bytes(inode.data[start : start + rng.randrange(appended)])
            inode.data = bytearray(durable + torn_tail)
            inode.synced_size = len(inode.data)
            inode.synced_before_truncate = None
        self.stats.crashes += 1

    def close_handles(self) -> None:
        """A process died (not the machine): its open handles are gone, its data stays.
        Later I/O through an old handle fails, as it would for a dead process."""
        self.generation += 1

    def corrupt(self, path: str, position: int, *, xor_mask: int = 0x01) -> None:
        """Flip bits of one byte in place, durably (bit rot found on restart)."""
        parent, name = self._split(path)
        inode = self._dirs[parent][name]
        inode.data[position] ^= xor_mask
        inode.synced_size = max(inode.synced_size, position + 1)
        inode.synced_before_truncate = None
