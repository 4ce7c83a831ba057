"""The transaction coordinator of one `__transaction_state` partition.

Pure (no trio, no I/O, no clock): every call takes `now_ms`. Calls that change state
return an `Effects`; the driver carries it out in this order, and only this order:

1. append `effects.records` to the coordinator's partition (acks=all, one batch);
2. then send `effects.replies` (each names the token of the request it answers);
3. then send `effects.markers` (WriteTxnMarkers to the partitions' leaders), and call
   `markers_written` once every partition of a `TxnMarkers` has its marker.

The driver makes one call at a time per coordinator and waits for its append before
the next, so no request sees a decision that is not yet durable (Kafka's
pendingState serves that purpose; here the one-at-a-time driver does). If an append
fails, the in-memory state is ahead of the log: the driver drops this coordinator,
answers NOT_COORDINATOR, and loads a new one by `replay` plus `resume`, which sends
the markers of every transaction found prepared (a commit or abort decided and written,
its markers maybe not), with the new coordinator epoch.

Producer ids come from the controller's blocks through the broker's ProducerIdManager,
which may have to wait; a pure core cannot. A call that needs a fresh id (a new
transactional id, or an epoch that ran out) and was given none decides nothing and
returns `Effects(producer_id_needed=True)`; the driver gets an id and makes the same
call again with `fresh_producer_id` (decision 0019). An id given and not used is
skipped, as a block's unused ids are.

`tick(now_ms)` aborts transactions open longer than their timeout (fencing the
producer with an epoch bump, as an InitProducerId would) and expires transactional
ids idle for transactional_id_expiration_ms (a tombstone); `next_deadline_ms()` says
when it next has something to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.groups.hashing import partition_for
from broker.transactions.decisions import TransactionDecisions
from broker.transactions.effects import Effects, TxnConfig
from broker.transactions.messages import (
    AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse,
    AddPartitionsToTxnBatchResponse,
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    DescribedTransaction,
    EndTxnRequest,
    EndTxnResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    ListTransactionsResponse,
    PartitionResult,
    Token,
    TopicPartition,
)
from broker.transactions.reads import describe, list_transactions
from broker.transactions.records import TxnLogValue, TxnRecord, TxnRecordError
from broker.transactions.state import (
    AT_REST,
    COMPLETED,
    EPOCH_MAX,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    PREPARED,
    TransactionMetadata,
    TransactionState,
    epoch_exhausted,
)
from client.protocol.errors import ErrorCode

OFFSETS_TOPIC = "__consumer_offsets"
_S = TransactionState


class TransactionCoordinator(TransactionDecisions):
    """The transactions of one `__transaction_state` partition and Kafka's requests on
    them; what it decides on its own (ends, fences, timers) is in `TransactionDecisions`."""

    # ------------------------------------------------------------------ helpers

    def owns(self, transactional_id: str) -> bool:
        partitions = self.config.transaction_state_partitions
        return partition_for(transactional_id, partitions) == self.partition

    def _id_error(self, transactional_id: str) -> ErrorCode | None:
        if not transactional_id:
            return ErrorCode.INVALID_REQUEST
        if not self.owns(transactional_id):
            return ErrorCode.NOT_COORDINATOR
        return None

    # ------------------------------------------------------------------ InitProducerId

    def init_producer_id(
        self,
        request: InitProducerIdRequest,
        token: Token,
        now_ms: int,
        fresh_producer_id: int | None = None,
    ) -> Effects:
        fx = Effects()
        code = self._init_error(request)
        if code is not None:
            fx.reply(token, InitProducerIdResponse(error_code=code))
            return fx
        response = self._init(request, now_ms, fresh_producer_id, fx)
        if response is None:
            assert not fx.records, fx
            return Effects(producer_id_needed=True)
        fx.reply(token, response)
        return fx

    def _init_error(self, request: InitProducerIdRequest) -> ErrorCode | None:
        code = self._id_error(request.transactional_id)
        if code is not None:
            return code
        if (request.producer_id == NO_PRODUCER_ID) != (request.producer_epoch == NO_PRODUCER_EPOCH):
            return ErrorCode.INVALID_REQUEST
        if not 0 < request.transaction_timeout_ms <= self.config.transaction_max_timeout_ms:
            return ErrorCode.INVALID_TRANSACTION_TIMEOUT
        return None

    def _init(
        self,
        request: InitProducerIdRequest,
        now_ms: int,
        fresh_producer_id: int | None,
        fx: Effects,
    ) -> InitProducerIdResponse | None:
        meta = self.transactions.get(request.transactional_id)
        if meta is None:
            if fresh_producer_id is None:
                return None
            meta = TransactionMetadata(
                transactional_id=request.transactional_id,
                producer_id=fresh_producer_id,
                timeout_ms=request.transaction_timeout_ms,
                last_update_timestamp_ms=now_ms,
            )
            self.transactions[meta.transactional_id] = meta
            fresh_producer_id = None
        claimed = request.producer_id != NO_PRODUCER_ID
        if claimed and not _may_claim(meta, request.producer_id, request.producer_epoch):
            return InitProducerIdResponse(error_code=ErrorCode.PRODUCER_FENCED)
        if meta.is_(*PREPARED):
            return InitProducerIdResponse(error_code=ErrorCode.CONCURRENT_TRANSACTIONS)
        if meta.is_(_S.ONGOING):
            # The producer retries and then gets a second bump, once the abort is done.
            self._fence_and_abort(meta, now_ms, fx)
            return InitProducerIdResponse(error_code=ErrorCode.CONCURRENT_TRANSACTIONS)
        assert meta.is_(*AT_REST), meta
        known_epochs = (meta.producer_epoch, meta.last_producer_epoch)
        if (
            claimed
            and meta.producer_epoch != NO_PRODUCER_EPOCH
            and request.producer_epoch not in known_epochs
        ):
            return InitProducerIdResponse(error_code=ErrorCode.PRODUCER_FENCED)
        common: dict[str, object] = {
            "timeout_ms": request.transaction_timeout_ms,
            "start_timestamp_ms": -1,  # no transaction since this init
            "last_update_timestamp_ms": now_ms,
        }
        if epoch_exhausted(meta.producer_epoch):
            # Also for a retried bump that reached the last epochs: a transaction must
            # start below them, so that its end or its fence can still bump.
            if fresh_producer_id is None:
                return None
            self._commit(
                meta,
                _S.EMPTY,
                fx,
                producer_id=fresh_producer_id,
                previous_producer_id=meta.producer_id,
                producer_epoch=0,
                last_producer_epoch=meta.producer_epoch if claimed else NO_PRODUCER_EPOCH,
                **common,
            )
        elif not claimed:
            self._commit(
                meta,
                _S.EMPTY,
                fx,
                producer_epoch=meta.producer_epoch + 1,
                last_producer_epoch=NO_PRODUCER_EPOCH,
                **common,
            )
        elif (
            request.producer_epoch == meta.producer_epoch
            or meta.producer_epoch == NO_PRODUCER_EPOCH
        ):
            self._commit(
                meta,
                _S.EMPTY,
                fx,
                producer_epoch=meta.producer_epoch + 1,
                last_producer_epoch=meta.producer_epoch,
                **common,
            )
        else:  # the producer's last epoch: a retried bump gets the same answer
            self._commit(meta, _S.EMPTY, fx, **common)
        return InitProducerIdResponse(
            error_code=ErrorCode.NONE,
            producer_id=meta.producer_id,
            producer_epoch=meta.producer_epoch,
        )

    # ------------------------------------------------------------------ AddPartitionsToTxn

    def add_partitions_to_txn(
        self, request: AddPartitionsToTxnRequest, token: Token, now_ms: int
    ) -> Effects:
        fx = Effects()
        fx.reply(token, self._add_partitions(request, now_ms, fx))
        return fx

    def add_partitions_to_txns(
        self, requests: Iterable[AddPartitionsToTxnRequest], token: Token, now_ms: int
    ) -> Effects:
        """AddPartitionsToTxn v4+: the transactions of one request, each on its own."""
        fx = Effects()
        results = tuple((r.transactional_id, self._add_partitions(r, now_ms, fx)) for r in requests)
        fx.reply(token, AddPartitionsToTxnBatchResponse(results=results))
        return fx

    def _producer_error(
        self, meta: TransactionMetadata | None, producer_id: int, producer_epoch: int
    ) -> ErrorCode | None:
        if meta is None:
            return ErrorCode.INVALID_PRODUCER_ID_MAPPING
        if meta.is_(*PREPARED) and producer_id == meta.next_producer_id != NO_PRODUCER_ID:
            return ErrorCode.CONCURRENT_TRANSACTIONS  # a new id, early: markers still going
        if producer_id != meta.producer_id:
            return ErrorCode.INVALID_PRODUCER_ID_MAPPING
        if producer_epoch != meta.producer_epoch:
            return ErrorCode.PRODUCER_FENCED
        if meta.is_(*PREPARED):
            return ErrorCode.CONCURRENT_TRANSACTIONS
        return None

    def _add_partitions(
        self, request: AddPartitionsToTxnRequest, now_ms: int, fx: Effects
    ) -> AddPartitionsToTxnResponse:
        meta = self.transactions.get(request.transactional_id)
        code = self._id_error(request.transactional_id)
        if code is None and any(not topic or number < 0 for topic, number in request.partitions):
            code = ErrorCode.INVALID_REQUEST
        if code is None:
            code = self._producer_error(meta, request.producer_id, request.producer_epoch)
        if code is not None:
            return _every_partition(request.partitions, code)
        assert meta is not None
        if request.verify_only:
            results = tuple(
                PartitionResult(
                    topic=topic,
                    partition=number,
                    error_code=ErrorCode.NONE
                    if (topic, number) in meta.partitions
                    else ErrorCode.INVALID_TXN_STATE,
                )
                for topic, number in request.partitions
            )
            return AddPartitionsToTxnResponse(error_code=ErrorCode.NONE, results=results)
        wanted = frozenset(request.partitions)
        if wanted and not (meta.is_(_S.ONGOING) and wanted <= meta.partitions):
            starting = not meta.is_(_S.ONGOING)
            if starting and meta.producer_epoch == EPOCH_MAX:
                # A fence took the last epoch: neither this transaction's end nor its
                # fence could bump it. The producer is fenced; InitProducerId rotates.
                return _every_partition(request.partitions, ErrorCode.PRODUCER_FENCED)
            self._commit(
                meta,
                _S.ONGOING,
                fx,
                partitions=meta.partitions | wanted,
                start_timestamp_ms=now_ms if starting else meta.start_timestamp_ms,
                last_update_timestamp_ms=now_ms,
                transaction_version=(
                    (2 if request.transaction_version_2 else 1)
                    if starting
                    else meta.transaction_version
                ),
            )
        return _every_partition(request.partitions, ErrorCode.NONE)

    # ------------------------------------------------------------------ AddOffsetsToTxn

    def offsets_partition(self, group_id: str) -> TopicPartition:
        return OFFSETS_TOPIC, partition_for(group_id, self.config.offsets_topic_partitions)

    def add_offsets_to_txn(
        self, request: AddOffsetsToTxnRequest, token: Token, now_ms: int
    ) -> Effects:
        fx = Effects()
        if not request.group_id:
            fx.reply(token, AddOffsetsToTxnResponse(error_code=ErrorCode.INVALID_REQUEST))
            return fx
        added = self._add_partitions(
            AddPartitionsToTxnRequest(
                transactional_id=request.transactional_id,
                producer_id=request.producer_id,
                producer_epoch=request.producer_epoch,
                partitions=(self.offsets_partition(request.group_id),),
            ),
            now_ms,
            fx,
        )
        fx.reply(token, AddOffsetsToTxnResponse(error_code=added.error_code))
        return fx

    # ------------------------------------------------------------------ EndTxn

    def end_txn(
        self,
        request: EndTxnRequest,
        token: Token,
        now_ms: int,
        fresh_producer_id: int | None = None,
    ) -> Effects:
        fx = Effects()
        code = self._id_error(request.transactional_id)
        meta = self.transactions.get(request.transactional_id)
        if code is None and meta is None:
            code = ErrorCode.INVALID_PRODUCER_ID_MAPPING
        if code is not None:
            fx.reply(token, EndTxnResponse(error_code=code))
            return fx
        assert meta is not None
        if request.transaction_version_2:
            response = self._end_txn_v2(meta, request, now_ms, fresh_producer_id, fx)
        else:
            response = self._end_txn_v1(meta, request, now_ms, fx)
        if response is None:
            assert not fx.records, fx
            return Effects(producer_id_needed=True)
        fx.reply(token, response)
        return fx

    def _end_txn_v1(
        self, meta: TransactionMetadata, request: EndTxnRequest, now_ms: int, fx: Effects
    ) -> EndTxnResponse:
        if request.producer_id != meta.producer_id:
            return EndTxnResponse(error_code=ErrorCode.INVALID_PRODUCER_ID_MAPPING)
        if request.producer_epoch != meta.producer_epoch:
            return EndTxnResponse(error_code=ErrorCode.PRODUCER_FENCED)
        committed = request.committed
        if meta.is_(_S.ONGOING):
            self._prepare_end(meta, committed, now_ms, fx, transaction_version=1)
            code = ErrorCode.NONE
        elif meta.is_(*COMPLETED):  # a retry once decided: the same answer, or a contradiction
            same = meta.is_(_S.COMPLETE_COMMIT) == committed
            code = ErrorCode.NONE if same else ErrorCode.INVALID_TXN_STATE
        elif meta.is_(*PREPARED):
            same = meta.is_(_S.PREPARE_COMMIT) == committed
            code = ErrorCode.CONCURRENT_TRANSACTIONS if same else ErrorCode.INVALID_TXN_STATE
        else:
            code = ErrorCode.INVALID_TXN_STATE  # Empty: nothing to end
        return _end_response(meta, code)

    def _end_txn_v2(
        self,
        meta: TransactionMetadata,
        request: EndTxnRequest,
        now_ms: int,
        fresh_producer_id: int | None,
        fx: Effects,
    ) -> EndTxnResponse | None:
        """Transaction version 2 (KIP-890 part 2): every EndTxn bumps the epoch, so the
        request of an earlier transaction (a late EndTxn, a retry) is told apart from
        the next transaction's by its epoch alone."""
        pid, epoch, committed = request.producer_id, request.producer_epoch, request.committed
        if meta.is_(*PREPARED) and pid == meta.next_producer_id != NO_PRODUCER_ID:
            return EndTxnResponse(error_code=ErrorCode.CONCURRENT_TRANSACTIONS)
        retry_on_overflow = (
            pid == meta.previous_producer_id != NO_PRODUCER_ID
            and epoch == EPOCH_MAX - 1
            and meta.producer_epoch == 0
        )
        if pid != meta.producer_id and not retry_on_overflow:
            return EndTxnResponse(error_code=ErrorCode.INVALID_PRODUCER_ID_MAPPING)
        current = pid == meta.producer_id and epoch == meta.producer_epoch
        retry = retry_on_overflow or (pid == meta.producer_id and meta.producer_epoch == epoch + 1)
        if meta.is_(*PREPARED) and current:
            return EndTxnResponse(error_code=ErrorCode.CONCURRENT_TRANSACTIONS)
        if meta.is_(*AT_REST) and meta.producer_epoch == EPOCH_MAX:
            # Only a fence at the last epoch gets here; no transaction can follow it.
            return EndTxnResponse(error_code=ErrorCode.PRODUCER_FENCED)
        valid = {
            _S.ONGOING: current,
            _S.EMPTY: current,
            _S.PREPARE_COMMIT: retry,
            _S.PREPARE_ABORT: retry,
            _S.COMPLETE_COMMIT: current or retry,
            _S.COMPLETE_ABORT: current or retry,
        }[meta.state]
        if not valid:
            return EndTxnResponse(error_code=ErrorCode.PRODUCER_FENCED)
        if meta.is_(_S.ONGOING):
            return self._bump_and_prepare(meta, committed, now_ms, fresh_producer_id, fx)
        if meta.is_(*PREPARED):
            same = meta.is_(_S.PREPARE_COMMIT) == committed
            code = ErrorCode.CONCURRENT_TRANSACTIONS if same else ErrorCode.INVALID_TXN_STATE
            return EndTxnResponse(error_code=code)
        if retry:  # of the EndTxn that completed: the same answer, or a contradiction
            same = meta.is_(_S.COMPLETE_COMMIT) == committed
            return _end_response(meta, ErrorCode.NONE if same else ErrorCode.INVALID_TXN_STATE)
        if committed:
            return EndTxnResponse(error_code=ErrorCode.INVALID_TXN_STATE)  # nothing open
        return self._bump_and_prepare(meta, False, now_ms, fresh_producer_id, fx)

    def _bump_and_prepare(
        self,
        meta: TransactionMetadata,
        committed: bool,
        now_ms: int,
        fresh_producer_id: int | None,
        fx: Effects,
    ) -> EndTxnResponse | None:
        epoch = meta.producer_epoch
        next_producer_id = NO_PRODUCER_ID
        if epoch_exhausted(epoch):  # the markers take the last epoch; then a new id
            if fresh_producer_id is None:
                return None
            next_producer_id = fresh_producer_id
        self._prepare_end(
            meta,
            committed,
            now_ms,
            fx,
            producer_epoch=epoch + 1,
            last_producer_epoch=epoch,
            next_producer_id=next_producer_id,
            transaction_version=2,
        )
        if meta.is_(*COMPLETED):  # an empty abort, completed at once
            return _end_response(meta, ErrorCode.NONE)
        if next_producer_id != NO_PRODUCER_ID:
            return EndTxnResponse(
                error_code=ErrorCode.NONE, producer_id=next_producer_id, producer_epoch=0
            )
        return _end_response(meta, ErrorCode.NONE)

    # ------------------------------------------------------------------ reads

    def describe_transactions(
        self, transactional_ids: Iterable[str]
    ) -> tuple[DescribedTransaction, ...]:
        return tuple(
            describe(self.transactions.get(tid), tid, self._id_error(tid))
            for tid in transactional_ids
        )

    def list_transactions(
        self,
        state_filters: Iterable[str] = (),
        producer_id_filters: Iterable[int] = (),
        duration_filter_ms: int = -1,
        now_ms: int = 0,
    ) -> ListTransactionsResponse:
        return list_transactions(
            self.transactions.values(),
            state_filters,
            producer_id_filters,
            duration_filter_ms,
            now_ms,
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def replay(
        cls,
        records: Iterable[TxnRecord],
        partition: int,
        coordinator_epoch: int,
        config: TxnConfig | None = None,
    ) -> TransactionCoordinator:
        """The coordinator a partition's records describe (what a new leader loads);
        then `resume` sends the markers of the transactions found prepared."""
        self = cls(partition, coordinator_epoch, config)
        latest: dict[str, TxnLogValue | None] = {}
        for record in records:
            latest[record.transactional_id] = record.value
        for transactional_id in sorted(latest):
            value = latest[transactional_id]
            if value is None:
                continue
            if not self.owns(transactional_id):
                raise TxnRecordError(
                    f"{transactional_id!r} does not belong to partition {partition}"
                )
            state = TransactionState(value.state)
            if (state is _S.ONGOING) != bool(value.partitions) and state not in PREPARED:
                raise TxnRecordError(
                    f"{transactional_id!r}: {state.value} with {len(value.partitions)} partitions"
                )
            self.transactions[transactional_id] = TransactionMetadata.from_value(
                transactional_id, value
            )
        return self

    def durable_state(self) -> dict[str, TxnLogValue]:
        """Per transactional id: what its record says (to compare with a replay)."""
        return {tid: meta.to_value() for tid, meta in sorted(self.transactions.items())}


def _may_claim(meta: TransactionMetadata, producer_id: int, producer_epoch: int) -> bool:
    """KIP-360: may InitProducerId's given id speak for this transactional id? Yes if
    nothing was handed out yet, if it is the current id (its epoch is checked next), or
    if it is the id before a rotation and its epoch ran out (a retried rotation)."""
    return (
        meta.producer_epoch == NO_PRODUCER_EPOCH
        or meta.producer_id == producer_id
        or (meta.previous_producer_id == producer_id and epoch_exhausted(producer_epoch))
    )


def _every_partition(partitions: Iterable[TopicPartition], code: int) -> AddPartitionsToTxnResponse:
    results = tuple(PartitionResult(topic=t, partition=p, error_code=code) for t, p in partitions)
    return AddPartitionsToTxnResponse(error_code=code, results=results)


def _end_response(meta: TransactionMetadata, code: int) -> EndTxnResponse:
    if code != ErrorCode.NONE:
        return EndTxnResponse(error_code=code)
    return EndTxnResponse(
        error_code=code, producer_id=meta.producer_id, producer_epoch=meta.producer_epoch
    )


__all__ = ["OFFSETS_TOPIC", "Effects", "TransactionCoordinator", "TxnConfig"]
