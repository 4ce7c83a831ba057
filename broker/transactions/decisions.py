"""What the transaction coordinator decides on its own: a decided transaction's
records and markers, its completion once the markers are written, the fence of an open
transaction, timeouts and expiry, and the markers a reloaded coordinator resends.

`TransactionDecisions` holds one `__transaction_state` partition's transactions; the
request handlers of `TransactionCoordinator` (coordinator.py) build on it.
"""

from __future__ import annotations

from broker.transactions.effects import Effects, TxnConfig
from broker.transactions.messages import TxnMarkers
from broker.transactions.records import TxnRecord
from broker.transactions.state import (
    AT_REST,
    EPOCH_MAX,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    PREPARED,
    TransactionMetadata,
    TransactionState,
)

_S = TransactionState


class TransactionDecisions:
    def __init__(
        self, partition: int, coordinator_epoch: int, config: TxnConfig | None = None
    ) -> None:
        self.config = config if config is not None else TxnConfig()
        assert 0 <= partition < self.config.transaction_state_partitions, partition
        self.partition = partition
        self.coordinator_epoch = coordinator_epoch  # the partition's leader epoch
        self.transactions: dict[str, TransactionMetadata] = {}

    # ------------------------------------------------------------------ decisions

    @staticmethod
    def _commit(
        meta: TransactionMetadata, to: TransactionState, fx: Effects, **changes: object
    ) -> None:
        meta.transition(to, **changes)
        fx.write(TxnRecord(transactional_id=meta.transactional_id, value=meta.to_value()))

    def _markers(self, meta: TransactionMetadata) -> TxnMarkers:
        assert meta.is_(*PREPARED) and meta.partitions, meta
        return TxnMarkers(
            transactional_id=meta.transactional_id,
            producer_id=meta.producer_id,
            producer_epoch=meta.producer_epoch,
            committed=meta.is_(_S.PREPARE_COMMIT),
            coordinator_epoch=self.coordinator_epoch,
            partitions=meta.partitions,
            transaction_version=meta.transaction_version,
        )

    def _prepare_end(
        self,
        meta: TransactionMetadata,
        committed: bool,
        now_ms: int,
        fx: Effects,
        **changes: object,
    ) -> None:
        target = _S.PREPARE_COMMIT if committed else _S.PREPARE_ABORT
        self._commit(meta, target, fx, last_update_timestamp_ms=now_ms, **changes)
        if meta.partitions:
            fx.markers.append(self._markers(meta))
        else:  # version 2's abort with nothing open: no marker to wait for
            self._complete(meta, now_ms, fx)

    def _complete(self, meta: TransactionMetadata, now_ms: int, fx: Effects) -> None:
        target = _S.COMPLETE_COMMIT if meta.is_(_S.PREPARE_COMMIT) else _S.COMPLETE_ABORT
        changes: dict[str, object] = {"partitions": frozenset(), "last_update_timestamp_ms": now_ms}
        if meta.next_producer_id != NO_PRODUCER_ID:  # the epoch ran out with these markers
            changes.update(
                producer_id=meta.next_producer_id,
                previous_producer_id=meta.producer_id,
                next_producer_id=NO_PRODUCER_ID,
                producer_epoch=0,
                last_producer_epoch=NO_PRODUCER_EPOCH,
            )
        self._commit(meta, target, fx, **changes)

    def _fence_and_abort(self, meta: TransactionMetadata, now_ms: int, fx: Effects) -> None:
        """Abort the open transaction with a bumped epoch: its producer is fenced at every
        partition the markers reach. The producer's own epoch is kept as the last one,
        so that it may recover by InitProducerId with it (KIP-360, KIP-588)."""
        client_epoch = meta.producer_epoch
        assert meta.is_(_S.ONGOING) and client_epoch < EPOCH_MAX, meta
        meta.transition(
            _S.PREPARE_EPOCH_FENCE,
            producer_epoch=client_epoch + 1,
            last_producer_epoch=client_epoch,
        )
        self._prepare_end(meta, False, now_ms, fx)

    # ------------------------------------------------------------------ markers

    def markers_written(
        self, transactional_id: str, producer_id: int, producer_epoch: int, now_ms: int
    ) -> Effects:
        """Every partition of the `TxnMarkers` so named has its marker: complete it.

        A report that matches no prepared transaction (a coordinator reloaded and sent
        the markers again, and both rounds report) changes nothing."""
        fx = Effects()
        meta = self.transactions.get(transactional_id)
        if (
            meta is not None
            and meta.is_(*PREPARED)
            and (meta.producer_id, meta.producer_epoch) == (producer_id, producer_epoch)
        ):
            self._complete(meta, now_ms, fx)
        return fx

    def resume(self, now_ms: int) -> Effects:
        """After a load: the markers of every prepared transaction, sent again."""
        fx = Effects()
        for transactional_id in sorted(self.transactions):
            meta = self.transactions[transactional_id]
            if meta.is_(*PREPARED):
                if meta.partitions:
                    fx.markers.append(self._markers(meta))
                else:
                    self._complete(meta, now_ms, fx)
        return fx

    # ------------------------------------------------------------------ timers

    def tick(self, now_ms: int) -> Effects:
        fx = Effects()
        expiration = self.config.transactional_id_expiration_ms
        for transactional_id in sorted(self.transactions):
            meta = self.transactions[transactional_id]
            if meta.is_(_S.ONGOING) and meta.start_timestamp_ms + meta.timeout_ms < now_ms:
                self._fence_and_abort(meta, now_ms, fx)
            elif meta.is_(*AT_REST) and meta.last_update_timestamp_ms + expiration <= now_ms:
                meta.transition(_S.DEAD)
                fx.write(TxnRecord(transactional_id=transactional_id, value=None))
                del self.transactions[transactional_id]
        return fx

    def next_deadline_ms(self) -> int | None:
        deadlines = []
        for meta in self.transactions.values():
            if meta.is_(_S.ONGOING):
                deadlines.append(meta.start_timestamp_ms + meta.timeout_ms + 1)
            elif meta.is_(*AT_REST):
                deadlines.append(
                    meta.last_update_timestamp_ms + self.config.transactional_id_expiration_ms
                )
        return min(deadlines, default=None)


__all__ = ["TransactionDecisions"]
