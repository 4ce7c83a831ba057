"""The transaction coordinator against a model of what its producers were told.

Random sequences of InitProducerId (a new producer, or a KIP-360 bump by the current
one), AddPartitionsToTxn (adding, or a partition leader's verify_only), EndTxn v5
(commit or abort, KIP-890 part 2), marker completions, clock ticks (timeouts) and
reloads (a fresh coordinator replaying the written records), plus redeliveries of
earlier successful requests (a late EndTxn, a late write) and requests of fenced
producers (zombies). After every step:

- a transaction is decided once: no markers for an id while its previous markers are
  outstanding, and AddPartitions never succeeds then;
- the markers of a decision carry its outcome (commit only from a commit EndTxn, abort
  from an abort, a fence or a timeout), exactly the partitions the model added, and an
  epoch higher than every earlier decision of that producer id; the completion record
  says the same outcome;
- epochs never go back per producer id, in records and in what producers are told;
- a zombie (a producer superseded by another's InitProducerId) and a late request of an
  earlier transaction never succeed and never write a record;
- a verify_only answer says "in the transaction" only for partitions the model added;
- replaying the written records gives the same state, and a reloaded coordinator
  resends exactly the outstanding markers.

The planted bugs at the end (KIP-890's bump taken out, among others) show the machine
finds real mistakes.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker.transactions import TransactionCoordinator, TxnConfig, TxnLogValue, TxnRecord
from broker.transactions import coordinator as coordinator_module
from broker.transactions.effects import Effects
from broker.transactions.messages import (
    AddPartitionsToTxnRequest,
    EndTxnRequest,
    InitProducerIdRequest,
    TxnMarkers,
)
from broker.transactions.state import TransactionMetadata, TransactionState
from client.protocol.errors import ErrorCode

IDS = ("alpha", "beta")
PARTITIONS = (("orders", 0), ("orders", 1), ("stock", 0))
TIMEOUT_MS = 1_000
CONFIG = TxnConfig(transaction_state_partitions=1, transactional_id_expiration_ms=20_000)
Identity = tuple[int, int]
INT16_MAX = 32767


@attrs.define
class ProducerModel:
    """What the producers of one transactional id were told."""

    holder: Identity | None = None  # the current producer's id and epoch
    zombies: set[Identity] = attrs.field(factory=set)  # producers fenced by another's init
    handed_out: set[Identity] = attrs.field(factory=set)
    txn_number: int = 0  # transactions begun so far
    open_partitions: set[tuple[str, int]] = attrs.field(factory=set)
    outstanding: TxnMarkers | None = None
    # Successful requests: (the transaction they belong to, the request), to redeliver.
    delivered: list[tuple[int, Any]] = attrs.field(factory=list)


class TxnCoordinatorMachine(RuleBasedStateMachine):
    VERSION_2 = True  # EndTxn v5+ (KIP-890 part 2); the subclass below runs version 1

    def __init__(self) -> None:
        super().__init__()
        self.coordinator_epoch = 1
        self.coordinator = TransactionCoordinator(0, self.coordinator_epoch, CONFIG)
        self.log: list[TxnRecord] = []
        self.now = 1_000_000
        self.next_producer_id = 0
        self.models = {tid: ProducerModel() for tid in IDS}
        self.highest_marker_epoch: dict[int, int] = {}
        self.highest_epoch: dict[int, int] = {}

    @initialize(beta_epoch=st.sampled_from([None, 0, 32764, 32765, 32766]))
    def seed(self, beta_epoch: int | None) -> None:
        """Beta may start near the end of its epochs (a rotation within a few steps)."""
        if beta_epoch is None:
            return
        self.next_producer_id += 1
        value = TxnLogValue(
            producer_id=self.next_producer_id,
            previous_producer_id=-1,
            next_producer_id=-1,
            producer_epoch=beta_epoch,
            last_producer_epoch=-1,
            timeout_ms=TIMEOUT_MS,
            state="CompleteCommit",
            partitions=frozenset(),
            last_update_timestamp_ms=self.now,
            start_timestamp_ms=-1,
            transaction_version=2,
        )
        self.log.append(TxnRecord(transactional_id="beta", value=value))
        self.coordinator = TransactionCoordinator.replay(
            self.log, 0, self.coordinator_epoch, CONFIG
        )
        self.highest_epoch[self.next_producer_id] = beta_epoch

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: str, request: Any) -> tuple[Any, Effects]:
        fx = getattr(self.coordinator, method)(request, "t", self.now)
        if fx.producer_id_needed:
            assert not fx.records and not fx.replies and not fx.markers
            self.next_producer_id += 1
            fx = getattr(self.coordinator, method)(
                request, "t", self.now, fresh_producer_id=self.next_producer_id
            )
        return fx.reply_to("t"), fx

    def _state(self, tid: str) -> TransactionState | None:
        meta = self.coordinator.transactions.get(tid)
        return None if meta is None else meta.state

    def _absorb(self, fx: Effects, decided: dict[str, bool] | None = None) -> None:
        """Check and take in what a call decided. `decided`: the outcome each id's new
        markers must carry (absent: no new decision may appear for it)."""
        decided = decided or {}
        for record in fx.records:
            key, value = record.to_wire()
            self.log.append(TxnRecord.from_wire(key, value))
            if record.value is not None:
                self._saw_epoch(record.value.producer_id, record.value.producer_epoch)
        for markers in fx.markers:
            tid = markers.transactional_id
            model = self.models[tid]
            assert tid in decided, f"markers nobody decided: {markers}"
            assert model.outstanding is None, f"{tid}: decided twice: {markers}"
            assert markers.committed == decided[tid], markers
            assert markers.partitions == model.open_partitions, (markers, model.open_partitions)
            previous = self.highest_marker_epoch.get(markers.producer_id, -1)
            if self.VERSION_2:
                assert markers.producer_epoch > previous, f"marker epoch not raised: {markers}"
            else:  # version 1 ends at the transaction's epoch: only a fence raises it
                assert markers.producer_epoch >= previous, f"marker epoch went back: {markers}"
            assert markers.coordinator_epoch == self.coordinator_epoch
            self.highest_marker_epoch[markers.producer_id] = markers.producer_epoch
            model.outstanding = markers
            model.open_partitions = set()
        for tid, model in self.models.items():
            prepared = [
                r
                for r in fx.records
                if r.transactional_id == tid and r.value and r.value.state.startswith("Prepare")
            ]
            if prepared and not any(m.transactional_id == tid for m in fx.markers):
                # Nothing was open: completed at once, and only an abort may be empty.
                assert not model.open_partitions and decided.get(tid) is False, prepared
                assert fx.records[-1].value is not None
                assert fx.records[-1].value.state == "CompleteAbort"

    def _saw_epoch(self, producer_id: int, epoch: int) -> None:
        assert 0 <= epoch <= INT16_MAX, (producer_id, epoch)
        assert epoch >= self.highest_epoch.get(producer_id, -1), (producer_id, epoch)
        self.highest_epoch[producer_id] = epoch

    def _hand_out(self, tid: str, identity: Identity) -> None:
        model = self.models[tid]
        self._saw_epoch(*identity)
        assert identity not in model.zombies, f"{tid}: a fenced identity handed out again"
        model.handed_out.add(identity)
        model.holder = identity

    # ------------------------------------------------------------------ producers

    @rule(tid=st.sampled_from(IDS))
    def new_producer_inits(self, tid: str) -> None:
        model = self.models[tid]
        request = InitProducerIdRequest(transactional_id=tid, transaction_timeout_ms=TIMEOUT_MS)
        had_open = self._state(tid) is TransactionState.ONGOING
        reply, fx = self._call("init_producer_id", request)
        self._absorb(fx, {tid: False} if had_open else None)
        if reply.error_code == ErrorCode.NONE:
            model.zombies |= model.handed_out  # the previous producer is fenced for good
            self._hand_out(tid, (reply.producer_id, reply.producer_epoch))
        else:
            assert reply.error_code == ErrorCode.CONCURRENT_TRANSACTIONS, reply
            assert not fx.records or had_open

    @precondition(lambda self: any(m.holder for m in self.models.values()))
    @rule(data=st.data())
    def producer_bumps_its_epoch(self, data: st.DataObject) -> None:
        """KIP-360: InitProducerId naming the producer's own id and epoch."""
        tid = data.draw(st.sampled_from([t for t in IDS if self.models[t].holder]))
        model = self.models[tid]
        assert model.holder is not None
        pid, epoch = model.holder
        request = InitProducerIdRequest(
            transactional_id=tid,
            transaction_timeout_ms=TIMEOUT_MS,
            producer_id=pid,
            producer_epoch=epoch,
        )
        had_open = self._state(tid) is TransactionState.ONGOING
        reply, fx = self._call("init_producer_id", request)
        self._absorb(fx, {tid: False} if had_open else None)
        if reply.error_code == ErrorCode.NONE:
            self._hand_out(tid, (reply.producer_id, reply.producer_epoch))

    @precondition(lambda self: any(m.holder for m in self.models.values()))
    @rule(data=st.data(), verify=st.booleans())
    def producer_adds_partitions(self, data: st.DataObject, verify: bool) -> None:
        tid = data.draw(st.sampled_from([t for t in IDS if self.models[t].holder]))
        model = self.models[tid]
        assert model.holder is not None
        chosen = data.draw(
            st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=2, unique=True)
        )
        request = AddPartitionsToTxnRequest(
            transactional_id=tid,
            producer_id=model.holder[0],
            producer_epoch=model.holder[1],
            partitions=tuple(chosen),
            verify_only=verify,
            transaction_version_2=self.VERSION_2,
        )
        was_open = self._state(tid) is TransactionState.ONGOING
        reply, fx = self._call("add_partitions_to_txn", request)
        self._absorb(fx)
        if verify:
            assert not fx.records
            succeeded = [(r.topic, r.partition) for r in reply.results if r.error_code == 0]
            assert set(succeeded) <= model.open_partitions, (succeeded, model.open_partitions)
            if succeeded:
                model.delivered.append((model.txn_number, request))
            return
        if reply.error_code != ErrorCode.NONE:
            return
        assert model.outstanding is None, f"{tid}: added while its markers are outstanding"
        if not was_open:
            model.txn_number += 1
        model.open_partitions |= set(chosen)
        model.delivered.append((model.txn_number, request))

    @precondition(lambda self: any(m.holder for m in self.models.values()))
    @rule(data=st.data(), committed=st.booleans())
    def producer_ends(self, data: st.DataObject, committed: bool) -> None:
        tid = data.draw(st.sampled_from([t for t in IDS if self.models[t].holder]))
        model = self.models[tid]
        assert model.holder is not None
        request = EndTxnRequest(
            transactional_id=tid,
            producer_id=model.holder[0],
            producer_epoch=model.holder[1],
            committed=committed,
            transaction_version_2=self.VERSION_2,
        )
        reply, fx = self._call("end_txn", request)
        self._absorb(fx, {tid: committed})
        if reply.error_code == ErrorCode.NONE:
            model.delivered.append((model.txn_number, request))
            if self.VERSION_2:
                self._hand_out(tid, (reply.producer_id, reply.producer_epoch))

    @precondition(lambda self: any(m.delivered for m in self.models.values()))
    @rule(data=st.data())
    def an_old_request_arrives(self, data: st.DataObject) -> None:
        """A redelivered earlier request: one of a fenced producer, or of a transaction
        that is over, must neither succeed nor write; any other may be a retry."""
        tid = data.draw(st.sampled_from([t for t in IDS if self.models[t].delivered]))
        model = self.models[tid]
        txn_number, request = data.draw(st.sampled_from(model.delivered))
        identity = (request.producer_id, request.producer_epoch)
        # Version 1 cannot tell a late request of an earlier transaction from one of the
        # current one with the same epoch (the flaw KIP-890 part 2 fixes): only zombies.
        late = txn_number < model.txn_number and self.VERSION_2
        stale = identity in model.zombies or late
        method = "end_txn" if isinstance(request, EndTxnRequest) else "add_partitions_to_txn"
        reply, fx = self._call(method, request)
        if not stale:
            self._absorb(fx, {tid: request.committed} if method == "end_txn" else None)
            adding = method == "add_partitions_to_txn" and not request.verify_only
            if adding and reply.error_code == ErrorCode.NONE:
                model.open_partitions |= set(request.partitions)
            return
        assert not fx.records and not fx.markers, f"stale {request} wrote {fx.records}"
        if method == "end_txn":
            assert reply.error_code != ErrorCode.NONE, f"stale {request} succeeded"
        else:
            assert all(r.error_code != ErrorCode.NONE for r in reply.results), (
                f"stale {request} succeeded: {reply}"
            )

    # ------------------------------------------------------------------ the driver

    @precondition(lambda self: any(m.outstanding for m in self.models.values()))
    @rule(data=st.data())
    def markers_are_written(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from([t for t in IDS if self.models[t].outstanding]))
        model = self.models[tid]
        markers = model.outstanding
        assert markers is not None
        fx = self.coordinator.markers_written(
            tid, markers.producer_id, markers.producer_epoch, self.now
        )
        self._absorb(fx)
        (record,) = fx.records
        assert record.value is not None
        expected = "CompleteCommit" if markers.committed else "CompleteAbort"
        assert record.value.state == expected, (record, markers)
        model.outstanding = None
        # A second report of the same markers changes nothing.
        again = self.coordinator.markers_written(
            tid, markers.producer_id, markers.producer_epoch, self.now
        )
        assert not again.records

    @rule(advance=st.integers(0, 2 * TIMEOUT_MS))
    def time_passes(self, advance: int) -> None:
        self.now += advance
        ongoing = {t for t in IDS if self._state(t) is TransactionState.ONGOING}
        fx = self.coordinator.tick(self.now)
        self._absorb(fx, {tid: False for tid in ongoing})
        for meta in self.coordinator.transactions.values():
            if meta.state is TransactionState.ONGOING:
                assert meta.start_timestamp_ms + meta.timeout_ms >= self.now, (
                    f"not timed out: {meta}"
                )
        for record in fx.records:
            if record.value is None:  # expired: a new producer starts from nothing
                self.models[record.transactional_id].holder = None

    @rule()
    def coordinator_moves(self) -> None:
        """The partition's leadership moves: the new leader replays and resumes."""
        self.coordinator_epoch += 1
        loaded = TransactionCoordinator.replay(self.log, 0, self.coordinator_epoch, CONFIG)
        assert loaded.durable_state() == self.coordinator.durable_state()
        self.coordinator = loaded
        fx = loaded.resume(self.now)
        assert not fx.records
        resent = {m.transactional_id: m for m in fx.markers}
        for tid, model in self.models.items():
            if model.outstanding is None:
                assert tid not in resent
                continue
            assert tid in resent, f"{tid}: outstanding markers not resent"
            assert attrs.evolve(
                resent[tid], coordinator_epoch=model.outstanding.coordinator_epoch
            ) == (model.outstanding), (resent[tid], model.outstanding)
            model.outstanding = resent[tid]

    # ------------------------------------------------------------------ invariants

    @invariant()
    def replay_gives_the_same_state(self) -> None:
        loaded = TransactionCoordinator.replay(self.log, 0, self.coordinator_epoch, CONFIG)
        assert loaded.durable_state() == self.coordinator.durable_state()

    @invariant()
    def the_model_and_the_coordinator_agree_on_what_is_open(self) -> None:
        for tid, model in self.models.items():
            meta = self.coordinator.transactions.get(tid)
            if meta is None:
                assert model.outstanding is None and not model.open_partitions
                continue
            if meta.state is TransactionState.ONGOING:
                assert meta.partitions == model.open_partitions, (meta, model.open_partitions)
            prepared = meta.state in (
                TransactionState.PREPARE_COMMIT,
                TransactionState.PREPARE_ABORT,
            )
            assert prepared == (model.outstanding is not None), (meta, model.outstanding)


STATEFUL_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TxnCoordinatorMachine.TestCase.settings = STATEFUL_SETTINGS
TestTxnCoordinatorAgainstModel = TxnCoordinatorMachine.TestCase


class TxnCoordinatorVersion1Machine(TxnCoordinatorMachine):
    VERSION_2 = False


TxnCoordinatorVersion1Machine.TestCase.settings = settings(STATEFUL_SETTINGS, max_examples=60)
TestTxnCoordinatorVersion1AgainstModel = TxnCoordinatorVersion1Machine.TestCase


# --------------------------------------------------------------------------- planted bugs
#
# Each plants one mistake and requires the machine above to fail; a fixed derandomized
# search without shrinking costs the same on every run.

PLANTED_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _end_without_bump(
    self: TransactionCoordinator,
    meta: TransactionMetadata,
    committed: bool,
    now_ms: int,
    fresh_producer_id: int | None,
    fx: Effects,
) -> Any:
    """EndTxn as before KIP-890 part 2: the epoch stays, so a late EndTxn fits the next."""
    self._prepare_end(meta, committed, now_ms, fx, transaction_version=2)
    return coordinator_module._end_response(meta, ErrorCode.NONE)


def _fence_without_bump(
    self: TransactionCoordinator, meta: TransactionMetadata, now_ms: int, fx: Effects
) -> None:
    meta.transition(TransactionState.PREPARE_EPOCH_FENCE)
    self._prepare_end(meta, False, now_ms, fx)


def _producer_check_without_epoch(
    self: TransactionCoordinator,
    meta: TransactionMetadata | None,
    producer_id: int,
    producer_epoch: int,
) -> ErrorCode | None:
    if meta is None or producer_id != meta.producer_id:
        return ErrorCode.INVALID_PRODUCER_ID_MAPPING
    if meta.state in (TransactionState.PREPARE_COMMIT, TransactionState.PREPARE_ABORT):
        return ErrorCode.CONCURRENT_TRANSACTIONS
    return None


_real_from_value = TransactionMetadata.from_value.__func__  # type: ignore[attr-defined]


def _load_without_last_epoch(
    cls: type, transactional_id: str, value: TxnLogValue
) -> TransactionMetadata:
    """A load that keeps only Kafka's persisted fields: the last epoch is lost."""
    meta: TransactionMetadata = _real_from_value(cls, transactional_id, value)
    meta.last_producer_epoch = -1
    return meta


_real_tick = TransactionCoordinator.tick


def _tick_without_timeouts(self: TransactionCoordinator, now_ms: int) -> Effects:
    """Only expiry: open transactions are left open past their timeout."""
    saved = {tid: meta.timeout_ms for tid, meta in self.transactions.items()}
    for meta in self.transactions.values():
        meta.timeout_ms = 1 << 62
    try:
        return _real_tick(self, now_ms)
    finally:
        for tid, timeout in saved.items():
            if tid in self.transactions:
                self.transactions[tid].timeout_ms = timeout


@pytest.mark.parametrize(
    ("target", "name", "planted"),
    [
        (TransactionCoordinator, "_bump_and_prepare", _end_without_bump),
        (TransactionCoordinator, "_fence_and_abort", _fence_without_bump),
        (TransactionCoordinator, "_producer_error", _producer_check_without_epoch),
        (TransactionMetadata, "from_value", classmethod(_load_without_last_epoch)),
        (TransactionCoordinator, "tick", _tick_without_timeouts),
        (TransactionCoordinator, "resume", lambda self, now_ms: Effects()),
    ],
    ids=[
        "no-epoch-bump",
        "fence-without-bump",
        "add-ignores-epoch",
        "load-drops-last-epoch",
        "timeouts-ignored",
        "resume-forgets-markers",
    ],
)
def test_the_machine_catches_a_planted_mistake(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, planted: object
) -> None:
    """No epoch bump at EndTxn: a late EndTxn ends the next transaction and a late
    write verifies into it (KAFKA-17754). A fence without a bump: the abort's markers
    do not fence anything (their epoch is not above the last decision's). AddPartitions
    without the epoch check: a zombie adds. A load that forgets the last epoch: the
    replay differs. Timeouts ignored: a transaction stays open past its timeout. A
    reload that does not resend the outstanding markers: the decision never completes."""
    monkeypatch.setattr(target, name, planted)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(TxnCoordinatorMachine, settings=PLANTED_SETTINGS)
