"""One log segment: a `.log` file of whole record batches plus its two sparse indexes.

A segment holds the batches with offsets in [base_offset, next_offset). The file
names carry the base offset as 20 zero-padded digits, as Kafka's do, so a directory
listing sorts segments in offset order.

Batches are opaque here: the segment reads their 61-byte headers to index and to
find boundaries, and checks their CRC when recovering or serving them, but never
decodes records.
"""

from __future__ import annotations

import bisect
import contextlib
import struct

import attrs

from storage.fs import File, FileSystem
from storage.index import IndexCorruptError, OffsetIndex, TimeIndex
from storage.records import (
    BATCH_HEADER_BYTES,
    LOG_OVERHEAD_BYTES,
    BatchHeader,
    RecordBatchError,
    read_header,
    validate_batch,
)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
# Scanning reads the file in chunks this large rather than one header at a time:
# about two index intervals, so a lookup usually costs one read.
SCAN_CHUNK_BYTES = 8 * 1024
# Most reads ask for the last few batches (followers and consumers at the log end, the
# high-water mark that cuts a read): the segment keeps the locations of the batches it
# appended last, between this many and twice as many, so those reads scan no header.
# (Kafka gets the same from the page cache; here a header scan costs ~2 us a batch.)
RECENT_BATCHES_MIN = 64
NO_TIMESTAMP = -1
_BASE_OFFSET = struct.Struct(">q")
_RELATIVE_OFFSET_MAX = 2**31 - 1  # the offset index keeps i32 offsets from the base


def segment_file_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


class CorruptSegmentError(RecordBatchError):
    """A stored batch fails its checks: the replica must not serve it."""


@attrs.frozen(slots=True)
class BatchLocation:
    position: int
    header: BatchHeader


@attrs.frozen(slots=True)
class RecoveryResult:
    valid_bytes: int
    truncated_bytes: int
    batches: tuple[BatchHeader, ...]
    reason: str | None  # why the scan stopped before the end of the file


class LogSegment:
    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        base_offset: int,
        index_interval_bytes: int,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        self.log: File = fs.open(self.path(LOG_SUFFIX))
        self.offset_index = OffsetIndex(base_offset, fs.open(self.path(INDEX_SUFFIX)))
        self.time_index = TimeIndex(base_offset, fs.open(self.path(TIME_INDEX_SUFFIX)))
        self.next_offset = base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.offset_of_max_timestamp = base_offset
        # Kafka rolls by time against the first batch's timestamp, not the wall clock.
        self.rolling_timestamp = NO_TIMESTAMP
        self._bytes_since_index = 0
        self.unflushed = False
        # Bytes [0, verified_end) passed a CRC check in this process (on append or in
        # recovery); reads check the rest once. A segment trusted at open starts at 0.
        self.verified_end = 0
        # The last batches appended (or recovered) in this process, in file order, up to
        # the end of the file; their last offsets, for bisect. Empty after an open.
        self._recent: list[BatchLocation] = []
        self._recent_last_offsets: list[int] = []

    def path(self, suffix: str) -> str:
        return f"{self.directory}/{segment_file_name(self.base_offset, suffix)}"

    @property
    def size(self) -> int:
        return self.log.size()

    @property
    def is_empty(self) -> bool:
        return self.next_offset == self.base_offset

    # -- writing

    def append(
        self, data: bytes | bytearray | memoryview, located: list[tuple[int, BatchHeader]]
    ) -> None:
        """Append batches already checked and given their final offsets.

        `located` holds (position within `data`, header) pairs. On an I/O error the file
        is cut back to its previous size, so no part of `data` stays visible.
        """
        start = self.log.size()
        try:
            self.log.append(data)
        except OSError:
            # If even this fails, the caller sees the size did not come back and takes
            # the log offline.
            with contextlib.suppress(OSError):
                self.log.truncate(start)
            raise
        self.unflushed = True
        for position, header in located:
            self._track_batch(start + position, header)
        if self.verified_end == start:
            self.verified_end = self.log.size()  # the log checked every batch first

    def _track_batch(self, position: int, header: BatchHeader) -> None:
        max_timestamp = header.max_timestamp
        if self.rolling_timestamp == NO_TIMESTAMP:
            self.rolling_timestamp = max_timestamp
        if max_timestamp > self.max_timestamp:
            self.max_timestamp = max_timestamp
            self.offset_of_max_timestamp = header.last_offset
        # Position 0 needs no entry: a lookup that finds nothing starts there anyway.
        if self._bytes_since_index >= self.index_interval_bytes:
            self.offset_index.append(header.base_offset, position)
            # (running max timestamp, its offset): every record at or before that
            # offset is no later than it, which is what a timestamp lookup relies on.
            self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
            self._bytes_since_index = 0
        self._bytes_since_index += header.batch_length + LOG_OVERHEAD_BYTES
        self.next_offset = header.next_offset
        if len(self._recent) >= 2 * RECENT_BATCHES_MIN:
            del self._recent[:RECENT_BATCHES_MIN]
            del self._recent_last_offsets[:RECENT_BATCHES_MIN]
        self._recent.append(BatchLocation(position, header))
        self._recent_last_offsets.append(header.last_offset)

    def flush(self, *, sync_indexes: bool = True) -> None:
        """Sync the log; the indexes too unless told not to.

        The active segment is rebuilt from its log on every open, so its index files
        need not be durable: skipping their fsync saves two of every three per flush.
        """
        self.log.sync()
        self.offset_index.flush(sync=sync_indexes)
        self.time_index.flush(sync=sync_indexes)
        self.unflushed = False

    # -- reading

    def _headers_from(self, position: int, *, validate: bool) -> BatchLocationIterator:
        return BatchLocationIterator(self.log, position, validate=validate)

    def locate(self, offset: int) -> BatchLocation | None:
        """The first batch whose last offset is >= `offset`, or None past the end."""
        recent = self._recent
        if recent and offset >= recent[0].header.base_offset:
            last = recent[-1]
            # Only while the file ends where the last remembered batch does (it always
            # should: the file grows by `append` alone, and truncation forgets them).
            if last.position + last.header.size_bytes == self.log.size():
                index = bisect.bisect_left(self._recent_last_offsets, offset)
                return recent[index] if index < len(recent) else None
        _, position = self.offset_index.lookup(offset)
        for location in self._headers_from(position, validate=False):
            if location.header.last_offset >= offset:
                return location
        return None

    def read(self, start_offset: int, max_bytes: int, max_offset: int | None) -> tuple[bytes, int]:
        """(whole batches from the one holding `start_offset`, the offset after them).

        Stops before a batch with offsets at or past `max_offset` and before exceeding
        `max_bytes`, except that the first batch is returned even when it alone is larger
        (KIP-74), so a consumer can always make progress. The end is found from the
        sparse index, so exactly the bytes returned are read. Bytes not yet verified in
        this process are CRC-checked: a corrupt first batch raises CorruptSegmentError;
        a corrupt later one ends the answer just before it.
        """
        first = self.locate(start_offset)
        if first is None:
            return b"", start_offset
        header = first.header
        if max_offset is not None and header.last_offset >= max_offset:
            return b"", header.base_offset
        hard_end, hard_next = self.log.size(), self.next_offset
        if max_offset is not None and max_offset < self.next_offset:
            cut = self.locate(max_offset)
            if cut is not None:
                hard_end, hard_next = cut.position, cut.header.base_offset
        limit = first.position + max(max_bytes, header.size_bytes)
        if limit >= hard_end:
            end, next_offset = hard_end, hard_next
        else:
            end, next_offset = self._last_boundary_before(first, limit)
        data = self.log.read_at(first.position, end - first.position)
        if end > self.verified_end:
            data, next_offset = self._verify(first.position, data, next_offset)
        return data, next_offset

    def _last_boundary_before(self, first: BatchLocation, limit: int) -> tuple[int, int]:
        """The furthest batch boundary at or below `limit`, and the offset there."""
        end, next_offset = first.position + first.header.size_bytes, first.header.next_offset
        positions = self.offset_index.positions
        index = bisect.bisect_right(positions, limit) - 1
        if index >= 0 and positions[index] > end:
            end = positions[index]
            next_offset = self.base_offset + self.offset_index.relative_offsets[index]
        if limit - end < BATCH_HEADER_BYTES:
            return end, next_offset
        # Less than one index interval (plus a batch) remains: walk its headers.
        tail = self.log.read_at(end, limit - end)
        walked = 0
        while walked + BATCH_HEADER_BYTES <= len(tail):
            try:
                header = read_header(tail, walked)
            except RecordBatchError:
                break
            if walked + header.size_bytes > len(tail):
                break
            walked += header.size_bytes
            next_offset = header.next_offset
        return end + walked, next_offset

    def _verify(self, start: int, data: bytes, next_offset: int) -> tuple[bytes, int]:
        position = 0
        while position < len(data):
            try:
                header = validate_batch(data, position)
            except RecordBatchError as error:
                if position == 0:
                    raise CorruptSegmentError(
                        f"{self.path(LOG_SUFFIX)} position {start}: {error}"
                    ) from error
                (next_offset,) = _BASE_OFFSET.unpack_from(data, position)
                data = data[:position]
                break
            position += header.size_bytes
        if start <= self.verified_end:
            self.verified_end = max(self.verified_end, start + len(data))
        return data, next_offset

    def find_offset_by_timestamp(self, timestamp: int) -> BatchLocation | None:
        """The first batch whose max timestamp is >= `timestamp`."""
        start_offset = self.time_index.lookup(timestamp)
        _, position = self.offset_index.lookup(start_offset)
        for location in self._headers_from(position, validate=False):
            if location.header.max_timestamp >= timestamp:
                return location
        return None

    # -- recovery and truncation

    def load_indexes(self) -> bool:
        """Load the index files if they agree with the log; False means rebuild them."""
        try:
            self.offset_index.load(self.log.size())
            self.time_index.load(2**63 - 1)
            if len(self.offset_index):
                offset, position = self.offset_index.lookup(2**63 - 1)
                header = read_header(self.log.read_at(position, BATCH_HEADER_BYTES))
                if header.base_offset != offset:
                    return False
        except (IndexCorruptError, RecordBatchError):
            self.offset_index.reset()
            self.time_index.reset()
            return False
        return True

    def recover(self, *, allow_gaps: bool = False) -> RecoveryResult:
        """Scan every batch, validate length, CRC and offsets; cut at the first bad one.

        Rebuilds both indexes and the segment's offset and timestamp bookkeeping.
        Offsets must run on without gaps from the segment's base offset: the base
        offset field is outside the CRC, so this is what catches a flipped bit there.
        A compacted log's segments have gaps between batches (`allow_gaps`): there
        offsets need only grow, and stay within the index's relative range.
        """
        self.offset_index.reset()
        self.time_index.reset()
        self._reset_bookkeeping()
        iterator = self._headers_from(0, validate=True)
        batches: list[BatchHeader] = []
        valid_end = 0
        stopped_because = None
        for location in iterator:
            base_offset = location.header.base_offset
            in_order = base_offset == self.next_offset or (
                allow_gaps
                and base_offset > self.next_offset
                and location.header.last_offset - self.base_offset <= _RELATIVE_OFFSET_MAX
            )
            if not in_order:
                stopped_because = (
                    f"position {location.position}: base offset "
                    f"{location.header.base_offset}, expected {self.next_offset}"
                )
                break
            self._track_batch(location.position, location.header)
            batches.append(location.header)
            valid_end = location.position + location.header.size_bytes
        stopped_because = stopped_because or iterator.stopped_because
        truncated = self.log.size() - valid_end
        if truncated:
            self.log.truncate(valid_end)
        self.verified_end = valid_end
        # Recovered bytes may live only in the page cache; the log re-syncs them.
        self.unflushed = True
        return RecoveryResult(valid_end, truncated, tuple(batches), stopped_because)

    def rebuild_bookkeeping_from_index(self) -> bool:
        """After trusting the indexes, find next offset and max timestamp from the tail.

        False when the tail does not end on a whole batch: the caller must recover.
        """
        self._reset_bookkeeping()
        _, position = self.offset_index.lookup(2**63 - 1)
        # Timestamps before the last index entry are summarized by the time index.
        if len(self.time_index):
            self.max_timestamp = self.time_index.timestamps[-1]
            self.offset_of_max_timestamp = self.base_offset + self.time_index.relative_offsets[-1]
        first = self._headers_from(0, validate=False)
        for location in first:
            self.rolling_timestamp = location.header.max_timestamp
            break
        tail = self._headers_from(position, validate=False)
        for location in tail:
            header = location.header
            if header.max_timestamp > self.max_timestamp:
                self.max_timestamp = header.max_timestamp
                self.offset_of_max_timestamp = header.last_offset
            self.next_offset = header.next_offset
        self._bytes_since_index = self.log.size() - position
        return tail.stopped_because is None

    def _reset_bookkeeping(self) -> None:
        self._recent.clear()
        self._recent_last_offsets.clear()
        self.next_offset = self.base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.offset_of_max_timestamp = self.base_offset
        self.rolling_timestamp = NO_TIMESTAMP
        self._bytes_since_index = 0

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset is >= `offset`; return bytes removed."""
        location = self.locate(offset)
        if location is None:
            return 0
        # A batch is indivisible: one that straddles `offset` goes whole.
        removed = self.log.size() - location.position
        self.log.truncate(location.position)
        self.verified_end = min(self.verified_end, location.position)
        self.offset_index.truncate_to_offset(location.header.base_offset)
        self.time_index.truncate_to_offset(location.header.base_offset)
        self.unflushed = True
        if location.position == 0:
            self._reset_bookkeeping()
        else:
            whole = self.rebuild_bookkeeping_from_index()
            assert whole, f"{self.path(LOG_SUFFIX)}: truncation left a partial batch"
        return removed

    def close(self) -> None:
        self.log.close()
        self.offset_index.close()
        self.time_index.close()

    def delete(self) -> None:
        self.close()
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            path = self.path(suffix)
            if self.fs.exists(path):
                self.fs.remove(path)


class BatchLocationIterator:
    """Walks batch headers from a file position, reading the file in large chunks.

    Stops quietly at a clean end of file. At a partial or corrupt batch it stops too
    and says why in `stopped_because`, leaving `position` at that batch, so recovery
    can cut the file there and readers can refuse to serve past it.
    """

    def __init__(self, file: File, position: int, *, validate: bool) -> None:
        self._file = file
        self._validate = validate
        self.position = position
        self.valid_end = position
        self.stopped_because: str | None = None
        self._buffer = b""
        self._buffer_start = position

    def __iter__(self) -> BatchLocationIterator:
        return self

    def __next__(self) -> BatchLocation:
        file_size = self._file.size()
        if self.position >= file_size:
            raise StopIteration
        header_bytes = self._view(self.position, BATCH_HEADER_BYTES)
        try:
            header = read_header(header_bytes)
            if self.position + header.size_bytes > file_size:
                raise RecordBatchError(
                    f"batch needs {header.size_bytes} bytes, {file_size - self.position} remain"
                )
            if self._validate:
                validate_batch(self._view(self.position, header.size_bytes))
        except RecordBatchError as error:
            self.stopped_because = f"position {self.position}: {error}"
            raise StopIteration from None
        location = BatchLocation(self.position, header)
        self.position += header.size_bytes
        self.valid_end = self.position
        return location

    def _view(self, position: int, size: int) -> bytes:
        offset = position - self._buffer_start
        if offset < 0 or offset + size > len(self._buffer):
            self._buffer = self._file.read_at(position, max(size, SCAN_CHUNK_BYTES))
            self._buffer_start = position
            offset = 0
        return self._buffer[offset : offset + size]
