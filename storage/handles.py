"""A bound on open file handles: files are opened on use and the least recently used
are closed again when the bound is reached.

A broker holds three files per log segment, and a log may have many segments (small
`segment.bytes` or `segment.ms`, or a producer that forces rolls): without a bound a
busy broker runs out of descriptors and then fails to accept connections. Closed files
reopen on their next use, so only the cost of an open moves; the active segment of a
busy log is always among the recently used. A file pinned (being synced in a worker
thread) is never closed under it.
"""

from __future__ import annotations

import collections
import resource

from storage.fs import File, FileSystem

# The share of this process's descriptor limit that log files may hold; the rest is
# for connections, the metadata log and everything else.
LOG_FILES_SHARE = 0.5
HANDLES_MIN = 64


def handle_budget() -> int:
    """How many log files may be open at once, from the process's RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(HANDLES_MIN, int(soft * LOG_FILES_SHARE))


def raise_descriptor_limit() -> int:
    """Lift the soft descriptor limit to the hard one (what Kafka's docs ask of an
    operator); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class HandleLimitedFileSystem:
    """`fs`, with at most `max_open` of the files opened through it open at once."""

    def __init__(self, fs: FileSystem, max_open: int) -> None:
        assert max_open >= 1
        self.fs = fs
        self.max_open = max_open
        self.blocking_io = fs.blocking_io
        self.reopens = 0
        # Open files, least recently used first.
        self._open: collections.OrderedDict[CachedFile, File] = collections.OrderedDict()

    # -- the handles

    def _acquire(self, file: CachedFile) -> File:
        raw = self._open.get(file)
        if raw is not None:
            self._open.move_to_end(file)
            return raw
        self._make_room()
        raw = self.fs.open(file.path, create=False)
        self.reopens += 1
        self._open[file] = raw
        return raw

    def _make_room(self) -> None:
        excess = len(self._open) - self.max_open + 1
        if excess <= 0:
            return
        # The least recently used first, and no further than needed: copying the
        # whole table on every open cost a broker with more log files than handles
        # (10,000 partitions) most of its time on appends.
        victims = []
        for victim in self._open:
            if not victim.pins:
                victims.append(victim)
                if len(victims) == excess:
                    break
        for victim in victims:
            self._open.pop(victim).close()

    def _release(self, file: CachedFile) -> None:
        if file.pins:
            return  # closed once the sync under way unpins it
        raw = self._open.pop(file, None)
        if raw is not None:
            raw.close()

    @property
    def open_count(self) -> int:
        return len(self._open)

    # -- FileSystem

    def open(self, path: str, *, create: bool = True) -> CachedFile:
        self._make_room()
        raw = self.fs.open(path, create=create)
        file = CachedFile(self, path, raw.size())
        self._open[file] = raw
        return file

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.fs.is_dir(path)

    def listdir(self, path: str) -> list[str]:
        return self.fs.listdir(path)

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path)

    def remove(self, path: str) -> None:
        self.fs.remove(path)

    def rmtree(self, path: str) -> None:
        self.fs.rmtree(path)

    def rename(self, source: str, target: str) -> None:
        self.fs.rename(source, target)

    def sync_dir(self, path: str) -> None:
        self.fs.sync_dir(path)

    def file_size(self, path: str) -> int:
        return self.fs.file_size(path)


class CachedFile:
    """A File whose handle may be closed between uses and reopened on the next."""

    __slots__ = ("_closed", "_fs", "_path", "_size", "pins")

    def __init__(self, fs: HandleLimitedFileSystem, path: str, size: int) -> None:
        self._fs = fs
        self._path = path
        self._size = size  # kept here, so a closed file still knows it
        self._closed = False
        self.pins = 0

    @property
    def path(self) -> str:
        return self._path

    def _raw(self) -> File:
        if self._closed:
            raise OSError(9, f"{self._path} is closed")  # EBADF, as a closed fd gives
        return self._fs._acquire(self)

    def size(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        raw = self._raw()
        try:
            raw.append(data)
        finally:
            self._size = raw.size()

    def read_at(self, position: int, size: int) -> bytes:
        return self._raw().read_at(position, size)

    def truncate(self, size: int) -> None:
        self._raw().truncate(size)
        self._size = size

    def sync(self) -> None:
        self._raw().sync()

    def pin(self) -> File:
        """The open handle, kept open until `unpin` (a sync in a worker thread)."""
        raw = self._raw()
        self.pins += 1
        return raw

    def unpin(self) -> None:
        self.pins -= 1
        if not self.pins and self._closed:
            self._fs._release(self)

    def close(self) -> None:
        self._closed = True
        self._fs._release(self)
