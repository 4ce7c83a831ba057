"""The aborted-transaction index of one segment: `<20-digit base offset>.txnindex`.

A read_committed consumer must drop the records of aborted transactions. Fetch tells
it which: for the fetched range, every aborted transaction that overlaps it, as
(producer id, first offset). The consumer then skips that producer's records from the
first offset until it meets the producer's ABORT marker. The broker finds them here.

Each segment's index lists the transactions whose ABORT marker lies in that segment,
in marker order, as Kafka's `TransactionIndex` does, byte for byte: 34-byte entries
of version i16 (0), producer id i64, first offset i64, last offset i64 (the marker's),
last stable offset i64 (the LSO when the marker was written). The LSO is what lets a
search stop early: once an entry's LSO reaches the end of the fetched range, no
transaction aborted later can have started inside the range (it was either open then,
and so starts at or after that LSO, or started after the marker).

Durability: entries are appended to the file when the marker is appended and synced
by `flush()`, which the log calls when it syncs the segment; a truncation is synced at
once, as the log's own truncation is (decision 0002). Kafka's file has no checksum;
`load` refuses a file whose size, versions or offsets are impossible, and the owner
then rebuilds the index by replaying the segment's batches through the producer state
(`storage.producer_state.aborted_transactions_between`), as Kafka's segment recovery
does. An empty index has no file (Kafka creates it on the first entry too).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from storage.fs import File, FileSystem

log = logging.getLogger(__name__)

SUFFIX = ".txnindex"
ENTRY_VERSION = 0
_ENTRY = struct.Struct(">hqqqq")
ENTRY_BYTES = _ENTRY.size  # 34, as Kafka's AbortedTxn.TOTAL_SIZE


class AbortedTxn(NamedTuple):
    """One aborted transaction (a NamedTuple: one per ABORT marker, compared in bulk)."""

    producer_id: int
    first_offset: int
    last_offset: int  # the offset of the ABORT marker
    last_stable_offset: int  # the partition's LSO once the marker was written


class FetchAbortedTxn(NamedTuple):
    """What Fetch returns per aborted transaction (`AbortedTransactions` in Kafka's schema)."""

    producer_id: int
    first_offset: int


class TxnIndexCorruptError(ValueError):
    """The index file cannot be what this module wrote: rebuild it from the log."""


def txn_index_path(directory: str, base_offset: int) -> str:
    return f"{directory}/{base_offset:020d}{SUFFIX}"


class TransactionIndex:
    """The aborted transactions whose markers lie in one segment, oldest marker first."""

    def __init__(self, fs: FileSystem, directory: str, base_offset: int) -> None:
        self.fs = fs
        self.directory = directory
        self.base_offset = base_offset
        self.path = txn_index_path(directory, base_offset)
        self._entries: list[AbortedTxn] = []
        self._file: File | None = None
        self._unsynced = False

    # ------------------------------------------------------------------ opening

    @classmethod
    def load(
        cls, fs: FileSystem, directory: str, base_offset: int, *, next_offset: int | None = None
    ) -> TransactionIndex:
        """Read the segment's index; TxnIndexCorruptError if it cannot be trusted.

        `next_offset` (the segment's end, exclusive) lets the check refuse a marker
        offset outside the segment. A missing file is an empty index.
        """
        index = cls(fs, directory, base_offset)
        if not fs.exists(index.path):
            return index
        handle = fs.open(index.path, create=False)
        try:
            content = handle.read_at(0, handle.size())
        finally:
            handle.close()
        index._entries = _parse(index.path, content, base_offset, next_offset)
        return index

    @property
    def entries(self) -> tuple[AbortedTxn, ...]:
        return tuple(self._entries)

    def last_offset(self) -> int | None:
        """The marker offset of the newest entry."""
        return self._entries[-1].last_offset if self._entries else None

    # ------------------------------------------------------------------ writing

    def append(self, entry: AbortedTxn) -> None:
        """Add an aborted transaction whose marker was just appended to this segment."""
        _check_entry(entry, self.base_offset)
        last = self.last_offset()
        # Markers are appended in offset order; Kafka refuses anything else too.
        assert last is None or entry.last_offset > last, (
            f"{self.path}: marker offset {entry.last_offset} after {last}"
        )
        self._handle().append(_ENTRY.pack(ENTRY_VERSION, *entry))
        self._entries.append(entry)
        self._unsynced = True

    def flush(self) -> None:
        """Make every appended entry durable (called when the segment is synced)."""
        if self._unsynced and self._file is not None:
            self._file.sync()
        self._unsynced = False

    def truncate_to(self, offset: int) -> None:
        """Forget transactions whose marker is at or after `offset`, durably."""
        kept = [entry for entry in self._entries if entry.last_offset < offset]
        if len(kept) == len(self._entries):
            return
        self._entries = kept
        handle = self._handle()
        handle.truncate(len(kept) * ENTRY_BYTES)
        handle.sync()
        self._unsynced = False

    def rebuild(self, entries: Iterable[AbortedTxn]) -> None:
        """Replace the content with `entries` (recovered from the log), durably."""
        fresh = list(entries)
        for entry in fresh:
            _check_entry(entry, self.base_offset)
        for before, after in itertools.pairwise(fresh):
            assert after.last_offset > before.last_offset, f"{self.path}: {fresh}"
        if not fresh and not self.fs.exists(self.path):
            self._entries = []
            return
        handle = self._handle()
        handle.truncate(0)
        if fresh:
            handle.append(b"".join(_ENTRY.pack(ENTRY_VERSION, *entry) for entry in fresh))
        handle.sync()
        self._entries = fresh
        self._unsynced = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def delete(self) -> None:
        """The segment is gone (retention, truncation): so is its index."""
        self.close()
        if self.fs.exists(self.path):
            self.fs.remove(self.path)
        self._entries = []
        self._unsynced = False

    def _handle(self) -> File:
        if self._file is None:
            # The directory entry is made durable with the segment's files (the log
            # syncs the directory when it rolls or syncs a new segment).
            self._file = self.fs.open(self.path)
        return self._file

    # ------------------------------------------------------------------ reading

    def collect(self, start_offset: int, end_offset: int) -> tuple[list[AbortedTxn], bool]:
        """Aborted transactions overlapping [start_offset, end_offset), and whether the
        search is complete (no later segment can hold one that overlaps)."""
        found = []
        for entry in self._entries:
            if entry.last_offset >= start_offset and entry.first_offset < end_offset:
                found.append(entry)
            if entry.last_stable_offset >= end_offset:
                return found, True
        return found, False


def aborted_transactions(
    indexes: Sequence[TransactionIndex], start_offset: int, end_offset: int
) -> list[FetchAbortedTxn]:
    """What Fetch (isolation_level=1) returns for the range [start_offset, end_offset).

    `indexes` are those of the segment holding `start_offset` and every later one, in
    offset order (an earlier segment's markers all lie below `start_offset`).
    """
    if end_offset <= start_offset:
        return []
    found: list[FetchAbortedTxn] = []
    for index in indexes:
        entries, complete = index.collect(start_offset, end_offset)
        found.extend(FetchAbortedTxn(entry.producer_id, entry.first_offset) for entry in entries)
        if complete:
            break
    return found


class LogTxnIndexes:
    """The transaction indexes of one log, keyed by base offset, oldest first.

    The partition drives it through the log's events (open, roll, truncation, log
    start moves, restart). An index holds the markers in [its base, the next index's
    base): its base is the segment's that was active when the marker was written, so
    a cleaning that merges segments leaves the older indexes in place and correct;
    they go when the log start passes the next one's base.
    """

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self.fs = fs
        self.directory = directory
        self._indexes: dict[int, TransactionIndex] = {}
        self._bases: list[int] = []  # sorted keys of _indexes

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        *,
        segment_bases: Sequence[int],
        log_end_offset: int,
        recover: Callable[[int, int], list[AbortedTxn]],
    ) -> LogTxnIndexes:
        """Load every index of the directory; one that fails its checks is rebuilt
        from `recover(start, end)` (the aborted transactions whose markers lie there).

        Files of no segment below the first segment's base, or at/after the log end,
        are deleted (their markers are gone).
        """
        self = cls(fs, directory)
        first_base = segment_bases[0] if segment_bases else log_end_offset
        on_disk = set()
        for name in fs.listdir(directory):
            stem = name[: -len(SUFFIX)]
            if name.endswith(SUFFIX) and stem.isdigit():
                on_disk.add(int(stem))
        bases = sorted(on_disk | set(segment_bases))
        for position, base in enumerate(bases):
            next_base = bases[position + 1] if position + 1 < len(bases) else log_end_offset
            beyond_end = base >= log_end_offset and base not in segment_bases
            if base < first_base or beyond_end:
                TransactionIndex(fs, directory, base).delete()
                continue
            try:
                index = TransactionIndex.load(fs, directory, base, next_offset=next_base)
            except TxnIndexCorruptError as error:
                log.warning("%s; rebuilding it from the log", error)
                index = TransactionIndex(fs, directory, base)
                index.rebuild(recover(base, next_base))
            self._add_index(index)
        return self

    def _add_index(self, index: TransactionIndex) -> None:
        assert index.base_offset not in self._indexes, index.base_offset
        self._indexes[index.base_offset] = index
        bisect.insort(self._bases, index.base_offset)

    @property
    def bases(self) -> tuple[int, ...]:
        return tuple(self._bases)

    def entries(self) -> list[AbortedTxn]:
        """Every aborted transaction held, in marker order."""
        return [entry for base in self._bases for entry in self._indexes[base].entries]

    # ------------------------------------------------------------------ the log's events

    def on_roll(self, base_offset: int) -> None:
        """A new segment starts at `base_offset`: what the older ones hold is synced
        (the producer state snapshot taken now counts on it)."""
        self.flush()
        if base_offset not in self._indexes:
            assert not self._bases or base_offset > self._bases[-1], (base_offset, self._bases)
            self._add_index(TransactionIndex(self.fs, self.directory, base_offset))

    def append(self, entry: AbortedTxn) -> None:
        """An ABORT marker was just appended (its offset is past every other marker)."""
        position = bisect.bisect_right(self._bases, entry.last_offset) - 1
        # Every segment has an index from its start (open, roll, restart).
        assert position >= 0, (entry, self._bases)
        self._indexes[self._bases[position]].append(entry)

    def truncate_to(self, offset: int, *, segment_bases: Sequence[int]) -> None:
        """The log was cut at `offset`: markers at or after it go, and so do the
        indexes of segments that went with them."""
        for base in list(self._bases):
            index = self._indexes[base]
            if base >= offset and base not in segment_bases:
                self._remove(base)
            else:
                index.truncate_to(offset)

    def drop_below(self, first_segment_base: int) -> None:
        """Segments below `first_segment_base` were deleted: their indexes go too."""
        while len(self._bases) > 1 and self._bases[1] <= first_segment_base:
            self._remove(self._bases[0])

    def restart_at(self, offset: int) -> None:
        """The log restarted empty at `offset`."""
        for base in list(self._bases):
            self._remove(base)
        self._add_index(TransactionIndex(self.fs, self.directory, offset))

    def reconcile(self, from_offset: int, replayed: Sequence[AbortedTxn]) -> bool:
        """Make the markers at or after `from_offset` exactly `replayed` (what a replay
        of the log found there): entries a crash kept from the disk are dropped or
        added. True if anything changed."""
        wanted: dict[int, list[AbortedTxn]] = {}
        for entry in replayed:
            assert entry.last_offset >= from_offset, (entry, from_offset)
            position = bisect.bisect_right(self._bases, entry.last_offset) - 1
            assert position >= 0, (entry, self._bases)
            wanted.setdefault(self._bases[position], []).append(entry)
        changed = False
        for base in self._bases:
            index = self._indexes[base]
            kept = [entry for entry in index.entries if entry.last_offset < from_offset]
            fresh = kept + wanted.get(base, [])
            if fresh != list(index.entries):
                log.warning(
                    "%s: %d entries on disk, %d in the log after offset %d: rebuilt",
                    index.path,
                    len(index.entries),
                    len(fresh),
                    from_offset,
                )
                index.rebuild(fresh)
                changed = True
        return changed

    def flush(self) -> None:
        for base in self._bases:
            self._indexes[base].flush()

    def close(self) -> None:
        for base in self._bases:
            index = self._indexes[base]
            index.flush()
            index.close()

    def _remove(self, base: int) -> None:
        self._indexes.pop(base).delete()
        self._bases.remove(base)

    # ------------------------------------------------------------------ reading

    def aborted_transactions(self, start_offset: int, end_offset: int) -> list[FetchAbortedTxn]:
        """Fetch's list for [start_offset, end_offset)."""
        position = max(0, bisect.bisect_right(self._bases, start_offset) - 1)
        indexes = [self._indexes[base] for base in self._bases[position:]]
        return aborted_transactions(indexes, start_offset, end_offset)


def remove_orphans(fs: FileSystem, directory: str, segment_bases: Iterable[int]) -> list[int]:
    """Delete `.txnindex` files whose segment is gone; their base offsets."""
    bases = set(segment_bases)
    removed = []
    for name in fs.listdir(directory):
        if not name.endswith(SUFFIX):
            continue
        stem = name[: -len(SUFFIX)]
        if not stem.isdigit() or int(stem) not in bases:
            fs.remove(f"{directory}/{name}")
            if stem.isdigit():
                removed.append(int(stem))
    return removed


def _check_entry(entry: AbortedTxn, base_offset: int) -> None:
    assert entry.producer_id >= 0, entry
    assert 0 <= entry.first_offset <= entry.last_offset, entry
    assert entry.last_offset >= base_offset, f"marker {entry} before segment {base_offset}"
    assert 0 <= entry.last_stable_offset <= entry.last_offset + 1, entry


def _parse(
    path: str, content: bytes, base_offset: int, next_offset: int | None
) -> list[AbortedTxn]:
    if len(content) % ENTRY_BYTES:
        raise TxnIndexCorruptError(
            f"{path}: {len(content)} bytes is not a whole number of {ENTRY_BYTES}-byte entries"
        )
    entries: list[AbortedTxn] = []
    for position in range(0, len(content), ENTRY_BYTES):
        version, *fields = _ENTRY.unpack_from(content, position)
        entry = AbortedTxn(*fields)
        problem = None
        if version != ENTRY_VERSION:
            problem = f"version {version}"
        elif entry.producer_id < 0 or not 0 <= entry.first_offset <= entry.last_offset:
            problem = f"impossible entry {entry}"
        elif entry.last_offset < base_offset or (
            next_offset is not None and entry.last_offset >= next_offset
        ):
            problem = f"marker offset {entry.last_offset} outside the segment"
        elif not 0 <= entry.last_stable_offset <= entry.last_offset + 1:
            problem = f"last stable offset {entry.last_stable_offset} of {entry}"
        elif entries and entry.last_offset <= entries[-1].last_offset:
            problem = f"marker offset {entry.last_offset} after {entries[-1].last_offset}"
        if problem is not None:
            raise TxnIndexCorruptError(f"{path}: entry at byte {position}: {problem}")
        entries.append(entry)
    return entries


__all__ = [
    "ENTRY_BYTES",
    "SUFFIX",
    "AbortedTxn",
    "FetchAbortedTxn",
    "LogTxnIndexes",
    "TransactionIndex",
    "TxnIndexCorruptError",
    "aborted_transactions",
    "remove_orphans",
    "txn_index_path",
]
