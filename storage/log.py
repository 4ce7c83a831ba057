"""The segmented, append-only log shared by data partitions and the Raft metadata log.

A log directory holds segments (`<20-digit base offset>.log/.index/.timeindex`), a
`leader-epoch-checkpoint`, a `recovery-point` and a `log-start-offset` file. Batches
are kept as the producer encoded them; the leader only patches base offset and
partition leader epoch into their headers, which the CRC does not cover.

Durability contract:
- `append*` writes to the file system's cache; `flush()` makes everything appended so
  far durable. Callers decide when (per batch for Raft, by policy for data).
- A segment is synced before the next one is created (`roll`), so after any crash the
  surviving log is a prefix of what was appended: never a hole in the middle.
- Truncation, retention and log-start moves are durable when the call returns: a
  removed tail must not come back after a crash and be served as if it were agreed.
- `recovery-point` names the first segment that may hold unsynced data. Opening a
  log re-validates (length, CRC, contiguous offsets) every batch from that segment
  on, cuts the log at the first bad one, rebuilds indexes, and re-syncs the result.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from typing import NamedTuple

import attrs

from storage.checkpoint import CheckpointError, read_offset_file, write_offset_file
from storage.fs import File, FileSystem, OsFileSystem
from storage.handles import CachedFile
from storage.leader_epoch import LeaderEpochCache
from storage.records import (
    BatchHeader,
    RecordBatchError,
    iter_batches,
    iter_records,
    patch_base_offset,
    patch_partition_leader_epoch,
    validate_batch,
)
from storage.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    CorruptSegmentError,
    LogSegment,
)
from storage.swap import cleaned_path, finish_interrupted_swaps, swap_path

log = logging.getLogger(__name__)

RECOVERY_POINT_FILE = "recovery-point"
LOG_START_OFFSET_FILE = "log-start-offset"
MAX_RELATIVE_OFFSET = 2**31 - 1
DAY_MS = 24 * 3600 * 1000


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _minus_one_or_more(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < -1:
        raise ValueError(f"{attribute.name} must be -1 (unlimited) or >= 0, got {value}")


@attrs.frozen(kw_only=True)
class LogConfig:
    """Per-log settings; defaults are Kafka's broker defaults, in snake_case."""

    segment_bytes: int = attrs.field(default=1 << 30, validator=_positive)  # log.segment.bytes
    segment_ms: int = attrs.field(default=7 * DAY_MS, validator=_positive)  # log.roll.hours=168
    retention_ms: int = attrs.field(default=7 * DAY_MS, validator=_minus_one_or_more)
    retention_bytes: int = attrs.field(default=-1, validator=_minus_one_or_more)
    index_interval_bytes: int = attrs.field(default=4096, validator=_positive)
    max_message_bytes: int = attrs.field(default=1048588, validator=_positive)  # message.max.bytes
    # flush.messages / flush.ms: Kafka's defaults never flush by count or time and rely
    # on replication; flush_messages=1 means fsync every append before it is
    # acknowledged. The broker carries the policy out (group-committed, off its event
    # loop); the log only counts what is not yet durable.
    flush_messages: int | None = None
    flush_ms: int | None = None
    # A compacted topic's log (cleanup.policy includes compact, now or once) has gaps
    # between batches: the cleaner drops whole batches, and a follower copies the
    # leader's cleaned batches as they are. Kafka accepts such gaps everywhere; here
    # the log of a never-compacted topic keeps refusing them, since a gap there means
    # a bug or a flipped base offset (which the CRC does not cover).
    allow_offset_gaps: bool = False


@attrs.frozen
class PendingFlush:
    """A flush prepared by `SegmentedLog.prepare_flush`: sync `file`, then complete it."""

    file: File
    end_offset: int  # everything below it is durable once `file` is synced
    records: int
    generation: int
    pinned: CachedFile | None = None

    def release(self) -> None:
        if self.pinned is not None:
            self.pinned.unpin()


class LogError(Exception):
    """Base class of the log's refusals; the log is unchanged when one is raised."""


class OffsetOutOfRangeError(LogError):
    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is outside the log's range [{log_start_offset}, {log_end_offset}]"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class NonContiguousOffsetError(LogError):
    """A follower append that does not start at, or run on from, the log end."""


class InvalidTruncationError(LogError):
    """Truncation below the log start offset."""


class RecordTooLargeError(LogError):
    """A batch larger than max_message_bytes or than a whole segment."""


class InvalidLeaderEpochError(LogError):
    """An append stamped with a leader epoch older than one the log already holds."""


class LogClosedError(LogError):
    pass


class LogStorageError(LogError):
    """The disk refused a write (ENOSPC, EIO); nothing of the append is visible."""


class AppendInfo(NamedTuple):
    """What an append wrote (a NamedTuple: one is made per produce request)."""

    first_offset: int
    last_offset: int
    max_timestamp: int
    offset_of_max_timestamp: int
    batch_count: int
    record_count: int
    size_bytes: int


class LogSlice(NamedTuple):
    data: bytes
    next_offset: int  # where the following read starts (start offset if data is empty)


@attrs.frozen(slots=True)
class OffsetAndTimestamp:
    offset: int
    timestamp: int


class SegmentedLog:
    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        config: LogConfig,
        segments: list[LogSegment],
        log_start_offset: int,
        epoch_cache: LeaderEpochCache,
    ) -> None:
        assert segments, "a log always has an active segment"
        self.fs = fs
        self.directory = directory
        self.config = config
        self._segments = segments
        self._base_offsets = [segment.base_offset for segment in segments]
        self._log_start_offset = log_start_offset
        self.epoch_cache = epoch_cache
        self._unflushed_records = 0
        self._dir_dirty = False
        self._closed = False
        self._offline_reason: str | None = None
        # Offsets below it are synced. A truncation bumps the generation, so a flush
        # prepared before it never vouches for what was written after it.
        self.durable_end_offset = segments[-1].next_offset
        self._truncations = 0
        # Called with the new active segment's base offset after each roll, once the
        # segments below it are synced (the partition snapshots its producer state).
        self.on_roll: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, directory: str, config: LogConfig | None = None, *, fs: FileSystem | None = None
    ) -> SegmentedLog:
        """Open (creating if needed) the log in `directory`, recovering it if it crashed."""
        fs = fs if fs is not None else OsFileSystem()
        config = config if config is not None else LogConfig()
        fs.makedirs(directory)
        recovery_point = _read_offset_or(fs, f"{directory}/{RECOVERY_POINT_FILE}", 0)
        stored_start = _read_offset_or(fs, f"{directory}/{LOG_START_OFFSET_FILE}", None)
        try:
            epoch_cache = LeaderEpochCache.load(fs, directory)
        except CheckpointError as error:
            log.warning("%s: %s; rebuilding the leader epoch cache from batches", directory, error)
            fs.remove(f"{directory}/leader-epoch-checkpoint")
            epoch_cache = LeaderEpochCache.load(fs, directory)
            recovery_point = 0

        # A cleaning interrupted after its swap file became durable is carried through
        # (before, it never happened): the swapped segment's indexes are rebuilt.
        swapped = finish_interrupted_swaps(fs, directory)
        segments, recovered = _load_segments(fs, directory, config, recovery_point, swapped)
        if not segments:
            base = stored_start if stored_start is not None else 0
            segments = [LogSegment(fs, directory, base, config.index_interval_bytes)]
        log_start = max(stored_start or 0, segments[0].base_offset)
        self = cls(fs, directory, config, segments, log_start, epoch_cache)
        # The checkpoint may name epochs whose batches a crash took away, and may miss
        # epochs of batches that survived: trust the batches.
        epoch_cache.truncate_from_end(self.log_end_offset)
        for header in recovered:
            if header.partition_leader_epoch > epoch_cache.latest_epoch():
                epoch_cache.assign(header.partition_leader_epoch, header.base_offset)
        epoch_cache.truncate_from_start(log_start)
        # What recovery kept may sit only in the page cache (a process crash, not a
        # power loss): make it durable before anyone counts it as written.
        for segment in segments:
            if segment.unflushed:
                segment.flush()
        fs.sync_dir(directory)
        self._write_recovery_point()
        if self.log_end_offset < log_start:
            # Only a lost tail can leave the start past the end; Kafka restarts the log
            # empty at its start offset and lets replication refill it.
            log.warning(
                "%s: log end %d below log start %d after recovery",
                directory,
                self.log_end_offset,
                log_start,
            )
            self.truncate_fully_and_start_at(log_start)
        return self

    # ------------------------------------------------------------------ state

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def active_segment(self) -> LogSegment:
        return self._segments[-1]

    @property
    def segments(self) -> tuple[LogSegment, ...]:
        return tuple(self._segments)

    def size_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    def latest_epoch(self) -> int:
        return self.epoch_cache.latest_epoch()

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """(epoch, end offset) as KIP-279's OffsetsForLeaderEpoch answers it."""
        answer = self.epoch_cache.end_offset_for(epoch, self.log_end_offset)
        return answer.epoch, answer.end_offset

    # ------------------------------------------------------------------ appending

    def append(self, batches: bytes | bytearray | memoryview, leader_epoch: int) -> AppendInfo:
        """Append as the leader: assign offsets from the log end and stamp `leader_epoch`."""
        self._check_open()
        latest_epoch = self.epoch_cache.latest_epoch()
        if leader_epoch < latest_epoch:
            raise InvalidLeaderEpochError(
                f"append with leader epoch {leader_epoch} after epoch {latest_epoch} "
                f"in {self.directory}"
            )
        buffer = bytearray(batches)
        located = self._validate(buffer, max_batch_bytes=self.config.max_message_bytes)
        next_offset = self._segments[-1].next_offset
        patched: list[tuple[int, BatchHeader]] = []
        for position, header in located:
            patch_base_offset(buffer, position, next_offset)
            patch_partition_leader_epoch(buffer, position, leader_epoch)
            header = header.rebased(next_offset, leader_epoch)
            patched.append((position, header))
            next_offset = header.next_offset
        info = self._write(buffer, patched)
        if leader_epoch > latest_epoch:
            self.epoch_cache.assign(leader_epoch, info.first_offset)
        return info

    def append_as_follower(self, batches: bytes | bytearray | memoryview) -> AppendInfo:
        """Append batches that already carry offsets and epochs (replication)."""
        self._check_open()
        located = self._validate(batches, max_batch_bytes=self.config.segment_bytes)
        expected = self.log_end_offset
        gaps = self.config.allow_offset_gaps
        for _, header in located:
            if header.base_offset != expected and not (gaps and header.base_offset > expected):
                raise NonContiguousOffsetError(
                    f"{self.directory}: batch at offset {header.base_offset} "
                    f"does not follow the log end {expected}"
                )
            expected = header.next_offset
        info = self._write(batches, located)
        for _, header in located:
            if header.partition_leader_epoch > self.epoch_cache.latest_epoch():
                self.epoch_cache.assign(header.partition_leader_epoch, header.base_offset)
        return info

    def _validate(
        self, batches: bytes | bytearray | memoryview, *, max_batch_bytes: int
    ) -> list[tuple[int, BatchHeader]]:
        """Check every batch before anything is written: all are taken, or none."""
        if not len(batches):
            raise RecordBatchError("empty append: no record batch given")
        first = validate_batch(batches, 0)
        if first.size_bytes == len(batches):
            located = [(0, first)]  # the usual case: one batch per partition per request
        else:
            located = list(iter_batches(batches, validate=True))
        limit = min(max_batch_bytes, self.config.segment_bytes)
        for position, header in located:
            if header.size_bytes > limit:
                raise RecordTooLargeError(
                    f"batch of {header.size_bytes} bytes exceeds the limit of {limit} bytes"
                )
            if header.record_count <= 0 and not header.is_control:
                raise RecordBatchError(f"batch at position {position} has no records")
        return located

    def _write(
        self, data: bytes | bytearray | memoryview, located: list[tuple[int, BatchHeader]]
    ) -> AppendInfo:
        first = located[0][1]
        last = located[-1][1]
        max_header = first
        record_count = first.record_count
        for _, header in located[1:]:
            record_count += header.record_count
            if header.max_timestamp > max_header.max_timestamp:
                max_header = header
        try:
            self._maybe_roll(len(data), first, last)
        except OSError as error:
            raise LogStorageError(f"{self.directory}: rolling a segment failed: {error}") from error
        segment = self._segments[-1]
        size_before = segment.size
        try:
            segment.append(data, located)
        except OSError as error:
            if segment.size != size_before:
                # Part of the write is still there and could not be cut away: serving
                # from this log could expose half a batch, so it goes offline.
                self._offline_reason = f"{error}; tail could not be removed"
            raise LogStorageError(f"{self.directory}: append failed: {error}") from error
        info = AppendInfo(
            first.base_offset,
            last.last_offset,
            max_header.max_timestamp,
            max_header.last_offset,
            len(located),
            record_count,
            len(data),
        )
        self._unflushed_records += record_count
        return info

    def _maybe_roll(self, size: int, first: BatchHeader, last: BatchHeader) -> None:
        active = self._segments[-1]
        if active.next_offset == active.base_offset:
            return
        config = self.config
        too_big = active.log.size() + size > config.segment_bytes
        rolling_timestamp = active.rolling_timestamp
        too_old = rolling_timestamp >= 0 and first.max_timestamp - rolling_timestamp > (
            config.segment_ms
        )
        offsets_overflow = last.base_offset + last.last_offset_delta - active.base_offset > (
            MAX_RELATIVE_OFFSET
        )
        if too_big or too_old or offsets_overflow:
            self.roll()

    def roll(self) -> None:
        """Start a new active segment at the log end (no-op when the active one is empty)."""
        self._check_open()
        active = self.active_segment
        if active.is_empty:
            return
        active.flush()
        segment = LogSegment(
            self.fs, self.directory, self.log_end_offset, self.config.index_interval_bytes
        )
        self._segments.append(segment)
        self._base_offsets.append(segment.base_offset)
        # Syncs the directory too, so the new segment's files are durable names.
        self._write_recovery_point()
        if self.on_roll is not None:
            self.on_roll(segment.base_offset)

    # ------------------------------------------------------------------ compaction hooks

    def inactive_segments(self) -> tuple[LogSegment, ...]:
        """Every segment but the active one: what a cleaner may rewrite."""
        return tuple(self._segments[:-1])

    def replace_segments(self, old: list[LogSegment], cleaned: str) -> LogSegment:
        """Swap a run of inactive segments for the one whose batches the file `cleaned`
        holds (written and synced under `swap.cleaned_path(directory, old[0].base)`).

        Kafka's protocol: the cleaned file is renamed to a swap name that records the
        run's offset range (the commit point: from then on, opening the log finishes
        the swap), the old segments are removed, then the swap takes the first one's
        name. Each step is made durable before the next, so a crash at any point
        leaves the log as it was or as cleaned, never both halves at once.
        """
        self._check_open()
        assert self.config.allow_offset_gaps, f"{self.directory}: cleaning a gapless log"
        assert old, "nothing to replace"
        first = self._segments.index(old[0])
        assert self._segments[first : first + len(old)] == old, "not a run of this log"
        assert first + len(old) < len(self._segments), "the active segment is never replaced"
        base = old[0].base_offset
        end = self._segments[first + len(old)].base_offset
        assert cleaned == cleaned_path(self.directory, base), cleaned
        swap = swap_path(self.directory, base, end)
        self.fs.sync_dir(self.directory)
        self.fs.rename(cleaned, swap)
        self.fs.sync_dir(self.directory)
        for segment in old:
            segment.delete()
        self.fs.sync_dir(self.directory)
        self.fs.rename(swap, f"{self.directory}/{base:020d}{LOG_SUFFIX}")
        replacement = LogSegment(self.fs, self.directory, base, self.config.index_interval_bytes)
        result = replacement.recover(allow_gaps=True)
        # The cleaner wrote whole, checked batches; recovery cutting one is a bug.
        assert result.reason is None, f"{self.directory}: cleaned segment {base}: {result.reason}"
        replacement.flush()
        self.fs.sync_dir(self.directory)
        self._segments[first : first + len(old)] = [replacement]
        self._base_offsets[first : first + len(old)] = [base]
        return replacement

    # ------------------------------------------------------------------ reading

    def read(self, start_offset: int, max_bytes: int, max_offset: int | None = None) -> bytes:
        """Whole batches from the one holding `start_offset`, up to `max_bytes`.

        `max_offset` (exclusive), e.g. the high-water mark, hides batches that reach it.
        At least one batch comes back when one is readable, even if larger than
        `max_bytes` (KIP-74). Reads stay within one segment, as Kafka's do; the next
        read continues in the next segment.
        """
        return self.read_slice(start_offset, max_bytes, max_offset).data

    def read_slice(
        self, start_offset: int, max_bytes: int, max_offset: int | None = None
    ) -> LogSlice:
        """Like `read`, with the offset to read from next (no header walk needed)."""
        self._check_open()
        if start_offset < self._log_start_offset or start_offset > self.log_end_offset:
            raise OffsetOutOfRangeError(start_offset, self._log_start_offset, self.log_end_offset)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        index = self._segment_index_for(start_offset)
        for segment in self._segments[index:]:
            if max_offset is not None and segment.base_offset >= max_offset:
                break
            data, next_offset = segment.read(start_offset, max_bytes, max_offset)
            if data:
                return LogSlice(data, next_offset)
            # An empty segment (the cleaner removed all it held) is read across.
            if segment.next_offset > start_offset and not segment.is_empty:
                break
        return LogSlice(b"", start_offset)

    def locate_batch(self, offset: int) -> BatchHeader | None:
        """Header of the batch holding `offset` (or the first after it), if any."""
        for segment in self._segments[self._segment_index_for(offset) :]:
            location = segment.locate(offset)
            if location is not None:
                return location.header
        return None

    def _segment_index_for(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self._base_offsets, offset) - 1)

    def offset_for_timestamp(self, timestamp: int) -> OffsetAndTimestamp | None:
        """The first record with timestamp >= `timestamp` (ListOffsets by time)."""
        self._check_open()
        for segment in self._segments:
            if segment.max_timestamp < timestamp:
                continue
            location = segment.find_offset_by_timestamp(timestamp)
            if location is None:
                continue
            batch = segment.log.read_at(location.position, location.header.size_bytes)
            for record in iter_records(batch):
                if record.timestamp >= timestamp and record.offset >= self._log_start_offset:
                    return OffsetAndTimestamp(record.offset, record.timestamp)
        return None

    def max_timestamp_record(self) -> OffsetAndTimestamp | None:
        """The first record with the largest timestamp (ListOffsets -3, KIP-734). The
        segments' maxima name the segment; only its first batch reaching it is read."""
        self._check_open()
        holder = max(self._segments, key=lambda segment: segment.max_timestamp)
        if holder.max_timestamp < 0:
            return None  # no record, or none with a timestamp
        largest = holder.max_timestamp
        location = holder.find_offset_by_timestamp(largest)
        assert location is not None, (holder.base_offset, largest)
        batch = holder.log.read_at(location.position, location.header.size_bytes)
        for record in iter_records(batch):
            if record.timestamp >= largest and record.offset >= self._log_start_offset:
                return OffsetAndTimestamp(record.offset, record.timestamp)
        return None

    # ------------------------------------------------------------------ durability

    @property
    def unflushed_records(self) -> int:
        return self._unflushed_records

    def flush(self) -> None:
        """Make every append so far durable."""
        self._check_open()
        active = self._segments[-1]
        for segment in self._segments:
            if segment.unflushed:
                segment.flush(sync_indexes=segment is not active)
        self.epoch_cache.flush()
        if self._dir_dirty:
            self.fs.sync_dir(self.directory)
            self._dir_dirty = False
        self._unflushed_records = 0
        self.durable_end_offset = self.log_end_offset

    def prepare_flush(self) -> PendingFlush | None:
        """Split a flush for group commit: the small parts now, the fsync of the
        active segment's file by whoever calls `pending.file.sync()` (a worker thread),
        then `complete_flush`. None when everything appended is durable already."""
        self._check_open()
        if self.durable_end_offset >= self.log_end_offset:
            return None
        active = self._segments[-1]
        for segment in self._segments[:-1]:
            if segment.unflushed:  # a roll syncs the old segment; this is the rare rest
                segment.flush()
        self.epoch_cache.flush()
        if self._dir_dirty:
            self.fs.sync_dir(self.directory)
            self._dir_dirty = False
        active.offset_index.flush(sync=False)
        active.time_index.flush(sync=False)
        cached = active.log if isinstance(active.log, CachedFile) else None
        return PendingFlush(
            # A handle the file-handle bound will not close while a thread syncs it.
            file=cached.pin() if cached is not None else active.log,
            end_offset=self.log_end_offset,
            records=self._unflushed_records,
            generation=self._truncations,
            pinned=cached,
        )

    def complete_flush(self, pending: PendingFlush) -> None:
        """`pending.file.sync()` returned: what it covered is durable."""
        pending.release()
        if self._closed or pending.generation != self._truncations:
            return  # a truncation made its own durable point meanwhile
        if pending.end_offset > self.durable_end_offset:
            self.durable_end_offset = pending.end_offset
            self._unflushed_records = max(0, self._unflushed_records - pending.records)
        active = self._segments[-1]
        if active.log is pending.file and pending.end_offset == self.log_end_offset:
            active.unflushed = False

    def fail_flush(self, pending: PendingFlush, error: OSError) -> None:
        """The fsync failed: what it should have covered may be lost, so the log stops
        serving (Kafka halts the broker on a failed flush)."""
        pending.release()
        if self._closed or pending.generation != self._truncations:
            return  # the file was replaced by a truncation; its error is not ours
        self._offline_reason = f"fsync failed: {error}"

    def _write_recovery_point(self) -> None:
        # The checkpoint must cover every segment the recovery point vouches for.
        self.epoch_cache.flush()
        write_offset_file(
            self.fs, f"{self.directory}/{RECOVERY_POINT_FILE}", self.active_segment.base_offset
        )
        self._dir_dirty = False

    # ------------------------------------------------------------------ removing data

    def truncate_to(self, offset: int) -> None:
        """Remove every batch at or after `offset` (a straddling batch goes whole)."""
        self._check_open()
        if offset < self._log_start_offset:
            raise InvalidTruncationError(
                f"{self.directory}: cannot truncate to {offset}, below the log start "
                f"{self._log_start_offset}"
            )
        if offset >= self.log_end_offset:
            return
        straddling = self.locate_batch(offset)
        if straddling is not None and straddling.base_offset < self._log_start_offset:
            # The batch holding `offset` starts below the log start and goes whole, which
            # would leave the end below the start: restart the log empty at its start.
            self.truncate_fully_and_start_at(self._log_start_offset)
            return
        while len(self._segments) > 1 and self._last_segment_goes(offset):
            self._drop_last_segment()
        self._truncations += 1
        self.active_segment.truncate_to(offset)
        self.active_segment.flush()
        self.epoch_cache.truncate_from_end(self.log_end_offset)
        self.flush()
        self._write_recovery_point()

    def _last_segment_goes(self, offset: int) -> bool:
        last, before = self._segments[-1], self._segments[-2]
        # One starting at `offset` stays (emptied) when the one before ends short of
        # it (the cleaner removed its last batches): the log end must stay `offset`.
        return last.base_offset > offset or (
            last.base_offset == offset and before.next_offset == offset
        )

    def _drop_last_segment(self) -> None:
        segment = self._segments.pop()
        self._base_offsets.pop()
        segment.delete()
        self._dir_dirty = True

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop every segment and restart the log empty at `offset` (e.g. from a snapshot)."""
        self._check_open()
        if offset < 0:
            raise InvalidTruncationError(f"cannot restart a log at negative offset {offset}")
        self._persist_log_start(offset)
        self._truncations += 1
        self.durable_end_offset = offset
        self._unflushed_records = 0
        for segment in self._segments:
            segment.delete()
        self._segments = [
            LogSegment(self.fs, self.directory, offset, self.config.index_interval_bytes)
        ]
        self._base_offsets = [offset]
        self._log_start_offset = offset
        self.epoch_cache.clear()
        self._write_recovery_point()

    def advance_log_start_offset(self, offset: int) -> bool:
        """Move the log start forward (DeleteRecords, snapshots); True if it moved."""
        self._check_open()
        if offset > self.log_end_offset:
            raise OffsetOutOfRangeError(offset, self._log_start_offset, self.log_end_offset)
        if offset <= self._log_start_offset:
            return False
        # The start must never pass what survives a crash, or the log would reopen
        # with its start beyond its end.
        self.flush()
        self._persist_log_start(offset)
        self._log_start_offset = offset
        self._delete_segments_while(lambda segment, _: segment.next_offset <= offset)
        self.epoch_cache.truncate_from_start(offset)
        self.epoch_cache.flush()
        return True

    def delete_old_segments(self, now_ms: int, max_offset: int | None = None) -> int:
        """Apply retention by time and by size; return how many segments were deleted.

        The active segment is never deleted, nor any segment holding offsets at or past
        `max_offset` (pass the high-water mark: uncommitted data is not expired).
        """
        self._check_open()
        config = self.config

        def expired(segment: LogSegment, remaining_bytes: int) -> bool:
            if max_offset is not None and segment.next_offset > max_offset:
                return False
            by_time = config.retention_ms >= 0 and segment.max_timestamp < now_ms - (
                config.retention_ms
            )
            by_size = (
                config.retention_bytes >= 0
                and remaining_bytes - segment.size >= config.retention_bytes
            )
            return by_time or by_size

        deleted = self._delete_segments_while(expired)
        if deleted:
            new_start = self._segments[0].base_offset
            if new_start > self._log_start_offset:
                self._persist_log_start(new_start)
                self._log_start_offset = new_start
                self.epoch_cache.truncate_from_start(new_start)
                self.epoch_cache.flush()
        return deleted

    def _delete_segments_while(self, predicate: object) -> int:
        assert callable(predicate)
        remaining = self.size_bytes()
        deleted = 0
        while len(self._segments) > 1 and predicate(self._segments[0], remaining):
            segment = self._segments.pop(0)
            self._base_offsets.pop(0)
            remaining -= segment.size
            segment.delete()
            deleted += 1
        if deleted:
            self.fs.sync_dir(self.directory)
        return deleted

    def _persist_log_start(self, offset: int) -> None:
        write_offset_file(self.fs, f"{self.directory}/{LOG_START_OFFSET_FILE}", offset)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._write_recovery_point()
        for segment in self._segments:
            segment.close()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.directory} is closed")
        if self._offline_reason is not None:
            raise LogStorageError(f"log {self.directory} is offline: {self._offline_reason}")


def _read_offset_or(fs: FileSystem, path: str, default: int | None) -> int | None:
    try:
        value = read_offset_file(fs, path)
    except CheckpointError as error:
        log.warning("%s; ignoring it", error)
        return default
    return default if value is None else value


def _load_segments(
    fs: FileSystem,
    directory: str,
    config: LogConfig,
    recovery_point: int | None,
    untrusted: frozenset[int] = frozenset(),
) -> tuple[list[LogSegment], list[BatchHeader]]:
    """Open every segment; recover those that may hold unsynced data.

    Returns the segments that form one contiguous log, and the headers of every batch
    that recovery scanned (to rebuild the leader-epoch cache from what is really there).
    """
    names = fs.listdir(directory)
    for name in names:
        if name.endswith(".tmp"):
            fs.remove(f"{directory}/{name}")
    bases = sorted(int(name[: -len(LOG_SUFFIX)]) for name in names if name.endswith(LOG_SUFFIX))
    for name in names:
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            if name.endswith(suffix) and int(name[: -len(suffix)]) not in bases:
                fs.remove(f"{directory}/{name}")  # an index whose log is gone
    recovery_point = recovery_point or 0
    segments: list[LogSegment] = []
    scanned: list[BatchHeader] = []
    for position, base in enumerate(bases):
        segment = LogSegment(fs, directory, base, config.index_interval_bytes)
        next_base = bases[position + 1] if position + 1 < len(bases) else None
        trusted = next_base is not None and next_base <= recovery_point
        trusted = trusted and base not in untrusted
        if trusted and segment.load_indexes() and segment.rebuild_bookkeeping_from_index():
            pass  # synced before the recovery point moved past it, and it still reads whole
        else:
            result = segment.recover(allow_gaps=config.allow_offset_gaps)
            scanned.extend(result.batches)
            if result.reason is not None:
                log.warning(
                    "%s: recovery cut segment %d at byte %d (%d bytes dropped): %s",
                    directory,
                    base,
                    result.valid_bytes,
                    result.truncated_bytes,
                    result.reason,
                )
        follows = segments[-1].next_offset if segments else segment.base_offset
        if segment.base_offset != follows and not (
            config.allow_offset_gaps and segment.base_offset > follows
        ):
            log.warning(
                "%s: segment %d does not follow offset %d; dropping it and all later ones",
                directory,
                base,
                segments[-1].next_offset,
            )
            segment.delete()
            for later in bases[position + 1 :]:
                LogSegment(fs, directory, later, config.index_interval_bytes).delete()
            break
        segments.append(segment)
    return segments, scanned


__all__ = [
    "AppendInfo",
    "CorruptSegmentError",
    "InvalidLeaderEpochError",
    "InvalidTruncationError",
    "LogClosedError",
    "LogConfig",
    "LogError",
    "LogSlice",
    "LogStorageError",
    "NonContiguousOffsetError",
    "OffsetAndTimestamp",
    "OffsetOutOfRangeError",
    "RecordTooLargeError",
    "SegmentedLog",
]
