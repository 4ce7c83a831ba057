"""The transaction coordinator's pure core (broker/transactions): one test per rule.

The model-based test (random sequences against a model of what producers were told)
is in test_txn_coordinator_model.py."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.groups.hashing import partition_for
from broker.transactions import (
    ALLOWED_TRANSITIONS,
    OFFSETS_TOPIC,
    Effects,
    TransactionCoordinator,
    TransactionMetadata,
    TransactionState,
    TxnConfig,
    TxnLogValue,
    TxnRecord,
    TxnRecordError,
)
from broker.transactions.messages import (
    AddOffsetsToTxnRequest,
    AddPartitionsToTxnBatchResponse,
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    EndTxnRequest,
    EndTxnResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    TxnErrorCode,
    for_client_version,
)
from broker.transactions.records import encode_key, encode_value
from client.protocol.errors import ErrorCode

S = TransactionState
TID = "payments"
TIMEOUT = 60_000
P0 = ("orders", 0)
P1 = ("orders", 1)
P2 = ("stock", 0)
DAY_MS = 24 * 3600 * 1000


class Harness:
    """A coordinator of a one-partition `__transaction_state`, its log and id source."""

    def __init__(self, coordinator_epoch: int = 5, **config: Any) -> None:
        self.config = TxnConfig(transaction_state_partitions=1, **config)
        self.coordinator = TransactionCoordinator(0, coordinator_epoch, self.config)
        self.log: list[TxnRecord] = []
        self.next_producer_id = 1000
        self.now = 1_000_000
        self.last: Effects = Effects()

    def run(self, method: str, request: Any, **kwargs: Any) -> Any:
        fx = getattr(self.coordinator, method)(request, "t", self.now, **kwargs)
        if fx.producer_id_needed:
            assert not fx.records and not fx.replies and not fx.markers
            self.next_producer_id += 1
            fx = getattr(self.coordinator, method)(
                request, "t", self.now, fresh_producer_id=self.next_producer_id, **kwargs
            )
            assert not fx.producer_id_needed
        return self._apply(fx).reply_to("t")

    def _apply(self, fx: Effects) -> Effects:
        for record in fx.records:  # through the wire format, as the log holds them
            key, value = record.to_wire()
            self.log.append(TxnRecord.from_wire(key, value))
        self.last = fx
        return fx

    def init(self, tid: str = TID, timeout: int = TIMEOUT, **kw: Any) -> InitProducerIdResponse:
        request = InitProducerIdRequest(transactional_id=tid, transaction_timeout_ms=timeout, **kw)
        return self.run("init_producer_id", request)

    def add(
        self, pid: int, epoch: int, *partitions: tuple[str, int], tid: str = TID, **kw: Any
    ) -> AddPartitionsToTxnResponse:
        request = AddPartitionsToTxnRequest(
            transactional_id=tid,
            producer_id=pid,
            producer_epoch=epoch,
            partitions=partitions or (P0,),
            **kw,
        )
        return self.run("add_partitions_to_txn", request)

    def end(
        self, pid: int, epoch: int, committed: bool, v2: bool = False, tid: str = TID
    ) -> EndTxnResponse:
        request = EndTxnRequest(
            transactional_id=tid,
            producer_id=pid,
            producer_epoch=epoch,
            committed=committed,
            transaction_version_2=v2,
        )
        return self.run("end_txn", request)

    def markers_done(self, tid: str = TID) -> Effects:
        meta = self.coordinator.transactions[tid]
        fx = self.coordinator.markers_written(tid, meta.producer_id, meta.producer_epoch, self.now)
        return self._apply(fx)

    def tick(self, advance_ms: int) -> Effects:
        self.now += advance_ms
        return self._apply(self.coordinator.tick(self.now))

    def meta(self, tid: str = TID) -> TransactionMetadata:
        return self.coordinator.transactions[tid]

    def reloaded(self, coordinator_epoch: int = 6) -> TransactionCoordinator:
        return TransactionCoordinator.replay(self.log, 0, coordinator_epoch, self.config)


def seeded(state: S, epoch: int, partitions: frozenset[tuple[str, int]] = frozenset()) -> Harness:
    """A harness whose log already holds TID at `epoch` in `state` (far epochs in one step)."""
    h = Harness()
    value = TxnLogValue(
        producer_id=77,
        previous_producer_id=-1,
        next_producer_id=-1,
        producer_epoch=epoch,
        last_producer_epoch=-1,
        timeout_ms=TIMEOUT,
        state=state.value,
        partitions=partitions,
        last_update_timestamp_ms=h.now,
        start_timestamp_ms=h.now if partitions else -1,
        transaction_version=2,
    )
    h.log.append(TxnRecord(transactional_id=TID, value=value))
    h.coordinator = h.reloaded(coordinator_epoch=5)
    return h


def started() -> tuple[Harness, int, int]:
    h = Harness()
    init = h.init()
    assert init.error_code == ErrorCode.NONE
    assert h.add(init.producer_id, init.producer_epoch, P0, P2).error_code == ErrorCode.NONE
    return h, init.producer_id, init.producer_epoch


# --------------------------------------------------------------------------- states


def test_the_transition_table_is_kafkas() -> None:
    expected_previous = {  # Kafka's TransactionState valid previous states
        S.EMPTY: {S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT},
        S.ONGOING: {S.ONGOING, S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT},
        S.PREPARE_COMMIT: {S.ONGOING},
        S.PREPARE_ABORT: {
            S.ONGOING,
            S.PREPARE_EPOCH_FENCE,
            S.EMPTY,
            S.COMPLETE_COMMIT,
            S.COMPLETE_ABORT,
        },
        S.COMPLETE_COMMIT: {S.PREPARE_COMMIT},
        S.COMPLETE_ABORT: {S.PREPARE_ABORT},
        S.DEAD: {S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT},
        S.PREPARE_EPOCH_FENCE: {S.ONGOING},
    }
    previous = {state: {f for f, tos in ALLOWED_TRANSITIONS.items() if state in tos} for state in S}
    assert previous == expected_previous


@pytest.mark.parametrize(
    ("start", "to"),
    [(S.EMPTY, S.PREPARE_COMMIT), (S.PREPARE_COMMIT, S.COMPLETE_ABORT), (S.DEAD, S.EMPTY)],
)
def test_a_move_outside_the_table_is_a_bug(start: S, to: S) -> None:
    meta = TransactionMetadata(
        transactional_id=TID, producer_id=1, timeout_ms=1, last_update_timestamp_ms=0, state=start
    )
    with pytest.raises(AssertionError, match="->"):
        meta.transition(to, partitions=frozenset({P0}))


def test_an_epoch_never_goes_back_for_one_producer_id() -> None:
    meta = TransactionMetadata(
        transactional_id=TID,
        producer_id=1,
        producer_epoch=4,
        timeout_ms=1,
        last_update_timestamp_ms=0,
    )
    with pytest.raises(AssertionError, match="epoch 4 -> 3"):
        meta.transition(S.EMPTY, producer_epoch=3)


# --------------------------------------------------------------------------- InitProducerId


def test_a_new_transactional_id_asks_the_driver_for_a_producer_id() -> None:
    h = Harness()
    request = InitProducerIdRequest(transactional_id=TID, transaction_timeout_ms=TIMEOUT)
    fx = h.coordinator.init_producer_id(request, "t", h.now)
    assert fx.producer_id_needed and not fx.records and not fx.replies
    assert TID not in h.coordinator.transactions  # nothing decided
    fx = h.coordinator.init_producer_id(request, "t", h.now, fresh_producer_id=4242)
    assert fx.reply_to("t") == InitProducerIdResponse(
        error_code=ErrorCode.NONE, producer_id=4242, producer_epoch=0
    )
    (record,) = fx.records
    assert record.value is not None and record.value.state == "Empty"
    assert (record.value.producer_id, record.value.producer_epoch) == (4242, 0)


def test_init_again_bumps_the_epoch_of_the_same_producer_id() -> None:
    h = Harness()
    first = h.init()
    second = h.init(timeout=30_000)
    assert second.producer_id == first.producer_id
    assert second.producer_epoch == first.producer_epoch + 1
    assert h.meta().timeout_ms == 30_000 and h.meta().start_timestamp_ms == -1
    assert h.log[-1].value is not None and h.log[-1].value.producer_epoch == second.producer_epoch


@pytest.mark.parametrize(
    ("timeout", "code"),
    [
        (900_001, ErrorCode.INVALID_TRANSACTION_TIMEOUT),
        (0, ErrorCode.INVALID_TRANSACTION_TIMEOUT),
        (-5, ErrorCode.INVALID_TRANSACTION_TIMEOUT),
        (900_000, ErrorCode.NONE),
    ],
)
def test_transaction_timeout_is_bounded_by_the_broker_maximum(
    timeout: int, code: ErrorCode
) -> None:
    assert Harness().init(timeout=timeout).error_code == code


def test_invalid_init_requests() -> None:
    h = Harness()
    assert h.init(tid="").error_code == ErrorCode.INVALID_REQUEST
    assert h.init(producer_id=5).error_code == ErrorCode.INVALID_REQUEST  # an id without epoch
    assert h.init(producer_epoch=5).error_code == ErrorCode.INVALID_REQUEST
    assert not h.log


def test_a_transactional_id_of_another_partition_is_not_ours() -> None:
    config = TxnConfig()  # 50 partitions
    ours = next(f"tx-{n}" for n in range(1000) if partition_for(f"tx-{n}", 50) == 7)
    other = next(f"tx-{n}" for n in range(1000) if partition_for(f"tx-{n}", 50) != 7)
    coordinator = TransactionCoordinator(7, 1, config)
    assert coordinator.owns(ours) and not coordinator.owns(other)
    request = InitProducerIdRequest(transactional_id=other, transaction_timeout_ms=TIMEOUT)
    reply = coordinator.init_producer_id(request, "t", 0, fresh_producer_id=1).reply_to("t")
    assert reply == InitProducerIdResponse(error_code=ErrorCode.NOT_COORDINATOR)
    end = EndTxnRequest(transactional_id=other, producer_id=1, producer_epoch=0, committed=True)
    assert coordinator.end_txn(end, "t", 0).reply_to("t") == EndTxnResponse(
        error_code=ErrorCode.NOT_COORDINATOR
    )
    (described,) = coordinator.describe_transactions([other])
    assert described.error_code == ErrorCode.NOT_COORDINATOR


def test_init_with_a_transaction_open_fences_and_aborts_it() -> None:
    h, pid, epoch = started()
    assert h.init().error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    meta = h.meta()
    assert meta.state is S.PREPARE_ABORT and meta.producer_epoch == epoch + 1
    (markers,) = h.last.markers
    assert not markers.committed and markers.producer_epoch == epoch + 1
    assert markers.partitions == {P0, P2} and markers.coordinator_epoch == 5
    assert h.log[-1].value is not None and h.log[-1].value.state == "PrepareAbort"
    # The client retries until the abort is done.
    assert h.init().error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    assert len(h.last.records) == 0
    h.markers_done()
    assert h.meta().state is S.COMPLETE_ABORT
    new = h.init()
    assert (new.error_code, new.producer_id, new.producer_epoch) == (ErrorCode.NONE, pid, epoch + 2)
    # The fenced producer is refused everywhere.
    assert h.add(pid, epoch, P1).error_code == ErrorCode.PRODUCER_FENCED
    assert h.end(pid, epoch, True).error_code == ErrorCode.PRODUCER_FENCED
    assert h.end(pid, epoch, False, v2=True).error_code == ErrorCode.PRODUCER_FENCED


def test_init_rotates_the_producer_id_when_the_epoch_runs_out() -> None:
    h = seeded(S.COMPLETE_COMMIT, 32766)
    reply = h.init()
    assert reply.error_code == ErrorCode.NONE
    assert reply.producer_id != 77 and reply.producer_epoch == 0
    assert h.meta().previous_producer_id == 77


def test_kip360_retry_of_a_rotation_with_the_old_id() -> None:
    h = seeded(S.EMPTY, 32766)
    rotated = h.init(producer_id=77, producer_epoch=32766)
    assert rotated.producer_epoch == 0 and rotated.producer_id != 77
    assert h.meta().last_producer_epoch == 32766
    # The response was lost; the producer asks again with what it had.
    again = h.init(producer_id=77, producer_epoch=32766)
    assert (again.producer_id, again.producer_epoch) == (rotated.producer_id, 0)
    assert h.init(producer_id=77, producer_epoch=32000).error_code == ErrorCode.PRODUCER_FENCED


def test_kip360_claims() -> None:
    h = Harness()
    first = h.init()
    pid, epoch = first.producer_id, first.producer_epoch
    bumped = h.init(producer_id=pid, producer_epoch=epoch)
    assert (bumped.producer_id, bumped.producer_epoch) == (pid, epoch + 1)
    # A retry of that bump (its response lost) gets the same answer, no second bump.
    retried = h.init(producer_id=pid, producer_epoch=epoch)
    assert (retried.producer_id, retried.producer_epoch) == (pid, epoch + 1)
    assert h.init(producer_id=pid + 99, producer_epoch=0).error_code == ErrorCode.PRODUCER_FENCED
    h.init()  # another producer: epoch + 2, last epoch unknown
    assert h.init(producer_id=pid, producer_epoch=epoch).error_code == ErrorCode.PRODUCER_FENCED


def test_a_producer_fenced_answer_for_clients_before_kip588() -> None:
    assert for_client_version(ErrorCode.PRODUCER_FENCED, False) == ErrorCode.INVALID_PRODUCER_EPOCH
    assert for_client_version(ErrorCode.PRODUCER_FENCED, True) == ErrorCode.PRODUCER_FENCED
    assert for_client_version(ErrorCode.NONE, False) == ErrorCode.NONE


# --------------------------------------------------------------------------- AddPartitions


def test_add_partitions_checks_the_producer() -> None:
    h = Harness()
    assert h.add(1, 0).error_code == ErrorCode.INVALID_PRODUCER_ID_MAPPING  # unknown id
    init = h.init()
    pid, epoch = init.producer_id, init.producer_epoch
    assert h.add(pid + 1, epoch).error_code == ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert h.add(pid, epoch + 1).error_code == ErrorCode.PRODUCER_FENCED
    assert h.add(pid, epoch, ("", 0)).error_code == ErrorCode.INVALID_REQUEST
    assert h.add(pid, epoch, ("orders", -1)).error_code == ErrorCode.INVALID_REQUEST
    refused = h.add(pid, epoch - 1, P0, P1)
    assert [r.error_code for r in refused.results] == [ErrorCode.PRODUCER_FENCED] * 2
    assert h.meta().state is S.EMPTY


def test_add_partitions_opens_the_transaction_and_grows_it() -> None:
    h = Harness()
    init = h.init()
    pid, epoch = init.producer_id, init.producer_epoch
    h.now += 10
    assert h.add(pid, epoch, P0).error_code == ErrorCode.NONE
    meta = h.meta()
    assert meta.state is S.ONGOING and meta.partitions == {P0}
    assert meta.start_timestamp_ms == h.now
    records_before = len(h.log)
    assert h.add(pid, epoch, P0).error_code == ErrorCode.NONE  # already in: nothing written
    assert len(h.log) == records_before
    h.now += 10
    assert h.add(pid, epoch, P1).error_code == ErrorCode.NONE
    assert h.meta().partitions == {P0, P1} and h.meta().start_timestamp_ms == h.now - 10
    assert h.log[-1].value is not None and h.log[-1].value.partitions == {P0, P1}


def test_add_partitions_waits_while_markers_are_written() -> None:
    h, pid, epoch = started()
    h.end(pid, epoch, True)
    assert h.add(pid, epoch, P1).error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    h.markers_done()
    assert h.add(pid, epoch, P1).error_code == ErrorCode.NONE
    assert h.meta().partitions == {P1}  # a new transaction: the old partitions are gone


def test_verify_only_asks_without_adding() -> None:
    h, pid, epoch = started()
    records = len(h.log)
    reply = h.add(pid, epoch, P0, P1, verify_only=True)
    assert reply.error_code == ErrorCode.NONE
    assert [(r.topic, r.partition, r.error_code) for r in reply.results] == [
        ("orders", 0, ErrorCode.NONE),
        ("orders", 1, ErrorCode.INVALID_TXN_STATE),
    ]
    assert len(h.log) == records and h.meta().partitions == {P0, P2}
    assert h.add(pid, epoch - 1, P0, verify_only=True).error_code == ErrorCode.PRODUCER_FENCED


def test_a_batch_of_transactions_answers_each() -> None:
    h, pid, epoch = started()
    requests = [
        AddPartitionsToTxnRequest(
            transactional_id=TID, producer_id=pid, producer_epoch=epoch, partitions=(P1,)
        ),
        AddPartitionsToTxnRequest(
            transactional_id="nobody", producer_id=pid, producer_epoch=0, partitions=(P1,)
        ),
    ]
    reply = h.coordinator.add_partitions_to_txns(requests, "t", h.now).reply_to("t")
    assert isinstance(reply, AddPartitionsToTxnBatchResponse)
    assert [(tid, r.error_code) for tid, r in reply.results] == [
        (TID, ErrorCode.NONE),
        ("nobody", ErrorCode.INVALID_PRODUCER_ID_MAPPING),
    ]


def test_add_offsets_adds_the_groups_offsets_partition() -> None:
    h = Harness(offsets_topic_partitions=50)
    init = h.init()
    request = AddOffsetsToTxnRequest(
        transactional_id=TID,
        producer_id=init.producer_id,
        producer_epoch=init.producer_epoch,
        group_id="billing",
    )
    assert h.run("add_offsets_to_txn", request).error_code == ErrorCode.NONE
    assert h.meta().partitions == {(OFFSETS_TOPIC, partition_for("billing", 50))}
    stale = AddOffsetsToTxnRequest(
        transactional_id=TID,
        producer_id=init.producer_id,
        producer_epoch=init.producer_epoch + 1,
        group_id="other",
    )
    assert h.run("add_offsets_to_txn", stale).error_code == ErrorCode.PRODUCER_FENCED
    assert len(h.meta().partitions) == 1
    empty = AddOffsetsToTxnRequest(
        transactional_id=TID, producer_id=1, producer_epoch=0, group_id=""
    )
    assert h.run("add_offsets_to_txn", empty).error_code == ErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- EndTxn v1


def test_end_txn_commit_writes_prepare_then_markers_then_complete() -> None:
    h, pid, epoch = started()
    reply = h.end(pid, epoch, True)
    assert reply.error_code == ErrorCode.NONE
    assert h.log[-1].value is not None and h.log[-1].value.state == "PrepareCommit"
    (markers,) = h.last.markers
    assert markers.committed and (markers.producer_id, markers.producer_epoch) == (pid, epoch)
    assert markers.coordinator_epoch == 5 and markers.transaction_version == 1
    assert h.end(pid, epoch, True).error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    assert h.end(pid, epoch, False).error_code == ErrorCode.INVALID_TXN_STATE
    assert h.init().error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    fx = h.markers_done()
    assert h.meta().state is S.COMPLETE_COMMIT and not h.meta().partitions
    assert fx.records[-1].value is not None and fx.records[-1].value.state == "CompleteCommit"
    assert h.end(pid, epoch, True).error_code == ErrorCode.NONE  # a retry
    assert h.end(pid, epoch, False).error_code == ErrorCode.INVALID_TXN_STATE  # a late abort


def test_end_txn_v1_refusals() -> None:
    h = Harness()
    assert h.end(1, 0, True).error_code == ErrorCode.INVALID_PRODUCER_ID_MAPPING
    init = h.init()
    pid, epoch = init.producer_id, init.producer_epoch
    assert h.end(pid, epoch, True).error_code == ErrorCode.INVALID_TXN_STATE  # nothing open
    assert h.end(pid + 1, epoch, True).error_code == ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert h.end(pid, epoch + 1, True).error_code == ErrorCode.PRODUCER_FENCED
    assert h.end(pid, epoch, True, tid="").error_code == ErrorCode.INVALID_REQUEST


def test_markers_written_for_something_else_changes_nothing() -> None:
    h, pid, epoch = started()
    h.end(pid, epoch, False)
    assert not h.coordinator.markers_written(TID, pid, epoch + 1, h.now).records
    assert not h.coordinator.markers_written("other", pid, epoch, h.now).records
    assert h.meta().state is S.PREPARE_ABORT
    h.markers_done()
    assert not h.coordinator.markers_written(TID, pid, epoch, h.now).records  # twice


# --------------------------------------------------------------------------- EndTxn v2 (KIP-890)


def test_end_txn_v2_bumps_the_epoch_for_every_end() -> None:
    h, pid, epoch = started()
    reply = h.end(pid, epoch, True, v2=True)
    assert (reply.error_code, reply.producer_id, reply.producer_epoch) == (
        ErrorCode.NONE,
        pid,
        epoch + 1,
    )
    (markers,) = h.last.markers
    assert markers.producer_epoch == epoch + 1 and markers.transaction_version == 2
    h.markers_done()
    # The next transaction runs at the new epoch.
    assert h.add(pid, epoch + 1, P1).error_code == ErrorCode.NONE
    # A late EndTxn of the first transaction cannot end the second (KAFKA-17754).
    records = len(h.log)
    assert h.end(pid, epoch, True, v2=True).error_code == ErrorCode.PRODUCER_FENCED
    assert h.end(pid, epoch, False, v2=True).error_code == ErrorCode.PRODUCER_FENCED
    assert len(h.log) == records and h.meta().state is S.ONGOING
    # Nor can a late write of the first be verified into the second (part 1).
    assert h.add(pid, epoch, P1, verify_only=True).error_code == ErrorCode.PRODUCER_FENCED


def test_end_txn_v2_retries_and_late_aborts() -> None:
    h, pid, epoch = started()
    h.end(pid, epoch, True, v2=True)
    assert h.end(pid, epoch, True, v2=True).error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    assert h.end(pid, epoch, False, v2=True).error_code == ErrorCode.INVALID_TXN_STATE
    assert h.end(pid, epoch + 1, True, v2=True).error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    h.markers_done()
    retry = h.end(pid, epoch, True, v2=True)
    assert (retry.error_code, retry.producer_epoch) == (ErrorCode.NONE, epoch + 1)
    records = len(h.log)
    assert h.end(pid, epoch, False, v2=True).error_code == ErrorCode.INVALID_TXN_STATE
    assert h.end(pid, epoch - 1, True, v2=True).error_code == ErrorCode.PRODUCER_FENCED
    assert len(h.log) == records


def test_end_txn_v2_abort_with_nothing_open_bumps_and_completes_at_once() -> None:
    h = Harness()
    init = h.init()
    pid, epoch = init.producer_id, init.producer_epoch
    assert h.end(pid, epoch, True, v2=True).error_code == ErrorCode.INVALID_TXN_STATE
    reply = h.end(pid, epoch, False, v2=True)
    assert (reply.error_code, reply.producer_epoch) == (ErrorCode.NONE, epoch + 1)
    assert not h.last.markers
    assert [r.value.state for r in h.last.records if r.value] == ["PrepareAbort", "CompleteAbort"]


def test_end_txn_v2_rotates_the_id_when_the_epoch_runs_out() -> None:
    h = seeded(S.ONGOING, 32766, frozenset({P0}))
    reply = h.end(77, 32766, True, v2=True)
    assert reply.error_code == ErrorCode.NONE
    new_pid = reply.producer_id
    assert new_pid != 77 and reply.producer_epoch == 0
    (markers,) = h.last.markers
    assert (markers.producer_id, markers.producer_epoch) == (77, 32767)
    # The producer is early with its new id: told to wait, not refused.
    assert h.add(new_pid, 0, P1).error_code == ErrorCode.CONCURRENT_TRANSACTIONS
    h.markers_done()
    meta = h.meta()
    assert (meta.producer_id, meta.producer_epoch, meta.previous_producer_id) == (new_pid, 0, 77)
    retry = h.end(77, 32766, True, v2=True)
    assert (retry.error_code, retry.producer_id, retry.producer_epoch) == (
        ErrorCode.NONE,
        new_pid,
        0,
    )
    assert h.add(new_pid, 0, P1).error_code == ErrorCode.NONE


# --------------------------------------------------------------------------- timers


def test_a_transaction_past_its_timeout_is_aborted_with_an_epoch_bump() -> None:
    h, pid, epoch = started()
    assert h.coordinator.next_deadline_ms() == h.now + TIMEOUT + 1
    assert not h.tick(TIMEOUT).records  # at the timeout, not past it
    fx = h.tick(1)
    (markers,) = fx.markers
    assert not markers.committed and markers.producer_epoch == epoch + 1
    assert h.meta().state is S.PREPARE_ABORT
    h.markers_done()
    assert h.add(pid, epoch, P1).error_code == ErrorCode.PRODUCER_FENCED
    # KIP-588: the timed-out producer recovers with its id and epoch.
    recovered = h.init(producer_id=pid, producer_epoch=epoch)
    assert recovered.error_code == ErrorCode.NONE and recovered.producer_epoch > epoch
    assert h.add(pid, recovered.producer_epoch, P1).error_code == ErrorCode.NONE


def test_an_idle_transactional_id_expires_with_a_tombstone() -> None:
    h = Harness()
    h.init()
    h.init(tid="busy")
    h.add(h.meta("busy").producer_id, h.meta("busy").producer_epoch, tid="busy")
    h.now += 7 * DAY_MS - 1
    h.meta("busy").timeout_ms = 900_000  # keep it from timing out first: only expiry counts
    h.meta("busy").start_timestamp_ms = h.now
    assert not [r for r in h.tick(0).records if r.transactional_id == TID]
    fx = h.tick(1)
    assert [(r.transactional_id, r.value) for r in fx.records] == [(TID, None)]
    assert TID not in h.coordinator.transactions and "busy" in h.coordinator.transactions
    assert TID not in h.reloaded().transactions
    fresh = h.init()  # a new life: a new producer id
    assert fresh.error_code == ErrorCode.NONE and fresh.producer_epoch == 0


# --------------------------------------------------------------------------- loading


def test_replay_rebuilds_the_state_and_resumes_markers() -> None:
    h, pid, epoch = started()
    h.init(tid="second")
    h.end(pid, epoch, True, v2=True)
    loaded = h.reloaded(coordinator_epoch=9)
    assert loaded.durable_state() == h.coordinator.durable_state()
    fx = loaded.resume(h.now)
    (markers,) = fx.markers
    assert markers.committed and markers.coordinator_epoch == 9
    assert (markers.producer_id, markers.producer_epoch) == (pid, epoch + 1)
    assert markers.partitions == {P0, P2} and not fx.records


def test_replay_refuses_an_id_of_another_partition() -> None:
    config = TxnConfig()
    other = next(f"tx-{n}" for n in range(1000) if partition_for(f"tx-{n}", 50) != 3)
    record = seeded(S.EMPTY, 1).log[0]
    with pytest.raises(TxnRecordError, match="does not belong"):
        TransactionCoordinator.replay(
            [TxnRecord(transactional_id=other, value=record.value)], 3, 1, config
        )


def test_records_round_trip_and_keys_are_canonical() -> None:
    h, _, _ = started()
    record = h.log[-1]
    key, value = record.to_wire()
    assert TxnRecord.from_wire(key, value) == record
    assert key == encode_key(TID) == cbor2.dumps([0, TID], canonical=True)
    assert TxnRecord.from_wire(key, None).value is None


def _value_item(**changes: Any) -> list[Any]:
    assert seeded(S.EMPTY, 1).log[0].value is not None
    item = cbor2.loads(encode_value(seeded(S.EMPTY, 1).log[0].value))  # type: ignore[arg-type]
    for index, replacement in changes.items():
        item[int(index[1:])] = replacement
    return item


@pytest.mark.parametrize(
    "value",
    [
        cbor2.dumps(_value_item(i0=1)),  # unknown value version
        cbor2.dumps(_value_item(i7=6)),  # Dead is never written
        cbor2.dumps(_value_item(i7=7)),  # nor the fence
        cbor2.dumps(_value_item(i1="77")),  # producer id as text
        cbor2.dumps(_value_item(i4=True)),  # a bool is not an int
        cbor2.dumps(_value_item(i8=[["t", ["0"]]])),  # a partition as text
        cbor2.dumps(_value_item(i11=3)),  # transaction version 3
        cbor2.dumps(_value_item()[:-1]),  # a field missing
        b"\xff\x00",
        cbor2.dumps({"a": 1}),
        b"\x00" * ((1 << 20) + 1),
    ],
)
def test_unreadable_values_are_refused(value: bytes) -> None:
    with pytest.raises(TxnRecordError):
        TxnRecord.from_wire(encode_key(TID), value)


@pytest.mark.parametrize(
    "key", [None, cbor2.dumps([1, TID]), cbor2.dumps([0, 5]), cbor2.dumps([0])]
)
def test_unreadable_keys_are_refused(key: bytes | None) -> None:
    with pytest.raises(TxnRecordError):
        TxnRecord.from_wire(key, None)


# --------------------------------------------------------------------------- reads


def test_describe_and_list_transactions() -> None:
    h, pid, epoch = started()
    h.init(tid="idle")
    (described, missing, empty) = h.coordinator.describe_transactions([TID, "nope", ""])
    assert described.error_code == ErrorCode.NONE and described.state == "Ongoing"
    assert (described.producer_id, described.producer_epoch) == (pid, epoch)
    assert described.topics == (("orders", (0,)), ("stock", (0,)))
    assert described.transaction_timeout_ms == TIMEOUT
    assert described.transaction_start_time_ms == h.now
    assert missing.error_code == TxnErrorCode.TRANSACTIONAL_ID_NOT_FOUND == 105
    assert empty.error_code == ErrorCode.INVALID_REQUEST
    listing = h.coordinator.list_transactions
    assert [t.transactional_id for t in listing().transactions] == ["idle", TID]
    ongoing = listing(state_filters=["Ongoing", "Sleeping"])
    assert [t.transactional_id for t in ongoing.transactions] == [TID]
    assert ongoing.unknown_state_filters == ("Sleeping",)
    by_pid = listing(producer_id_filters=[h.meta("idle").producer_id])
    assert [t.transactional_id for t in by_pid.transactions] == ["idle"]
    started_long_ago = listing(duration_filter_ms=9, now_ms=h.now + 10).transactions
    assert [t.state for t in started_long_ago] == ["Ongoing"]  # "idle" never started one
    assert not listing(duration_filter_ms=10, now_ms=h.now + 10).transactions


# --------------------------------------------------------------------------- the last epochs


def test_a_fence_at_the_last_epoch_leaves_the_producer_only_init() -> None:
    h = seeded(S.ONGOING, 32766, frozenset({P0}))
    h.tick(TIMEOUT + 1)  # aborted: the fence takes epoch 32767
    h.markers_done()
    assert h.meta().producer_epoch == 32767 and h.meta().state is S.COMPLETE_ABORT
    # No transaction can start at 32767: its end and its fence could not bump.
    assert h.add(77, 32767, P1).error_code == ErrorCode.PRODUCER_FENCED
    assert h.end(77, 32766, False, v2=True).error_code == ErrorCode.PRODUCER_FENCED
    assert h.end(77, 32767, False, v2=True).error_code == ErrorCode.PRODUCER_FENCED
    recovered = h.init(producer_id=77, producer_epoch=32766)  # KIP-588, with a new id
    assert recovered.error_code == ErrorCode.NONE
    assert recovered.producer_id != 77 and recovered.producer_epoch == 0


def test_a_retried_bump_into_the_last_epochs_rotates() -> None:
    h = seeded(S.EMPTY, 32765)
    bumped = h.init(producer_id=77, producer_epoch=32765)
    assert (bumped.producer_id, bumped.producer_epoch) == (77, 32766)
    retried = h.init(producer_id=77, producer_epoch=32765)  # the answer was lost
    assert retried.producer_id != 77 and retried.producer_epoch == 0


def test_an_unset_producer_id_is_never_the_previous_one() -> None:
    h, pid, epoch = started()
    h.end(pid, epoch, True, v2=True)
    h.markers_done()
    h.meta().producer_epoch = 0  # as after a rotation, but with no previous id
    assert h.end(-1, 32766, True, v2=True).error_code == ErrorCode.INVALID_PRODUCER_ID_MAPPING


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["init", "add", "verify", "end", "end2", "offsets", "tick", "done"]),
            st.sampled_from([TID, "other", ""]),
            st.integers(-2, 2) | st.integers(-(2**63), 2**63 - 1),
            st.integers(-2, 3) | st.sampled_from([32766, 32767, 32768, -32768]),
            st.integers(-1, 2_000_000),
        ),
        max_size=30,
    )
)
def test_any_request_gets_an_answer_and_the_log_replays(
    ops: list[tuple[str, str, int, int, int]],
) -> None:
    """Whatever the fields, each request is answered with an error code (no exception),
    and the records written replay to the same state."""
    h = Harness()
    for op, tid, pid, epoch, number in ops:
        h.now += number % 100_000
        if op == "init":
            claim = {"producer_id": pid, "producer_epoch": epoch} if number % 2 else {}
            reply: Any = h.init(tid=tid, timeout=number, **claim)
        elif op in ("add", "verify"):
            reply = h.add(pid, epoch, ("t", number % 3), tid=tid, verify_only=op == "verify")
        elif op in ("end", "end2"):
            reply = h.end(pid, epoch, bool(number % 2), v2=op == "end2", tid=tid)
        elif op == "offsets":
            request = AddOffsetsToTxnRequest(
                transactional_id=tid, producer_id=pid, producer_epoch=epoch, group_id=str(number)
            )
            reply = h.run("add_offsets_to_txn", request)
        elif op == "tick":
            h.tick(number)
            continue
        else:
            if tid in h.coordinator.transactions:
                h.markers_done(tid)
            continue
        assert isinstance(reply.error_code, int)
        assert h.reloaded().durable_state() == h.coordinator.durable_state()


def test_a_claim_on_a_new_transactional_id_starts_it() -> None:
    """A producer moving to transactions names its idempotent id: a new id is given."""
    h = Harness()
    reply = h.init(producer_id=5, producer_epoch=3)
    assert reply.error_code == ErrorCode.NONE and reply.producer_epoch == 0
    assert reply.producer_id != 5


def test_resume_completes_a_prepared_abort_with_nothing_to_mark() -> None:
    h = seeded(S.PREPARE_ABORT, 8)
    fx = h.coordinator.resume(h.now)
    assert not fx.markers
    assert [r.value.state for r in fx.records if r.value] == ["CompleteAbort"]
    assert h.meta().state is S.COMPLETE_ABORT
