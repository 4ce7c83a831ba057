"""Sparse per-segment indexes: offset -> file position, timestamp -> offset.

Like Kafka's `.index` and `.timeindex`, an entry is added only every
`index_interval_bytes` of log data, so a lookup lands at most that far before the
batch it wants and the caller scans forward. Entries are kept in memory (lists, for
`bisect`) and appended to their file on flush; the files are a cache of what the log
itself says, so a missing, short or inconsistent index file is rebuilt from the log
rather than trusted.

Entry layouts (big-endian, as Kafka's): offset index = relative offset i32 +
position i32 (8 bytes); time index = timestamp i64 + relative offset i32 (12 bytes).
"""

from __future__ import annotations

import bisect
import struct

from storage.fs import File

OFFSET_ENTRY = struct.Struct(">iI")
TIME_ENTRY = struct.Struct(">qi")


class IndexCorruptError(ValueError):
    """An index file disagrees with itself; the caller rebuilds it from the log."""


def _append_entries(file: File, persisted_bytes: int, entries: bytes, *, sync: bool) -> None:
    """Append (and maybe sync) whole entries; on failure cut back so no partial entry stays."""
    try:
        file.append(entries)
        if sync:
            file.sync()
    except OSError:
        file.truncate(persisted_bytes)
        raise


class OffsetIndex:
    __slots__ = ("_file", "_persisted", "base_offset", "positions", "relative_offsets")

    def __init__(self, base_offset: int, file: File | None = None) -> None:
        self.base_offset = base_offset
        self.relative_offsets: list[int] = []
        self.positions: list[int] = []
        self._file = file
        self._persisted = 0

    def __len__(self) -> int:
        return len(self.positions)

    def append(self, offset: int, position: int) -> None:
        relative = offset - self.base_offset
        if self.relative_offsets and (
            relative <= self.relative_offsets[-1] or position <= self.positions[-1]
        ):
            raise AssertionError(f"offset index must grow: {offset}@{position} after last entry")
        self.relative_offsets.append(relative)
        self.positions.append(position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last entry at or before `offset`, else the start."""
        index = bisect.bisect_right(self.relative_offsets, offset - self.base_offset) - 1
        if index < 0:
            return self.base_offset, 0
        return self.base_offset + self.relative_offsets[index], self.positions[index]

    def truncate_to_offset(self, offset: int) -> None:
        """Drop entries for offsets >= `offset`."""
        keep = bisect.bisect_left(self.relative_offsets, offset - self.base_offset)
        self._truncate_entries(keep)

    def _truncate_entries(self, keep: int) -> None:
        if keep >= len(self.positions):
            return
        del self.relative_offsets[keep:]
        del self.positions[keep:]
        if self._persisted > keep:
            self._persisted = keep
            if self._file is not None:
                self._file.truncate(keep * OFFSET_ENTRY.size)

    def flush(self, *, sync: bool = True) -> None:
        if self._file is None or self._persisted == len(self.positions):
            return
        pending = range(self._persisted, len(self.positions))
        _append_entries(
            self._file,
            self._persisted * OFFSET_ENTRY.size,
            b"".join(
                OFFSET_ENTRY.pack(self.relative_offsets[i], self.positions[i]) for i in pending
            ),
            sync=sync,
        )
        self._persisted = len(self.positions)

    def reset(self) -> None:
        self.relative_offsets.clear()
        self.positions.clear()
        self._persisted = 0
        if self._file is not None:
            self._file.truncate(0)

    def load(self, log_size: int) -> None:
        """Read the index file; IndexCorruptError if it cannot describe a log of `log_size`."""
        assert self._file is not None
        data = self._file.read_at(0, self._file.size())
        if len(data) % OFFSET_ENTRY.size:
            raise IndexCorruptError(f"{self._file.path}: size {len(data)} is not a whole entry")
        last_relative, last_position = -1, -1
        for relative, position in OFFSET_ENTRY.iter_unpack(data):
            if relative <= last_relative or position <= last_position or position >= log_size:
                raise IndexCorruptError(f"{self._file.path}: entry {relative}@{position} is off")
            self.relative_offsets.append(relative)
            self.positions.append(position)
            last_relative, last_position = relative, position
        self._persisted = len(self.positions)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TimeIndex:
    __slots__ = ("_file", "_persisted", "base_offset", "relative_offsets", "timestamps")

    def __init__(self, base_offset: int, file: File | None = None) -> None:
        self.base_offset = base_offset
        self.timestamps: list[int] = []
        self.relative_offsets: list[int] = []
        self._file = file
        self._persisted = 0

    def __len__(self) -> int:
        return len(self.timestamps)

    def maybe_append(self, timestamp: int, offset: int) -> None:
        """Index `timestamp` at `offset` if it is later than anything indexed so far."""
        if self.timestamps and timestamp <= self.timestamps[-1]:
            return
        self.timestamps.append(timestamp)
        self.relative_offsets.append(offset - self.base_offset)

    def lookup(self, timestamp: int) -> int:
        """An offset from which a scan finds the first batch with max timestamp >= ts."""
        index = bisect.bisect_left(self.timestamps, timestamp) - 1
        if index < 0:
            return self.base_offset
        return self.base_offset + self.relative_offsets[index]

    def truncate_to_offset(self, offset: int) -> None:
        keep = len(self.relative_offsets)
        while keep and self.relative_offsets[keep - 1] + self.base_offset >= offset:
            keep -= 1
        if keep >= len(self.timestamps):
            return
        del self.timestamps[keep:]
        del self.relative_offsets[keep:]
        if self._persisted > keep:
            self._persisted = keep
            if self._file is not None:
                self._file.truncate(keep * TIME_ENTRY.size)

    def flush(self, *, sync: bool = True) -> None:
        if self._file is None or self._persisted == len(self.timestamps):
            return
        pending = range(self._persisted, len(self.timestamps))
        _append_entries(
            self._file,
            self._persisted * TIME_ENTRY.size,
            b"".join(
                TIME_ENTRY.pack(self.timestamps[i], self.relative_offsets[i]) for i in pending
            ),
            sync=sync,
        )
        self._persisted = len(self.timestamps)

    def reset(self) -> None:
        self.timestamps.clear()
        self.relative_offsets.clear()
        self._persisted = 0
        if self._file is not None:
            self._file.truncate(0)

    def load(self, next_offset: int) -> None:
        assert self._file is not None
        data = self._file.read_at(0, self._file.size())
        if len(data) % TIME_ENTRY.size:
            raise IndexCorruptError(f"{self._file.path}: size {len(data)} is not a whole entry")
        last_timestamp, last_relative = None, -1
        for timestamp, relative in TIME_ENTRY.iter_unpack(data):
            too_late = self.base_offset + relative >= next_offset
            if (last_timestamp is not None and timestamp <= last_timestamp) or too_late:
                raise IndexCorruptError(f"{self._file.path}: entry {timestamp}->{relative} is off")
            if relative < last_relative:
                raise IndexCorruptError(f"{self._file.path}: offsets go backwards")
            self.timestamps.append(timestamp)
            self.relative_offsets.append(relative)
            last_timestamp, last_relative = timestamp, relative
        self._persisted = len(self.timestamps)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
