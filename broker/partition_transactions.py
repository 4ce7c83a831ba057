"""A partition's transactions: markers, the last stable offset, KIP-890 part 1.

`Partition` takes these from `PartitionTransactions`; they share its state and its
rule that nothing awaits between a check and the append it guards (decision 0021):

- `write_txn_marker` appends a coordinator's COMMIT/ABORT control batch once the
  producer state accepts it, and indexes an abort in the segment's `.txnindex`;
- `last_stable_offset` and `aborted_transactions` are what a read_committed Fetch
  needs;
- `unverified_transactions` and `begin_verification` let the Produce path ask the
  coordinator before a transaction opens here; a marker voids a verification under
  way, so a late batch cannot open a transaction of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from client.protocol.errors import ErrorCode, KafkaError
from storage.log import SegmentedLog
from storage.producer_state import (
    EndTxnMarker,
    ProducerStateManager,
    aborted_transactions_between,
    assigned_headers,
    build_marker_batch,
    log_reader,
)
from storage.records import TRANSACTIONAL_BIT, BatchHeader, ControlRecordType, iter_batches
from storage.txn_index import AbortedTxn, FetchAbortedTxn, LogTxnIndexes

_BATCH_LENGTH = struct.Struct(">i")  # after the base offset: the rest of the batch's size
_ATTRIBUTES_LOW_BYTE = 22  # attributes are the i16 at 21: the transactional bit is in its low byte


def _one_plain_batch(records: bytes) -> bool:
    """Is `records` a single batch without the transactional bit (read in place)?"""
    if len(records) < _ATTRIBUTES_LOW_BYTE + 1:
        return False
    (length,) = _BATCH_LENGTH.unpack_from(records, 8)
    return length + 12 == len(records) and not records[_ATTRIBUTES_LOW_BYTE] & TRANSACTIONAL_BIT


class PartitionTransactions:
    """The transaction side of `Partition` (a mixin: the attributes are Partition's)."""

    log: SegmentedLog
    producer_state: ProducerStateManager
    txn_indexes: LogTxnIndexes
    high_watermark: int
    leader_epoch: int
    # Producer id -> the verification under way for it (KIP-890 part 1).
    _verification_guards: dict[int, object]

    def _maybe_advance_high_watermark(self) -> bool:
        raise NotImplementedError

    def _notify(self) -> None:
        raise NotImplementedError

    @property
    def last_stable_offset(self) -> int:
        """Where a read_committed consumer stops: the first offset of the oldest
        undecided transaction (or decided by a marker not yet replicated), capped by
        the high-water mark."""
        return self.producer_state.state.last_stable_offset(self.high_watermark)

    def aborted_transactions(self, start_offset: int, end_offset: int) -> list[FetchAbortedTxn]:
        """Fetch's aborted transactions (read_committed) overlapping [start, end)."""
        return self.txn_indexes.aborted_transactions(start_offset, end_offset)

    def _segment_bases(self) -> list[int]:
        return [segment.base_offset for segment in self.log.segments]

    def _recover_aborted(self, start_offset: int, end_offset: int) -> list[AbortedTxn]:
        return aborted_transactions_between(
            self.log.fs,
            self.log.directory,
            log_start_offset=self.log.log_start_offset,
            start_offset=max(start_offset, self.log.log_start_offset),
            end_offset=end_offset,
            read_batches=log_reader(self.log),
            config=self.producer_state.state.config,
        )

    def _index_aborted(self, aborted: AbortedTxn | None) -> None:
        if aborted is not None:
            self.txn_indexes.append(aborted)

    def unverified_transactions(self, records: bytes) -> list[tuple[int, int]]:
        """(producer id, epoch) of each transactional batch that would open a
        transaction here: KIP-890 part 1 asks the coordinator about those first."""
        if _one_plain_batch(records):
            return []  # the usual produce: no header walk
        state = self.producer_state.state
        found = []
        for _, header in iter_batches(records, validate=False):
            if not header.is_transactional or header.producer_id < 0:
                continue
            entry = state.entry(header.producer_id)
            if entry is None or not entry.has_open_transaction:
                key = (header.producer_id, header.producer_epoch)
                if key not in found:
                    found.append(key)
        return found

    def begin_verification(self, producer_id: int) -> object:
        """A token for a verification of `producer_id`'s transaction starting now."""
        guard = self._verification_guards[producer_id] = object()
        return guard

    def _check_verified(self, headers: list[BatchHeader], guards: Mapping[int, object]) -> None:
        state = self.producer_state.state
        for header in headers:
            if not header.is_transactional or header.producer_id < 0:
                continue
            entry = state.entry(header.producer_id)
            if entry is not None and entry.has_open_transaction:
                continue
            guard = self._verification_guards.get(header.producer_id)
            if guard is None or guards.get(header.producer_id) is not guard:
                raise KafkaError(
                    ErrorCode.INVALID_TXN_STATE,
                    f"{self}: producer {header.producer_id}: the transaction was not "
                    "verified with its coordinator (or ended meanwhile)",
                )

    def write_txn_marker(
        self,
        *,
        producer_id: int,
        producer_epoch: int,
        committed: bool,
        coordinator_epoch: int,
        transaction_version: int,
        now_wall_ms: int,
    ) -> int:
        """WriteTxnMarkers as leader: the COMMIT or ABORT control batch; its offset.

        KafkaError INVALID_PRODUCER_EPOCH for a marker older than the producer's
        epoch, TRANSACTION_COORDINATOR_FENCED for a coordinator epoch older than the
        last marker's.
        """
        kind = ControlRecordType.COMMIT if committed else ControlRecordType.ABORT
        marker = EndTxnMarker(control_type=kind, coordinator_epoch=coordinator_epoch)
        state = self.producer_state.state
        outcome = state.validate_marker(
            producer_id, producer_epoch, marker, epoch_bumped=transaction_version >= 2
        )
        if not outcome.is_new:
            raise KafkaError(outcome.verdict.error_code, f"{self}: {outcome.message}")
        batch = build_marker_batch(
            marker,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            timestamp=now_wall_ms,
            partition_leader_epoch=self.leader_epoch,
        )
        # No await from validate to record, as for data.
        info = self.log.append(batch, self.leader_epoch)
        (header,) = assigned_headers(
            [header for _, header in iter_batches(batch, validate=False)],
            info.first_offset,
            self.leader_epoch,
        )
        self._index_aborted(state.record(header, marker))
        self._verification_guards.pop(producer_id, None)
        self._maybe_advance_high_watermark()
        self._notify()
        return info.first_offset
