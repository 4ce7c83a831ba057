"""One transactional id's state at its coordinator, and the moves Kafka allows.

States are Kafka's (`TransactionState`); `TransactionMetadata.transition` is the one
place the state changes, and it asserts the move is allowed (a move outside the table
is a coordinator bug, not a bad request: bad requests are refused before any move):

    Empty              a producer id and epoch, no transaction open
    Ongoing            partitions added: a transaction is open
    PrepareCommit      EndTxn(commit) decided and written; markers being written
    PrepareAbort       EndTxn(abort), a fence or a timeout decided; markers being written
    CompleteCommit     every marker written: the transaction is over
    CompleteAbort      likewise for an abort
    PrepareEpochFence  in memory only: the epoch bumped to fence an open transaction,
                       on the way to PrepareAbort within the same call
    Dead               expired: a tombstone written, the id forgotten
"""

from __future__ import annotations

import enum

import attrs

from broker.transactions.records import TxnLogValue

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
EPOCH_MAX = (1 << 15) - 1  # producer epochs are int16


class TransactionState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"
    PREPARE_EPOCH_FENCE = "PrepareEpochFence"
    DEAD = "Dead"


_S = TransactionState
# Kafka's valid previous states, turned around: from -> may go to. Empty -> Empty is
# an InitProducerId that bumps the epoch; Complete* -> PrepareAbort and Empty ->
# PrepareAbort are transaction version 2's abort with nothing open (it bumps too).
ALLOWED_TRANSITIONS: dict[TransactionState, frozenset[TransactionState]] = {
    _S.EMPTY: frozenset({_S.EMPTY, _S.ONGOING, _S.PREPARE_ABORT, _S.DEAD}),
    _S.ONGOING: frozenset(
        {_S.ONGOING, _S.PREPARE_COMMIT, _S.PREPARE_ABORT, _S.PREPARE_EPOCH_FENCE}
    ),
    _S.PREPARE_COMMIT: frozenset({_S.COMPLETE_COMMIT}),
    _S.PREPARE_ABORT: frozenset({_S.COMPLETE_ABORT}),
    _S.COMPLETE_COMMIT: frozenset({_S.EMPTY, _S.ONGOING, _S.PREPARE_ABORT, _S.DEAD}),
    _S.COMPLETE_ABORT: frozenset({_S.EMPTY, _S.ONGOING, _S.PREPARE_ABORT, _S.DEAD}),
    _S.PREPARE_EPOCH_FENCE: frozenset({_S.PREPARE_ABORT}),
    _S.DEAD: frozenset(),
}
PREPARED = frozenset({_S.PREPARE_COMMIT, _S.PREPARE_ABORT})
COMPLETED = frozenset({_S.COMPLETE_COMMIT, _S.COMPLETE_ABORT})
# Nothing open: InitProducerId may bump the epoch, the id may expire.
AT_REST = frozenset({_S.EMPTY}) | COMPLETED


def epoch_exhausted(epoch: int) -> bool:
    """Kafka's isEpochExhausted: one bump left at most, kept for fencing or markers."""
    return epoch >= EPOCH_MAX - 1


@attrs.define(kw_only=True)
class TransactionMetadata:
    transactional_id: str
    producer_id: int
    previous_producer_id: int = NO_PRODUCER_ID  # before an id rotation (KIP-360 retries)
    next_producer_id: int = NO_PRODUCER_ID  # taken when the epoch runs out at EndTxn (v2)
    producer_epoch: int = NO_PRODUCER_EPOCH
    last_producer_epoch: int = NO_PRODUCER_EPOCH  # the epoch before the last bump
    timeout_ms: int
    state: TransactionState = TransactionState.EMPTY
    partitions: frozenset[tuple[str, int]] = frozenset()
    last_update_timestamp_ms: int
    start_timestamp_ms: int = -1
    transaction_version: int = 1

    def is_(self, *states: TransactionState) -> bool:
        return self.state in states

    def transition(self, to: TransactionState, **changes: object) -> None:
        assert to in ALLOWED_TRANSITIONS[self.state], (
            f"transactional id {self.transactional_id!r}: {self.state.value} -> {to.value}"
        )
        old_id, old_epoch = self.producer_id, self.producer_epoch
        for name, value in changes.items():
            assert hasattr(self, name), name
            setattr(self, name, value)
        self.state = to
        assert NO_PRODUCER_EPOCH <= self.producer_epoch <= EPOCH_MAX, self
        assert self.producer_id != old_id or self.producer_epoch >= old_epoch, (
            f"{self.transactional_id!r}: epoch {old_epoch} -> {self.producer_epoch}"
        )
        if to is TransactionState.ONGOING or to is TransactionState.PREPARE_EPOCH_FENCE:
            assert self.partitions, f"{self.transactional_id!r}: {to.value} with no partitions"
        elif to not in PREPARED:  # a prepared abort may be empty (version 2)
            assert not self.partitions, f"{self.transactional_id!r}: {to.value} with partitions"

    def to_value(self) -> TxnLogValue:
        assert self.state not in (TransactionState.DEAD, TransactionState.PREPARE_EPOCH_FENCE)
        return TxnLogValue(
            producer_id=self.producer_id,
            previous_producer_id=self.previous_producer_id,
            next_producer_id=self.next_producer_id,
            producer_epoch=self.producer_epoch,
            last_producer_epoch=self.last_producer_epoch,
            timeout_ms=self.timeout_ms,
            state=self.state.value,
            partitions=self.partitions,
            last_update_timestamp_ms=self.last_update_timestamp_ms,
            start_timestamp_ms=self.start_timestamp_ms,
            transaction_version=self.transaction_version,
        )

    @classmethod
    def from_value(cls, transactional_id: str, value: TxnLogValue) -> TransactionMetadata:
        return cls(
            transactional_id=transactional_id,
            producer_id=value.producer_id,
            previous_producer_id=value.previous_producer_id,
            next_producer_id=value.next_producer_id,
            producer_epoch=value.producer_epoch,
            last_producer_epoch=value.last_producer_epoch,
            timeout_ms=value.timeout_ms,
            state=TransactionState(value.state),
            partitions=value.partitions,
            last_update_timestamp_ms=value.last_update_timestamp_ms,
            start_timestamp_ms=value.start_timestamp_ms,
            transaction_version=value.transaction_version,
        )


__all__ = [
    "ALLOWED_TRANSITIONS",
    "AT_REST",
    "COMPLETED",
    "EPOCH_MAX",
    "NO_PRODUCER_EPOCH",
    "NO_PRODUCER_ID",
    "PREPARED",
    "TransactionMetadata",
    "TransactionState",
    "epoch_exhausted",
]
