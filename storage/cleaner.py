"""Log compaction: keep the latest record of each key, as Kafka's log cleaner does.

`clean(log, now_ms, config)` compacts one log's inactive segments (the caller checks
that the topic's `cleanup.policy` includes `compact`; for `compact,delete` it also
runs retention). One pass:

1. Choose the range. The dirty part runs from the cleaner checkpoint (the end of the
   last pass, `cleaner-offset-checkpoint` in the log directory) to the first
   uncleanable offset: the active segment's base, or the first segment that holds
   offsets at or past `max_offset` (the high-water mark) or a record younger than
   `min_compaction_lag_ms`. The pass runs only if dirty bytes / (clean + dirty
   bytes) > `min_cleanable_dirty_ratio` (Kafka's comparison is strict too), or if a
   tombstone's delete horizon has passed.
2. Map each key of the dirty part to its last offset (whole segments, at most
   `offset_map_keys_max` keys: a pass that fills the map ends early, at a segment
   boundary, like Kafka's dedupe buffer).
3. Rewrite every segment from the log start to the end of the mapped part, in runs
   that fit one segment: a record stays unless a later record of its key is in the map,
   or it is a tombstone (null value) whose batch's delete horizon has passed. The
   first pass that keeps a tombstone stamps its batch with a delete horizon of
   now + `delete_retention_ms` (KIP-534: attribute bit 6, the horizon stored in the
   base timestamp field), so a tombstone goes only after it has been cleaned once and
   `delete_retention_ms` has passed since.
4. Swap each run in through `SegmentedLog.replace_segments` (`.cleaned`, then a
   `.swap` commit point, as Kafka does), then move the checkpoint.

What a batch becomes: an unchanged batch is copied byte for byte; one that lost records
(or gains a horizon) is re-encoded with the same base offset, last offset delta,
partition leader epoch, producer id, epoch and base sequence, the same compression
(none or gzip) and timestamp type; one that lost every record is dropped, which leaves
a gap between batches (readers and followers take gaps: `LogConfig.allow_offset_gaps`).
Kept whole and left out of the map: control batches and transactional batches
(not yet as Kafka does: no marker is ever removed, no aborted record is told apart, so
a compacted topic written in transactions keeps all of them) and batches whose records
cannot be decoded (snappy, lz4, zstd, a malformed record).
Records with a null key (a compacted topic refuses new ones, old ones may exist) are
kept; Kafka's cleaner drops them as invalid, we keep what we cannot reason about.

`max_compaction_lag_ms` makes a pass run whatever the ratio once the first dirty
batch is that old. Not yet: Kafka keeps the last batch of each producer even when it
empties (an empty batch, to keep its sequence numbers for a producer state rebuilt
from the log); throttling.

`clean` runs a pass at once; `clean_in_steps` is the same pass as a generator that
yields after each batch it reads, for the broker's cleaner (broker/log_cleaner.py),
which runs it on the event loop a slice at a time (decision 0017): every mutation of
the log stays on the one thread, and the pass checks before each swap that what it
read is still there.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import attrs
from crc32c import crc32c

from storage.checkpoint import CheckpointError, read_offset_file, write_offset_file
from storage.log import LogError
from storage.records import (
    BATCH_HEADER_BYTES,
    CRC_START,
    LOG_OVERHEAD_BYTES,
    MAGIC_V2,
    TIMESTAMP_TYPE_BIT,
    BatchHeader,
    Compression,
    Record,
    RecordBatchError,
    iter_records,
    read_header,
)
from storage.segment import BatchLocationIterator, LogSegment
from storage.swap import cleaned_path
from storage.varint import encode_varint

if TYPE_CHECKING:
    from storage.log import SegmentedLog

# Kafka's DefaultRecordBatch.DELETE_HORIZON_FLAG_MASK (KIP-534): when set, the base
# timestamp field holds the delete horizon and record timestamps are relative to it.
DELETE_HORIZON_BIT = 0x40
CLEANER_CHECKPOINT_FILE = "cleaner-offset-checkpoint"
DAY_MS = 24 * 3600 * 1000
RELATIVE_OFFSET_MAX = 2**31 - 1  # a segment's index keeps i32 offsets from its base
_HEADER = struct.Struct(">qiibIhiqqqhii")


def _ratio(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value}")


def _not_negative(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen(kw_only=True)
class CleanerConfig:
    """A compacted topic's settings; defaults are Kafka's."""

    delete_retention_ms: int = attrs.field(default=DAY_MS, validator=_not_negative)
    min_cleanable_dirty_ratio: float = attrs.field(default=0.5, validator=_ratio)
    min_compaction_lag_ms: int = attrs.field(default=0, validator=_not_negative)
    # Kafka sizes its offset map by log.cleaner.dedupe.buffer.size (128 MiB, 24 bytes
    # an entry: about 5M keys); Python's dict of bytes keys costs ~100 bytes an entry.
    offset_map_keys_max: int = attrs.field(default=1_000_000, validator=_positive)
    # A log with a dirty record older than this is cleaned whatever its dirty ratio
    # (None: Kafka's default, Long.MAX_VALUE, never).
    max_compaction_lag_ms: int | None = None


@attrs.frozen(kw_only=True)
class CleanResult:
    cleaned: bool
    reason: str  # why the pass ran or did not
    first_dirty_offset: int
    end_offset: int  # the new checkpoint: everything below it is clean
    dirty_ratio: float
    segments_replaced: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    batches_removed: int = 0
    # The earliest delete horizon of a tombstone kept below `end_offset` (None: none
    # waits), when the pass knows it: a caller need not look again before then.
    next_horizon_ms: int | None = None


class CleaningAborted(Exception):
    """The log changed between two steps of a pass (see `clean_in_steps`)."""


class CleanerError(Exception):
    """An inactive segment does not read whole: the log is not cleaned (Kafka marks
    such a partition uncleanable and goes on with the others)."""


@attrs.define
class _Counts:
    records_removed: int = 0
    tombstones_removed: int = 0
    batches_removed: int = 0
    next_horizon_ms: int | None = None

    def saw_horizon(self, horizon_ms: int) -> None:
        if self.next_horizon_ms is None or horizon_ms < self.next_horizon_ms:
            self.next_horizon_ms = horizon_ms


def read_checkpoint(log: SegmentedLog) -> int | None:
    try:
        return read_offset_file(log.fs, f"{log.directory}/{CLEANER_CHECKPOINT_FILE}")
    except CheckpointError:
        return None


def first_dirty_offset(log: SegmentedLog) -> int:
    """Where the last pass ended, within the log (a truncated log restarts at its start)."""
    checkpoint = read_checkpoint(log)
    if checkpoint is None or checkpoint > log.log_end_offset:
        return log.log_start_offset
    return max(checkpoint, log.log_start_offset)


def first_uncleanable_offset(
    log: SegmentedLog, now_ms: int, config: CleanerConfig, max_offset: int | None
) -> int:
    for segment in log.inactive_segments():
        too_new = segment.max_timestamp > now_ms - config.min_compaction_lag_ms
        unsettled = max_offset is not None and segment.next_offset > max_offset
        if too_new or unsettled:
            return segment.base_offset
    return log.active_segment.base_offset


def clean(
    log: SegmentedLog, now_ms: int, config: CleanerConfig, *, max_offset: int | None = None
) -> CleanResult:
    """One cleaning pass over `log` (see the module docstring), all at once."""
    steps = clean_in_steps(log, now_ms, config, max_offset=max_offset)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def clean_in_steps(
    log: SegmentedLog, now_ms: int, config: CleanerConfig, *, max_offset: int | None = None
) -> Generator[int, None, CleanResult]:
    """One cleaning pass that yields (the bytes it read since the last yield) after
    every batch it reads, so a caller on an event loop can let others run between
    steps. Whatever ran meanwhile may have changed the log: before each swap and the
    checkpoint the pass checks that every segment it read is still an inactive
    segment of the open log, else it raises CleaningAborted (nothing of that run
    swapped; earlier runs stay swapped, which is sound: each is a cleaning of its
    own) and the next pass starts over from the checkpoint."""
    part = cleanable_part(log, now_ms, config, max_offset)
    first_dirty, uncleanable, ratio = part.first_dirty, part.uncleanable, part.ratio
    clean_part, dirty_part = part.clean_part, part.dirty_part
    idle = CleanResult(
        cleaned=False,
        reason="",
        first_dirty_offset=first_dirty,
        end_offset=first_dirty,
        dirty_ratio=ratio,
    )
    if not clean_part and not dirty_part:
        return attrs.evolve(idle, reason="no inactive segment is cleanable yet")
    over_ratio = part.over_ratio
    overdue = not over_ratio and part.overdue
    if not over_ratio and not overdue:
        horizon_due, next_horizon = yield from _delete_horizon_passed(clean_part, now_ms)
        if not horizon_due:
            return attrs.evolve(
                idle,
                reason=f"dirty ratio {ratio:.3f} <= {config.min_cleanable_dirty_ratio}",
                next_horizon_ms=next_horizon,
            )
    offset_map, mapped = yield from _build_offset_map(dirty_part, config.offset_map_keys_max)
    if len(mapped) < len(dirty_part):
        end_offset = dirty_part[len(mapped)].base_offset  # the map filled up
    elif dirty_part:
        end_offset = uncleanable
    else:
        end_offset = first_dirty  # only tombstones to drop
    end_offset = max(end_offset, first_dirty)
    to_clean = clean_part + mapped
    counts = _Counts()
    bytes_before = sum(s.size for s in to_clean)
    bytes_after = 0
    groups = _group_by_size(to_clean, log.config.segment_bytes)
    expected = list(to_clean)  # what the log must still hold: read, or swapped in
    if read_checkpoint(log) is None:
        # Durable before the first gap exists: it tells a reopening broker that this
        # log has gaps, whatever the topic's cleanup.policy is by then.
        _write_checkpoint(log, first_dirty)
    for group in groups:
        path = yield from _write_cleaned(log, group, offset_map, now_ms, config, counts)
        try:
            _check_unchanged(log, expected)
            replacement = log.replace_segments(group, path)
        except (CleaningAborted, LogError):  # LogError: closed or offline meanwhile
            _discard(log, path)  # gone already if the swap got past its commit point
            raise
        bytes_after += replacement.size
        expected = [s for s in expected if s not in group] + [replacement]
    _check_unchanged(log, expected)
    _write_checkpoint(log, end_offset)
    if over_ratio:
        reason = f"dirty ratio {ratio:.3f} > {config.min_cleanable_dirty_ratio}"
    elif overdue:
        reason = (
            f"a dirty record is older than max.compaction.lag.ms={config.max_compaction_lag_ms}"
        )
    else:
        reason = "tombstone horizon passed"
    return CleanResult(
        cleaned=True,
        reason=reason,
        first_dirty_offset=first_dirty,
        end_offset=end_offset,
        dirty_ratio=ratio,
        segments_replaced=sum(len(group) for group in groups),
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        records_removed=counts.records_removed,
        tombstones_removed=counts.tombstones_removed,
        batches_removed=counts.batches_removed,
        next_horizon_ms=counts.next_horizon_ms,
    )


@attrs.frozen
class CleanablePart:
    """What a pass would clean now, from segment sizes and the checkpoint alone."""

    first_dirty: int
    uncleanable: int
    clean_part: list[LogSegment]
    dirty_part: list[LogSegment]
    ratio: float
    over_ratio: bool
    overdue: bool  # max.compaction.lag.ms passed for the oldest dirty batch


def cleanable_part(
    log: SegmentedLog, now_ms: int, config: CleanerConfig, max_offset: int | None = None
) -> CleanablePart:
    first_dirty = first_dirty_offset(log)
    uncleanable = first_uncleanable_offset(log, now_ms, config, max_offset)
    cleanable = [s for s in log.inactive_segments() if s.base_offset < uncleanable]
    clean_part = [s for s in cleanable if s.next_offset <= first_dirty]
    dirty_part = [s for s in cleanable if s not in clean_part]
    clean_bytes = sum(s.size for s in clean_part)
    dirty_bytes = sum(s.size for s in dirty_part)
    total = clean_bytes + dirty_bytes
    ratio = dirty_bytes / total if total else 0.0
    return CleanablePart(
        first_dirty=first_dirty,
        uncleanable=uncleanable,
        clean_part=clean_part,
        dirty_part=dirty_part,
        ratio=ratio,
        over_ratio=bool(cleanable) and ratio > config.min_cleanable_dirty_ratio,
        overdue=_compaction_overdue(dirty_part, now_ms, config),
    )


def _check_unchanged(log: SegmentedLog, read: list[LogSegment]) -> None:
    """Raise CleaningAborted unless every segment in `read` is still an inactive
    segment of the log (a truncation, retention, DeleteRecords or a follower's restart
    ran between two steps of the pass). A closed log refuses the swap itself."""
    inactive = {id(segment) for segment in log.inactive_segments()}
    if any(id(segment) not in inactive for segment in read):
        raise CleaningAborted(f"{log.directory}: segments changed during the pass")


def _discard(log: SegmentedLog, path: str) -> None:
    try:
        if log.fs.exists(path):
            log.fs.remove(path)
    except OSError:
        pass  # the directory may be gone with its log; opening it again drops the file


def _compaction_overdue(dirty: list[LogSegment], now_ms: int, config: CleanerConfig) -> bool:
    """max.compaction.lag.ms: the oldest dirty batch waited too long (its first
    timestamp is the earliest the segment holds, near enough: batches are in order)."""
    if config.max_compaction_lag_ms is None or not dirty:
        return False
    for location in BatchLocationIterator(dirty[0].log, 0, validate=False):
        return location.header.base_timestamp <= now_ms - config.max_compaction_lag_ms
    return False


def _write_checkpoint(log: SegmentedLog, offset: int) -> None:
    write_offset_file(log.fs, f"{log.directory}/{CLEANER_CHECKPOINT_FILE}", offset)


# ---------------------------------------------------------------------- reading segments


def _batches(segment: LogSegment) -> Iterator[tuple[BatchHeader, bytes]]:
    """Every batch of an inactive segment, CRC-checked; CleanerError if one is bad."""
    iterator = BatchLocationIterator(segment.log, 0, validate=True)
    for location in iterator:
        yield location.header, segment.log.read_at(location.position, location.header.size_bytes)
    if iterator.stopped_because is not None:
        raise CleanerError(f"{segment.path('.log')}: {iterator.stopped_because}")


def _records(header: BatchHeader, batch: bytes) -> list[Record] | None:
    """The batch's records, or None for one kept whole without a look inside."""
    if header.is_control or header.is_transactional:
        return None
    try:
        return list(iter_records(batch))
    except RecordBatchError:
        return None  # opaque: a codec we lack or a malformed record


def _remember(offset_map: dict[bytes, int], key: bytes, offset: int) -> None:
    offset_map[key] = offset  # the last one wins: offsets only grow within a pass


def _build_offset_map(
    dirty: list[LogSegment], keys_max: int
) -> Generator[int, None, tuple[dict[bytes, int], list[LogSegment]]]:
    """key -> last offset over whole segments of `dirty`, and the segments mapped."""
    offset_map: dict[bytes, int] = {}
    mapped: list[LogSegment] = []
    for segment in dirty:
        segment_map: dict[bytes, int] = {}
        for header, batch in _batches(segment):
            for record in _records(header, batch) or ():
                if record.key is not None:
                    _remember(segment_map, record.key, record.offset)
            yield len(batch)
        if mapped and len(offset_map.keys() | segment_map.keys()) > keys_max:
            break  # the next pass goes on from here
        offset_map.update(segment_map)
        mapped.append(segment)
    return offset_map, mapped


def _delete_horizon_passed(
    segments: list[LogSegment], now_ms: int
) -> Generator[int, None, tuple[bool, int | None]]:
    """Has a stamped batch's horizon passed; else the earliest horizon still ahead."""
    earliest: int | None = None
    for segment in segments:
        for location in BatchLocationIterator(segment.log, 0, validate=False):
            header = location.header
            if header.attributes & DELETE_HORIZON_BIT:
                if header.base_timestamp <= now_ms:
                    return True, header.base_timestamp
                if earliest is None or header.base_timestamp < earliest:
                    earliest = header.base_timestamp
            yield BATCH_HEADER_BYTES
    return False, earliest


def _group_by_size(segments: list[LogSegment], segment_bytes: int) -> list[list[LogSegment]]:
    """Runs of adjacent segments whose total size fits one segment (Kafka's grouping)."""
    groups: list[list[LogSegment]] = []
    for segment in segments:
        if groups:
            group = groups[-1]
            fits = sum(s.size for s in group) + segment.size <= segment_bytes
            in_range = segment.next_offset - 1 - group[0].base_offset <= RELATIVE_OFFSET_MAX
            if fits and in_range:
                group.append(segment)
                continue
        groups.append([segment])
    return groups


# ---------------------------------------------------------------------- rewriting


def _write_cleaned(
    log: SegmentedLog,
    group: list[LogSegment],
    offset_map: dict[bytes, int],
    now_ms: int,
    config: CleanerConfig,
    counts: _Counts,
) -> Generator[int, None, str]:
    path = cleaned_path(log.directory, group[0].base_offset)
    if log.fs.exists(path):
        log.fs.remove(path)
    out = log.fs.open(path)
    try:
        for segment in group:
            for header, batch in _batches(segment):
                kept = clean_batch(header, batch, offset_map, now_ms, config, counts)
                if kept is not None:
                    out.append(kept)
                    kept_header = read_header(kept)
                    if kept_header.attributes & DELETE_HORIZON_BIT:
                        counts.saw_horizon(kept_header.base_timestamp)
                yield len(batch)
        out.sync()
    except BaseException:
        out.close()
        _discard(log, path)
        raise
    out.close()
    return path


def _keep_record(record: Record, offset_map: dict[bytes, int], horizon_passed: bool) -> bool:
    if record.key is None:
        return True  # never deduplicated (see the module docstring)
    latest = offset_map.get(record.key)
    if latest is not None and record.offset < latest:
        return False  # a later record of this key is kept
    return record.value is not None or not horizon_passed


def clean_batch(
    header: BatchHeader,
    batch: bytes,
    offset_map: dict[bytes, int],
    now_ms: int,
    config: CleanerConfig,
    counts: _Counts | None = None,
) -> bytes | None:
    """What the batch becomes: itself, a re-encoded remainder, or None (all gone)."""
    counts = counts if counts is not None else _Counts()
    records = _records(header, batch)
    if records is None:
        return batch
    horizon = header.base_timestamp if header.attributes & DELETE_HORIZON_BIT else None
    horizon_passed = horizon is not None and now_ms >= horizon
    kept: list[Record] = []
    for record in records:
        if _keep_record(record, offset_map, horizon_passed):
            kept.append(record)
        else:
            counts.records_removed += 1
            counts.tombstones_removed += record.value is None
    if not kept:
        counts.batches_removed += 1
        return None
    has_tombstones = any(r.key is not None and r.value is None for r in kept)
    if len(kept) == len(records) and (horizon is not None or not has_tombstones):
        return batch
    if not has_tombstones:
        horizon = None
    elif horizon is None:
        horizon = now_ms + config.delete_retention_ms
    return encode_cleaned_batch(header, kept, horizon)


def encode_cleaned_batch(header: BatchHeader, records: list[Record], horizon: int | None) -> bytes:
    """`records` (a subset of the batch `header` describes) as one v2 batch with the
    original's offsets span, epoch, producer fields, codec and timestamp type."""
    assert records, "an emptied batch is dropped, not encoded"
    assert header.compression in (Compression.NONE, Compression.GZIP), header.compression
    base_timestamp = horizon if horizon is not None else records[0].timestamp
    section = b"".join(_encode_record(r, base_timestamp, header.base_offset) for r in records)
    if header.compression == Compression.GZIP:
        section = gzip.compress(section, mtime=0)
    if header.attributes & TIMESTAMP_TYPE_BIT:
        max_timestamp = header.max_timestamp  # log append time: the broker's stamp
    else:
        max_timestamp = max(r.timestamp for r in records)
    attributes = header.attributes & ~DELETE_HORIZON_BIT
    attributes |= DELETE_HORIZON_BIT if horizon is not None else 0
    buffer = bytearray(BATCH_HEADER_BYTES) + section
    _HEADER.pack_into(
        buffer,
        0,
        header.base_offset,
        len(buffer) - LOG_OVERHEAD_BYTES,
        header.partition_leader_epoch,
        MAGIC_V2,
        0,
        attributes,
        header.last_offset_delta,  # kept, as Kafka keeps it: the producer's last sequence
        base_timestamp,
        max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        len(records),
    )
    struct.pack_into(">I", buffer, 17, crc32c(memoryview(buffer)[CRC_START:]))
    return bytes(buffer)


def _encode_record(record: Record, base_timestamp: int, base_offset: int) -> bytes:
    body = bytearray(b"\x00")  # record attributes: unused in v2
    body += encode_varint(record.timestamp - base_timestamp)
    body += encode_varint(record.offset - base_offset)
    body += _encode_bytes(record.key)
    body += _encode_bytes(record.value)
    body += encode_varint(len(record.headers))
    for name, value in record.headers:
        body += _encode_bytes(name.encode("utf-8"))
        body += _encode_bytes(value)
    return encode_varint(len(body)) + bytes(body)


def _encode_bytes(value: bytes | None) -> bytes:
    return encode_varint(-1) if value is None else encode_varint(len(value)) + value


__all__ = [
    "CLEANER_CHECKPOINT_FILE",
    "DELETE_HORIZON_BIT",
    "CleanResult",
    "CleanablePart",
    "CleanerConfig",
    "CleanerError",
    "CleaningAborted",
    "clean",
    "clean_batch",
    "clean_in_steps",
    "cleanable_part",
    "encode_cleaned_batch",
    "first_dirty_offset",
    "first_uncleanable_offset",
]
