"""What a read_committed consumer returns of a fetched partition's batches (KIP-98).

A Fetch at isolation_level=1 stops at the last stable offset, so every transaction
in the answer is decided, and it lists the aborted transactions that overlap the
records as (producer id, first offset). The consumer drops:

- every control batch (COMMIT/ABORT markers are the log's, not the application's);
- every transactional batch of a producer whose aborted transaction has begun at or
  before that batch and whose ABORT marker has not been met yet.

Kafka's consumer walks the batches in offset order, admitting an aborted
transaction's producer into the "aborted" set once a batch reaches the transaction's
first offset, and letting it out at its ABORT marker; this is that walk, pure (no
I/O, no clock), one `ReadCommittedFilter` per partition and fetch answer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from storage.records import (
    BatchHeader,
    Buffer,
    ControlRecordType,
    iter_batches,
    iter_records,
    parse_control_record_key,
)


class ReadCommittedFilter:
    """The aborted-transaction walk over one fetch answer's batches, in order."""

    def __init__(self, aborted: Iterable[tuple[int, int]]) -> None:
        # (first offset, producer id), smallest first offset on top.
        self._pending = [(first_offset, producer_id) for producer_id, first_offset in aborted]
        heapq.heapify(self._pending)
        self._aborting: set[int] = set()

    def skips(self, header: BatchHeader, is_abort_marker: bool) -> bool:
        """Is this batch hidden from the application? Call it for every batch in order;
        `is_abort_marker`: a control batch whose record is an ABORT marker."""
        if header.producer_id >= 0:
            while self._pending and self._pending[0][0] <= header.last_offset:
                _, producer_id = heapq.heappop(self._pending)
                self._aborting.add(producer_id)
            if is_abort_marker:
                self._aborting.discard(header.producer_id)
            elif header.is_transactional and header.producer_id in self._aborting:
                return True
        return header.is_control


def is_abort_marker(data: Buffer, position: int, header: BatchHeader) -> bool:
    """Does the control batch at `position` hold an ABORT marker?"""
    if not header.is_control:
        return False
    record = next(iter_records(data, position), None)
    return record is not None and parse_control_record_key(record.key) is ControlRecordType.ABORT


def committed_batches(
    data: Buffer, aborted: Iterable[tuple[int, int]] | None
) -> Iterator[tuple[int, BatchHeader, bool]]:
    """Each batch of `data` as (position, header, visible): `visible` is whether a
    read_committed consumer returns its records. `aborted` is the Fetch answer's list
    (None: treated as empty, as Kafka's consumer does)."""
    walk = ReadCommittedFilter(aborted or ())
    for position, header in iter_batches(data):
        hidden = walk.skips(header, is_abort_marker(data, position, header))
        yield position, header, not hidden


__all__ = ["ReadCommittedFilter", "committed_batches", "is_abort_marker"]
