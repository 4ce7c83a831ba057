"""The coordinator's markers as the partitions take them (storage/producer_state.py).

A miniature partition per topic-partition validates and records each batch the way a
leader does; the coordinator's decisions are carried to it as WriteTxnMarkers would.
This checks that what the coordinator puts in `TxnMarkers` (producer id, epoch,
coordinator epoch, transaction version) is what the partition side needs to fence
late writes and zombies and to take a reloaded coordinator's resent markers."""

from __future__ import annotations

from broker.transactions.messages import TxnMarkers
from storage.producer_state import EndTxnMarker, ProducerState, Verdict
from storage.records import (
    CONTROL_BIT,
    NO_SEQUENCE,
    TRANSACTIONAL_BIT,
    BatchHeader,
    ControlRecordType,
)
from tests.broker.test_txn_coordinator import P0, P2, Harness


class MiniPartition:
    def __init__(self) -> None:
        self.state = ProducerState()
        self.end = 0

    def _append(self, batch: BatchHeader, marker: EndTxnMarker | None = None) -> None:
        placed = batch.rebased(self.end, 0)
        self.state.record(placed, marker)
        self.end = placed.next_offset

    def produce(self, pid: int, epoch: int, seq: int) -> Verdict:
        """One transactional record from a producer."""
        ts = self.end
        batch = BatchHeader(0, 57, 0, 2, 0, TRANSACTIONAL_BIT, 0, ts, ts, pid, epoch, seq, 1)
        outcome = self.state.validate([batch])
        if outcome.verdict is Verdict.NEW:
            self._append(batch)
        return outcome.verdict

    def write_marker(self, markers: TxnMarkers) -> Verdict:
        kind = ControlRecordType.COMMIT if markers.committed else ControlRecordType.ABORT
        marker = EndTxnMarker(control_type=kind, coordinator_epoch=markers.coordinator_epoch)
        outcome = self.state.validate_marker(
            markers.producer_id,
            markers.producer_epoch,
            marker,
            epoch_bumped=markers.transaction_version == 2,
        )
        if outcome.verdict is Verdict.NEW:
            attributes = TRANSACTIONAL_BIT | CONTROL_BIT
            pid, epoch = markers.producer_id, markers.producer_epoch
            header = BatchHeader(0, 57, 0, 2, 0, attributes, 0, 0, 0, pid, epoch, NO_SEQUENCE, 1)
            self._append(header, marker)
        return outcome.verdict


def deliver(partitions: dict[tuple[str, int], MiniPartition], markers: TxnMarkers) -> None:
    for tp in sorted(markers.partitions):
        assert partitions[tp].write_marker(markers) is Verdict.NEW, (tp, markers)


def test_version_2_markers_fence_the_late_write_of_the_previous_transaction() -> None:
    h = Harness()
    parts = {P0: MiniPartition(), P2: MiniPartition()}
    init = h.init()
    pid, epoch = init.producer_id, init.producer_epoch
    # Transaction 1: added by the partition leaders (v2), written, committed.
    h.add(pid, epoch, P0, P2, transaction_version_2=True)
    assert parts[P0].produce(pid, epoch, 0) is Verdict.NEW
    assert parts[P2].produce(pid, epoch, 0) is Verdict.NEW
    ended = h.end(pid, epoch, True, v2=True)
    (markers,) = h.last.markers
    deliver(parts, markers)
    h.markers_done()
    # Transaction 2 at the epoch EndTxn returned, from sequence 0.
    new_epoch = ended.producer_epoch
    assert new_epoch == epoch + 1
    h.add(pid, new_epoch, P0, transaction_version_2=True)
    assert parts[P0].produce(pid, new_epoch, 0) is Verdict.NEW
    # A write of transaction 1 that arrives late is refused: it cannot land in 2.
    assert parts[P0].produce(pid, epoch, 1) is Verdict.INVALID_PRODUCER_EPOCH
    assert h.add(pid, epoch, P0, verify_only=True).error_code != 0


def test_a_fence_reaches_the_partitions_and_the_zombie_is_refused() -> None:
    h = Harness()
    parts = {P0: MiniPartition(), P2: MiniPartition()}
    zombie = h.init()
    pid, epoch = zombie.producer_id, zombie.producer_epoch
    h.add(pid, epoch, P0, P2)
    assert parts[P0].produce(pid, epoch, 0) is Verdict.NEW
    h.init()  # a second producer with the same transactional id
    (markers,) = h.last.markers
    assert not markers.committed and markers.transaction_version == 1
    deliver(parts, markers)
    h.markers_done()
    assert parts[P0].produce(pid, epoch, 1) is Verdict.INVALID_PRODUCER_EPOCH
    assert parts[P2].produce(pid, epoch, 0) is Verdict.INVALID_PRODUCER_EPOCH
    successor = h.init()
    assert successor.producer_epoch == epoch + 2
    h.add(pid, successor.producer_epoch, P0)
    assert parts[P0].produce(pid, successor.producer_epoch, 0) is Verdict.NEW


def test_a_reloaded_coordinator_resends_markers_the_partitions_take_once() -> None:
    h = Harness(coordinator_epoch=3)
    parts = {P0: MiniPartition(), P2: MiniPartition()}
    init = h.init()
    pid, epoch = init.producer_id, init.producer_epoch
    h.add(pid, epoch, P0, P2, transaction_version_2=True)
    parts[P0].produce(pid, epoch, 0)
    parts[P2].produce(pid, epoch, 0)
    h.end(pid, epoch, False, v2=True)
    (first,) = h.last.markers
    assert parts[P0].write_marker(first) is Verdict.NEW  # P2's marker is lost with the leader
    loaded = h.reloaded(coordinator_epoch=4)
    (again,) = loaded.resume(h.now).markers
    assert again.coordinator_epoch == 4
    assert parts[P0].write_marker(again) is Verdict.NEW  # a retry of a written marker (KAFKA-19999)
    assert parts[P2].write_marker(again) is Verdict.NEW
    # The old coordinator's markers, still in flight, are fenced by the newer epoch.
    assert parts[P2].write_marker(first) is Verdict.TRANSACTION_COORDINATOR_FENCED
