"""Producer state: one test per rule of Kafka's ProducerStateManager, then snapshots."""

from __future__ import annotations

import copy
import logging
import random

import attrs
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from storage import producer_state
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.producer_state import (
    BATCHES_RETAINED,
    PRODUCER_ID_EXPIRATION_MS,
    SEQUENCE_MAX,
    TRANSACTIONAL_ID_EXPIRATION_MS,
    BatchMetadata,
    CompletedTxn,
    CorruptSnapshotError,
    EndTxnMarker,
    LoggedBatch,
    Origin,
    ProducerEntry,
    ProducerState,
    ProducerStateManager,
    StateView,
    Verdict,
    aborted_transactions_between,
    assigned_headers,
    build_marker_batch,
    decode_snapshot,
    encode_snapshot,
    in_sequence,
    list_snapshot_offsets,
    load_latest_snapshot,
    log_reader,
    logged_batches,
    snapshot_file_name,
    write_snapshot,
)
from storage.records import (
    CONTROL_BIT,
    NO_SEQUENCE,
    TRANSACTIONAL_BIT,
    BatchHeader,
    ControlRecordType,
    RecordInput,
    build_batch,
    read_header,
)
from storage.txn_index import AbortedTxn

COMMIT = EndTxnMarker(control_type=ControlRecordType.COMMIT, coordinator_epoch=0)
ABORT = EndTxnMarker(control_type=ControlRecordType.ABORT, coordinator_epoch=0)
DIRECTORY = "/data/topic-0"


def header(
    pid: int,
    epoch: int,
    seq: int,
    count: int = 1,
    *,
    offset: int = 0,
    txn: bool = False,
    ts: int = 0,
    control: bool = False,
) -> BatchHeader:
    """A batch header without its bytes: the producer state reads nothing else."""
    attributes = (TRANSACTIONAL_BIT if txn else 0) | (CONTROL_BIT if control else 0)
    last_delta = count - 1
    return BatchHeader(
        offset, 49 + 8 * count, 0, 2, 0, attributes, last_delta, ts, ts, pid, epoch, seq, count
    )


def marker_header(pid: int, epoch: int, *, offset: int, ts: int = 0) -> BatchHeader:
    return header(pid, epoch, NO_SEQUENCE, offset=offset, txn=True, ts=ts, control=True)


class Appender:
    """A partition in miniature: validate, then append at the log end, then record."""

    def __init__(self, state: ProducerState | None = None) -> None:
        self.state = state if state is not None else ProducerState()
        self.end = self.state.map_end_offset
        self.log: list[LoggedBatch] = []

    def send(self, pid: int, epoch: int, seq: int, count: int = 1, **kwargs: object) -> Verdict:
        batch = header(pid, epoch, seq, count, **kwargs)  # type: ignore[arg-type]
        outcome = self.state.validate([batch])
        if outcome.verdict is Verdict.NEW:
            placed = batch.rebased(self.end, 0)
            self.state.record(placed)
            self.log.append(LoggedBatch(placed))
            self.end = placed.next_offset
        return outcome.verdict

    def end_txn(self, pid: int, epoch: int, marker: EndTxnMarker, ts: int = 0) -> AbortedTxn | None:
        assert self.state.validate_marker(pid, epoch, marker).is_new
        placed = marker_header(pid, epoch, offset=self.end, ts=ts)
        self.log.append(LoggedBatch(placed, marker))
        self.end = placed.next_offset
        return self.state.record(placed, marker)


# --------------------------------------------------------------------------- sequences


def test_an_unknown_producer_starts_at_any_sequence() -> None:
    # KIP-360: the broker no longer answers UNKNOWN_PRODUCER_ID; the state may have
    # been deleted with its records, so the first batch sets the sequence.
    partition = Appender()
    assert partition.send(7, 0, 42) is Verdict.NEW
    assert partition.send(7, 0, 43) is Verdict.NEW


def test_sequences_must_follow_on() -> None:
    partition = Appender()
    assert partition.send(1, 0, 0, count=3) is Verdict.NEW
    assert partition.send(1, 0, 4) is Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER  # a gap
    assert partition.send(1, 0, 2, count=2) is Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER  # overlap
    assert partition.send(1, 0, 3) is Verdict.NEW


@pytest.mark.parametrize("back", range(1, BATCHES_RETAINED + 1))
def test_a_duplicate_of_each_of_the_last_five_batches_is_answered_with_its_offsets(
    back: int,
) -> None:
    partition = Appender()
    partition.send(9, 0, 0, count=2)  # the 6th-oldest once seven batches were sent
    for batch in range(6):
        assert partition.send(9, 0, 2 + 3 * batch, count=3, ts=100 + batch) is Verdict.NEW
    original = partition.log[-back].header
    retry = header(9, 0, original.base_sequence, 3)
    outcome = partition.state.validate([retry])
    assert outcome.verdict is Verdict.DUPLICATE
    assert outcome.duplicate is not None
    assert (outcome.duplicate.first_offset, outcome.duplicate.last_offset) == (
        original.base_offset,
        original.last_offset,
    )
    assert outcome.duplicate.max_timestamp == original.max_timestamp
    assert Verdict.DUPLICATE.error_code == 0


def test_the_sixth_oldest_batch_is_out_of_order() -> None:
    partition = Appender()
    for seq in range(BATCHES_RETAINED + 1):
        partition.send(9, 0, seq)
    outcome = partition.state.validate([header(9, 0, 0)])
    assert outcome.verdict is Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert outcome.verdict.error_code == 45


def test_a_retry_with_a_different_range_is_not_a_duplicate() -> None:
    partition = Appender()
    partition.send(9, 0, 0, count=3)
    assert partition.state.validate([header(9, 0, 0, 2)]).verdict is (
        Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER
    )


def test_sequences_wrap_at_two_to_the_31() -> None:
    assert in_sequence(SEQUENCE_MAX, 0)
    assert not in_sequence(SEQUENCE_MAX, 1)
    partition = Appender()
    assert partition.send(3, 0, SEQUENCE_MAX - 1, count=3) is Verdict.NEW  # ..MAX-1, MAX, 0
    assert partition.state.entry(3).last_sequence == 0  # type: ignore[union-attr]
    assert partition.send(3, 0, 1) is Verdict.NEW
    # The wrapped batch is still recognised when retried.
    assert partition.state.validate([header(3, 0, SEQUENCE_MAX - 1, 3)]).verdict is (
        Verdict.DUPLICATE
    )
    plain = Appender()
    plain.send(4, 0, SEQUENCE_MAX)
    assert plain.send(4, 0, 0) is Verdict.NEW


def test_a_batch_with_a_producer_id_needs_a_sequence() -> None:
    outcome = ProducerState().validate([header(1, 0, NO_SEQUENCE)])
    assert outcome.verdict is Verdict.INVALID_RECORD
    assert ProducerState().validate([header(-1, -1, NO_SEQUENCE, txn=True)]).verdict is (
        Verdict.INVALID_RECORD
    )
    assert ProducerState().validate([header(-1, -1, NO_SEQUENCE)]).is_new


def test_batches_of_one_append_are_checked_against_each_other() -> None:
    state = ProducerState()
    state.record(header(1, 0, 0, offset=0))
    assert state.validate([header(1, 0, 1), header(1, 0, 2)]).is_new
    assert state.validate([header(1, 0, 1), header(1, 0, 3)]).verdict is (
        Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER
    )
    # A duplicate anywhere makes the whole append a duplicate.
    assert state.validate([header(2, 0, 0), header(1, 0, 0)]).verdict is Verdict.DUPLICATE
    assert state.entry(2) is None  # validate changes nothing


# --------------------------------------------------------------------------- epochs


def test_an_older_epoch_is_fenced() -> None:
    partition = Appender()
    partition.send(5, 3, 0)
    outcome = partition.state.validate([header(5, 2, 1)])
    assert outcome.verdict is Verdict.INVALID_PRODUCER_EPOCH
    assert outcome.verdict.error_code == 47
    # A follower copies what its leader wrote.
    assert partition.state.validate([header(5, 2, 1)], Origin.REPLICATION).is_new


def test_a_new_epoch_starts_at_sequence_zero() -> None:
    partition = Appender()
    partition.send(5, 0, 0, count=4)
    assert partition.send(5, 1, 4) is Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert partition.send(5, 1, 0) is Verdict.NEW
    # The old epoch's batches are forgotten: their retry is fenced, not a duplicate.
    assert partition.state.validate([header(5, 0, 0, 4)]).verdict is Verdict.INVALID_PRODUCER_EPOCH
    assert len(partition.state.entry(5).batches) == 1  # type: ignore[union-attr]


def test_a_coordinator_write_checks_the_epoch_only() -> None:
    state = ProducerState()
    state.record(header(5, 1, 0, offset=0))
    assert state.validate([header(5, 1, 9)], Origin.COORDINATOR).is_new
    assert state.validate([header(5, 0, 9)], Origin.COORDINATOR).verdict is (
        Verdict.INVALID_PRODUCER_EPOCH
    )


# --------------------------------------------------------------------------- transactions


def test_an_open_transaction_holds_the_last_stable_offset() -> None:
    partition = Appender()
    partition.send(1, 0, 0)  # offset 0, not transactional
    partition.send(2, 0, 0, txn=True)  # offset 1 opens producer 2's transaction
    partition.send(2, 0, 1, txn=True)
    assert partition.state.first_undecided_offset() == 1
    assert partition.state.last_stable_offset(high_watermark=3) == 1
    assert partition.state.last_stable_offset(high_watermark=1) == 1
    assert partition.state.last_stable_offset(high_watermark=0) == 0


def test_commit_moves_the_lso_once_the_marker_is_replicated() -> None:
    partition = Appender()
    partition.send(2, 0, 0, txn=True)  # 0
    assert partition.end_txn(2, 0, COMMIT) is None  # marker at 1: committed, not indexed
    assert partition.state.first_undecided_offset() is None
    # Until the marker is below the high-water mark, it could still be truncated.
    assert partition.state.last_stable_offset(high_watermark=1) == 0
    assert partition.state.last_stable_offset(high_watermark=2) == 2
    partition.state.on_high_watermark(2)
    assert partition.state.view().unreplicated == ()


def test_abort_returns_the_transaction_index_entry() -> None:
    partition = Appender()
    partition.send(2, 0, 0, txn=True)  # 0
    partition.send(3, 0, 0, txn=True)  # 1
    partition.send(2, 0, 1, txn=True)  # 2
    aborted = partition.end_txn(2, 0, ABORT)  # 3; producer 3's transaction still open
    assert aborted == AbortedTxn(producer_id=2, first_offset=0, last_offset=3, last_stable_offset=1)
    assert partition.state.last_stable_offset(high_watermark=4) == 1
    aborted = partition.end_txn(3, 0, ABORT)  # 4: nothing else open
    assert aborted == AbortedTxn(producer_id=3, first_offset=1, last_offset=4, last_stable_offset=5)
    assert partition.state.last_stable_offset(high_watermark=5) == 5


def test_a_marker_of_an_empty_transaction_is_not_indexed() -> None:
    partition = Appender()
    partition.send(2, 0, 0)
    assert partition.end_txn(2, 0, ABORT) is None
    assert partition.state.last_stable_offset(high_watermark=2) == 2


def test_non_transactional_writes_inside_a_transaction_are_refused() -> None:
    partition = Appender()
    partition.send(2, 0, 0, txn=True)
    outcome = partition.state.validate([header(2, 0, 1)])
    assert outcome.verdict is Verdict.INVALID_TXN_STATE
    assert outcome.verdict.error_code == 48


def test_marker_epochs_and_coordinator_epochs() -> None:
    state = Appender()
    state.send(2, 4, 0, txn=True)
    assert state.state.validate_marker(2, 3, COMMIT).verdict is Verdict.INVALID_PRODUCER_EPOCH
    assert state.state.validate_marker(2, 4, COMMIT).is_new
    # Transaction version 2 (KIP-890): the marker carries a bumped epoch.
    assert state.state.validate_marker(2, 4, COMMIT, epoch_bumped=True).verdict is (
        Verdict.INVALID_PRODUCER_EPOCH
    )
    assert state.state.validate_marker(2, 5, COMMIT, epoch_bumped=True).is_new
    later = EndTxnMarker(control_type=ControlRecordType.COMMIT, coordinator_epoch=7)
    placed = marker_header(2, 5, offset=state.end)
    state.state.record(placed, later)
    # The retry of a bumped marker already written is taken (KAFKA-19999).
    assert state.state.validate_marker(2, 5, later, epoch_bumped=True).is_new
    fenced = state.state.validate_marker(2, 5, COMMIT)  # coordinator epoch 0 < 7
    assert fenced.verdict is Verdict.TRANSACTION_COORDINATOR_FENCED
    # After a bumped marker the producer starts the new epoch at sequence 0.
    assert state.state.validate([header(2, 5, 1)]).verdict is Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert state.state.validate([header(2, 5, 0)]).is_new


def test_a_follower_keeps_a_transaction_open_through_a_stray_batch() -> None:
    state = ProducerState()
    state.record(header(2, 0, 0, offset=0, txn=True))
    state.record(header(2, 0, 1, offset=1))  # refused on a leader; copied by a follower
    assert state.first_undecided_offset() == 0


def test_assigned_headers_follow_the_log() -> None:
    headers = [header(1, 0, 0, 3), header(1, 0, 3, 2)]
    placed = assigned_headers(headers, 10, leader_epoch=4)
    assert [(h.base_offset, h.last_offset, h.partition_leader_epoch) for h in placed] == [
        (10, 12, 4),
        (13, 14, 4),
    ]


# --------------------------------------------------------------------------- removal


def test_truncate_start_keeps_producers_and_bounds_the_lso() -> None:
    partition = Appender()
    partition.send(2, 0, 0, txn=True)  # 0, never decided
    partition.send(1, 0, 0)  # 1
    partition.send(1, 0, 1)  # 2
    partition.state.truncate_start(2)
    assert partition.state.entry(1) is not None
    assert partition.send(1, 0, 3) is Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert partition.state.last_stable_offset(high_watermark=3) == 2


def test_idle_producers_expire() -> None:
    partition = Appender()
    partition.send(1, 0, 0, ts=1_000)  # idempotent
    partition.send(2, 0, 0, ts=1_000, txn=True)  # open transaction
    partition.send(3, 0, 0, ts=1_000, txn=True)
    partition.end_txn(3, 0, COMMIT, ts=1_000)  # transactional, decided
    state = partition.state
    assert state.expire(1_000 + PRODUCER_ID_EXPIRATION_MS - 1) == []
    assert state.expire(1_000 + PRODUCER_ID_EXPIRATION_MS) == [1]
    assert state.expire(1_000 + TRANSACTIONAL_ID_EXPIRATION_MS - 1) == []
    assert state.expire(1_000 + TRANSACTIONAL_ID_EXPIRATION_MS) == [3]
    assert state.expire(10**15) == []  # an open transaction keeps its producer
    assert state.entry(2) is not None
    # An expired producer is unknown again: any sequence is taken.
    assert partition.send(1, 0, 17, ts=10**15) is Verdict.NEW


# --------------------------------------------------------------------------- snapshots


def sample_state() -> ProducerState:
    partition = Appender()
    for seq in range(7):
        partition.send(1, 0, seq, ts=seq)
    partition.send(2, 3, 0, txn=True, ts=50)
    partition.send(4, 0, 0, txn=True, ts=51)
    partition.end_txn(4, 0, ABORT, ts=52)
    partition.send(5, 1, SEQUENCE_MAX, ts=53)
    return partition.state


def test_a_snapshot_holds_every_retained_batch() -> None:
    state = sample_state()
    restored = decode_snapshot(encode_snapshot(state))
    assert restored.view() == state.view()
    assert len(restored.entry(1).batches) == BATCHES_RETAINED  # type: ignore[union-attr]
    assert restored.validate([header(1, 0, 2)]).verdict is Verdict.DUPLICATE


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda data: data[:-1], "CRC32C"),
        (lambda data: data[:3], "no header"),
        (lambda data: b"\x00\x02" + data[2:], "version"),
        (lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:], "CRC32C"),
    ],
)
def test_a_damaged_snapshot_is_refused(damage: object, match: str) -> None:
    data = encode_snapshot(sample_state())
    assert callable(damage)
    with pytest.raises(CorruptSnapshotError, match=match):
        decode_snapshot(damage(data))


def test_a_snapshot_with_a_valid_crc_but_impossible_content_is_refused() -> None:
    from crc32c import crc32c

    body = bytearray(encode_snapshot(sample_state())[6:])
    body[8:12] = (10**6).to_bytes(4, "big")  # producer count beyond the file
    forged = b"\x00\x01" + crc32c(bytes(body)).to_bytes(4, "big") + bytes(body)
    with pytest.raises(CorruptSnapshotError, match="count"):
        decode_snapshot(forged)


def test_load_skips_a_corrupt_snapshot_for_an_older_one(caplog: pytest.LogCaptureFixture) -> None:
    fs = MemoryFileSystem()
    fs.makedirs(DIRECTORY)
    partition = Appender()
    partition.send(1, 0, 0)
    write_snapshot(fs, DIRECTORY, partition.state)  # at 1
    partition.send(1, 0, 1)
    partition.send(1, 0, 2)
    write_snapshot(fs, DIRECTORY, partition.state)  # at 3
    fs.corrupt(f"{DIRECTORY}/{snapshot_file_name(3)}", 10)
    with caplog.at_level(logging.WARNING):
        manager, aborted = ProducerStateManager.load(
            fs,
            DIRECTORY,
            log_start_offset=0,
            log_end_offset=3,
            read_batches=lambda start, end: [
                b for b in partition.log if start <= b.header.base_offset < end
            ],
        )
    assert "producer snapshot 3 ignored" in caplog.text
    assert list_snapshot_offsets(fs, DIRECTORY) == [1]
    assert manager.state.view() == partition.state.view()
    assert aborted == []


def test_a_snapshot_outside_the_log_is_not_used() -> None:
    fs = MemoryFileSystem()
    fs.makedirs(DIRECTORY)
    state = sample_state()
    write_snapshot(fs, DIRECTORY, state)
    end = state.map_end_offset
    assert load_latest_snapshot(fs, DIRECTORY, max_offset=end - 1) is None
    assert load_latest_snapshot(fs, DIRECTORY, log_start_offset=end + 1) is None
    assert load_latest_snapshot(fs, DIRECTORY, max_offset=end) is not None


# --------------------------------------------------------------------------- with a real log

CONFIG = LogConfig(segment_bytes=400, index_interval_bytes=100)


def data_batch(pid: int, epoch: int, seq: int, *, txn: bool = False, ts: int = 0) -> bytes:
    records = [RecordInput(timestamp=ts, value=f"{pid}-{seq}".encode())]
    return build_batch(
        records, producer_id=pid, producer_epoch=epoch, base_sequence=seq, is_transactional=txn
    )


def append(log: SegmentedLog, manager: ProducerStateManager, batch: bytes) -> None:
    """What the partition will do: validate, append, record; snapshot on a roll."""
    before = read_header(batch)
    if before.is_control:
        marker = next(logged_batches(batch)).marker
        assert marker is not None
        assert manager.state.validate_marker(
            before.producer_id, before.producer_epoch, marker
        ).is_new
    else:
        marker = None
        assert manager.validate([before]).is_new
    segments = len(log.segments)
    info = log.append(batch, leader_epoch=0)
    if len(log.segments) != segments:
        # The roll happened before this batch: the snapshot is of the state before it.
        manager.take_snapshot()
    (placed,) = assigned_headers([before], info.first_offset, 0)
    manager.record(placed, marker)


def test_recovery_replays_only_the_batches_after_the_latest_snapshot() -> None:
    fs = MemoryFileSystem()
    log = SegmentedLog.open(DIRECTORY, CONFIG, fs=fs)
    manager, _ = ProducerStateManager.load(
        fs, DIRECTORY, log_start_offset=0, log_end_offset=0, read_batches=log_reader(log)
    )
    for seq in range(12):
        append(log, manager, data_batch(1, 0, seq, txn=seq >= 10))
        if seq == 10:
            abort = build_marker_batch(ABORT, producer_id=1, producer_epoch=0, timestamp=0)
            append(log, manager, abort)
    log.flush()
    assert len(log.segments) > 2
    assert list_snapshot_offsets(fs, DIRECTORY) == [s.base_offset for s in log.segments[1:]]
    expected = manager.state.view()
    log.close()
    fs.crash()

    reopened = SegmentedLog.open(DIRECTORY, CONFIG, fs=fs)
    replayed: list[int] = []
    reader = log_reader(reopened)

    def counting(start: int, end: int) -> list[LoggedBatch]:
        batches = list(reader(start, end))
        replayed.extend(b.header.base_offset for b in batches)
        return batches

    loaded, _ = ProducerStateManager.load(
        fs,
        DIRECTORY,
        log_start_offset=0,
        log_end_offset=reopened.log_end_offset,
        read_batches=counting,
    )
    assert loaded.state.view() == expected
    assert replayed and min(replayed) >= reopened.segments[-1].base_offset
    # The whole log, replayed from its start, gives the same state.
    full = ProducerState()
    aborted = full.replay(reader(0, reopened.log_end_offset))
    assert full.view() == expected
    assert aborted == [AbortedTxn(1, 10, 11, 12)]
    assert (
        aborted_transactions_between(
            fs, DIRECTORY, log_start_offset=0, start_offset=11, end_offset=12, read_batches=reader
        )
        == aborted
    )


def test_truncation_rebuilds_the_state_below_the_cut() -> None:
    fs = MemoryFileSystem()
    log = SegmentedLog.open(DIRECTORY, CONFIG, fs=fs)
    manager, _ = ProducerStateManager.load(
        fs, DIRECTORY, log_start_offset=0, log_end_offset=0, read_batches=log_reader(log)
    )
    states = []
    for seq in range(10):
        states.append(manager.state.view())
        append(log, manager, data_batch(1, 0, seq))
    for cut in (8, 5, 2):
        log.truncate_to(cut)
        manager.truncate_to(cut, log_reader(log))
        assert manager.state.view() == states[cut]
        assert all(offset <= cut for offset in list_snapshot_offsets(fs, DIRECTORY))
    # The producer resumes where the surviving log leaves it.
    assert manager.validate([read_header(data_batch(1, 0, 2))]).is_new


def test_a_log_start_move_keeps_producers_across_a_restart() -> None:
    fs = MemoryFileSystem()
    log = SegmentedLog.open(DIRECTORY, CONFIG, fs=fs)
    manager, _ = ProducerStateManager.load(
        fs, DIRECTORY, log_start_offset=0, log_end_offset=0, read_batches=log_reader(log)
    )
    for seq in range(3):
        append(log, manager, data_batch(1, 0, seq))
    append(log, manager, data_batch(2, 0, 0))
    log.advance_log_start_offset(3)
    manager.truncate_start(3, first_segment_base=log.segments[0].base_offset)
    log.close()
    reopened = SegmentedLog.open(DIRECTORY, CONFIG, fs=fs)
    loaded, _ = ProducerStateManager.load(
        fs,
        DIRECTORY,
        log_start_offset=reopened.log_start_offset,
        log_end_offset=reopened.log_end_offset,
        read_batches=log_reader(reopened),
    )
    assert loaded.state.entry(1) == manager.state.entry(1)
    assert loaded.validate([read_header(data_batch(1, 0, 2))]).verdict is Verdict.DUPLICATE


def test_restarting_empty_forgets_everything() -> None:
    fs = MemoryFileSystem()
    fs.makedirs(DIRECTORY)
    manager = ProducerStateManager(fs, DIRECTORY, sample_state())
    manager.take_snapshot()
    manager.truncate_fully_and_start_at(100)
    assert manager.state.view().producers == ()
    assert manager.state.map_end_offset == 100
    assert list_snapshot_offsets(fs, DIRECTORY) == []


def test_markers_are_read_back_from_batches() -> None:
    batch = build_marker_batch(
        EndTxnMarker(control_type=ControlRecordType.ABORT, coordinator_epoch=3),
        producer_id=8,
        producer_epoch=2,
        timestamp=5,
        base_offset=40,
    )
    logged = next(logged_batches(batch))
    assert logged.marker == EndTxnMarker(control_type=ControlRecordType.ABORT, coordinator_epoch=3)
    assert logged.header.is_control and logged.header.is_transactional
    assert [b.marker for b in logged_batches(data_batch(8, 2, 0))] == [None]


def test_the_retained_count_is_kafkas() -> None:
    assert producer_state.BATCHES_RETAINED == 5


# --------------------------------------------------------------------------- stateful
#
# A model of Kafka's rules written plainly: each producer keeps every batch of its
# current epoch (the rules look at the last five), every decided transaction is kept,
# and a snapshot is a deep copy of the model. The machine drives the real
# ProducerStateManager (snapshots on a MemoryFileSystem) and the model side by side.

SEQUENCES = 1 << 31
DAY_MS = 24 * 3600 * 1000


@attrs.define
class ModelBatch:
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int
    timestamp: int


@attrs.define
class ModelProducer:
    epoch: int = -1
    batches: list[ModelBatch] = attrs.Factory(list)  # the whole current epoch
    txn_first: int = -1
    coordinator_epoch: int = -1
    last_ts: int = -1
    transactional: bool = False


@attrs.define
class Model:
    end: int = 0
    log_start: int = 0
    producers: dict[int, ModelProducer] = attrs.Factory(dict)
    decided: list[CompletedTxn] = attrs.Factory(list)

    def verdict(self, batch: BatchHeader) -> tuple[Verdict, ModelBatch | None]:
        p = self.producers.get(batch.producer_id)
        if p is not None and batch.producer_epoch == p.epoch:
            for kept in p.batches[-5:]:
                if (kept.first_seq, kept.last_seq) == (batch.base_sequence, batch.last_sequence):
                    return Verdict.DUPLICATE, kept
        if p is not None:
            if batch.producer_epoch < p.epoch:
                return Verdict.INVALID_PRODUCER_EPOCH, None
            if batch.producer_epoch > p.epoch and batch.base_sequence != 0:
                return Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER, None
            if batch.producer_epoch == p.epoch:
                last = p.batches[-1].last_seq if p.batches else -1
                if batch.base_sequence != (last + 1) % SEQUENCES:
                    return Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER, None
            if p.txn_first >= 0 and not batch.is_transactional:
                return Verdict.INVALID_TXN_STATE, None
        return Verdict.NEW, None

    def marker_verdict(self, pid: int, epoch: int, marker: EndTxnMarker) -> Verdict:
        p = self.producers.get(pid)
        if p is not None and epoch < p.epoch:
            return Verdict.INVALID_PRODUCER_EPOCH
        if p is not None and marker.coordinator_epoch < p.coordinator_epoch:
            return Verdict.TRANSACTION_COORDINATOR_FENCED
        return Verdict.NEW

    def record(self, batch: BatchHeader, marker: EndTxnMarker | None) -> AbortedTxn | None:
        self.end = batch.next_offset
        p = self.producers.setdefault(batch.producer_id, ModelProducer())
        if batch.producer_epoch != p.epoch:
            p.batches = []
            p.epoch = batch.producer_epoch
        p.last_ts = batch.max_timestamp
        if marker is None:
            p.batches.append(
                ModelBatch(
                    batch.base_sequence,
                    batch.last_sequence,
                    batch.base_offset,
                    batch.last_offset,
                    batch.max_timestamp,
                )
            )
            if batch.is_transactional and p.txn_first < 0:
                p.txn_first = batch.base_offset
            p.transactional |= batch.is_transactional
            return None
        p.coordinator_epoch = marker.coordinator_epoch
        p.transactional = True
        first, p.txn_first = p.txn_first, -1
        if first < 0:
            return None
        self.decided.append(
            CompletedTxn(
                producer_id=batch.producer_id,
                first_offset=first,
                last_offset=batch.base_offset,
                aborted=marker.aborts,
            )
        )
        others = [q.txn_first for q in self.producers.values() if q.txn_first >= 0]
        lso = min(others) if others else batch.base_offset + 1
        return (
            AbortedTxn(batch.producer_id, first, batch.base_offset, lso) if marker.aborts else None
        )

    def last_stable_offset(self, hw: int) -> int:
        unstable = [p.txn_first for p in self.producers.values() if p.txn_first >= 0]
        unstable += [t.first_offset for t in self.decided if t.last_offset >= hw]
        if not unstable or min(unstable) >= hw:
            return hw
        return max(min(unstable), min(self.log_start, hw))

    def expire(self, now_ms: int) -> list[int]:
        gone = []
        for pid, p in self.producers.items():
            limit = max(DAY_MS, 7 * DAY_MS) if p.transactional else DAY_MS
            if p.txn_first < 0 and now_ms - p.last_ts >= limit:
                gone.append(pid)
        for pid in gone:
            del self.producers[pid]
        return sorted(gone)

    def view(self, hw: int) -> StateView:
        producers = []
        for pid in sorted(self.producers):
            p = self.producers[pid]
            batches = tuple(
                BatchMetadata(
                    first_sequence=b.first_seq,
                    last_sequence=b.last_seq,
                    first_offset=b.first_offset,
                    last_offset=b.last_offset,
                    max_timestamp=b.timestamp,
                )
                for b in p.batches[-5:]
            )
            producers.append(
                ProducerEntry(
                    producer_id=pid,
                    epoch=p.epoch,
                    batches=batches,
                    coordinator_epoch=p.coordinator_epoch,
                    last_timestamp=p.last_ts,
                    txn_first_offset=p.txn_first,
                    transactional=p.transactional,
                )
            )
        ongoing = sorted(
            (p.txn_first, pid) for pid, p in self.producers.items() if p.txn_first >= 0
        )
        unreplicated = sorted(
            (t for t in self.decided if t.last_offset >= hw), key=lambda t: t.first_offset
        )
        return StateView(
            producers=tuple(producers),
            ongoing=tuple(ongoing),
            unreplicated=tuple(unreplicated),
            map_end_offset=self.end,
            log_start_offset=self.log_start,
        )


def comparable(view: StateView, hw: int) -> StateView:
    """Decided transactions below the high-water mark are forgotten at different times."""
    kept = tuple(t for t in view.unreplicated if t.last_offset >= hw)
    return attrs.evolve(view, unreplicated=kept)


@attrs.define
class Client:
    pid: int
    epoch: int = 0
    next_seq: int = 0
    in_txn: bool = False
    sent: list[tuple[int, int, int, bool]] = attrs.Factory(list)  # epoch, seq, count, txn


class ProducerStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fs = MemoryFileSystem()
        self.fs.makedirs(DIRECTORY)
        self.fs.sync_dir(DIRECTORY)
        self.log: list[LoggedBatch] = []
        self.durable = 0  # batches of self.log a crash keeps
        self.log_start = 0
        self.hw = 0
        self.now = 1_000
        self.manager, _ = ProducerStateManager.load(
            self.fs, DIRECTORY, log_start_offset=0, log_end_offset=0, read_batches=self.read
        )
        self.model = Model()
        self.snapshots: dict[int, Model] = {}
        # Sequences near the wrap for the third producer.
        self.clients = [Client(1), Client(2), Client(3, next_seq=SEQUENCES - 4)]
        self.pure = True  # no expiry and no log start move yet: the log holds all state

    @property
    def end(self) -> int:
        return self.log[-1].header.next_offset if self.log else self.log_start

    def read(self, start: int, end: int) -> list[LoggedBatch]:
        assert start >= self.log_start, f"replay from {start}, below the log start {self.log_start}"
        return [b for b in self.log if start <= b.header.base_offset < end]

    # -- appending

    def _append(self, batch: BatchHeader) -> Verdict:
        outcome = self.manager.validate([batch])
        expected, original = self.model.verdict(batch)
        assert outcome.verdict is expected, (outcome, expected)
        event(f"batch {expected.name}")
        if expected is Verdict.DUPLICATE:
            assert outcome.duplicate is not None and original is not None
            got = (outcome.duplicate.first_offset, outcome.duplicate.last_offset)
            assert got == (original.first_offset, original.last_offset)
            # ... and those are the offsets at which the log held that very batch (it
            # may lie below the log start by now: Kafka still answers with them).
            held = [b.header for b in self.log if b.header.base_offset == got[0]]
            assert held and held[0].producer_id == batch.producer_id
            assert held[0].base_sequence == batch.base_sequence
        if expected is not Verdict.NEW:
            return expected
        placed = batch.rebased(self.end, 0)
        self.now += 1
        self.log.append(LoggedBatch(placed))
        assert self.manager.record(placed) is None
        self.model.record(placed, None)
        return expected

    def _data(
        self, client: Client, seq: int, count: int, txn: bool, epoch: int | None = None
    ) -> BatchHeader:
        return header(
            client.pid, client.epoch if epoch is None else epoch, seq, count, txn=txn, ts=self.now
        )

    @rule(which=st.integers(0, 2), count=st.integers(1, 3))
    def send(self, which: int, count: int) -> None:
        client = self.clients[which]
        batch = self._data(client, client.next_seq, count, client.in_txn)
        if self._append(batch) is Verdict.NEW:
            client.sent.append((client.epoch, client.next_seq, count, client.in_txn))
            client.next_seq = (client.next_seq + count) % SEQUENCES

    @rule(which=st.integers(0, 2), back=st.integers(1, 7))
    def retry(self, which: int, back: int) -> None:
        client = self.clients[which]
        if len(client.sent) < back:
            return
        epoch, seq, count, txn = client.sent[-back]
        self._append(self._data(client, seq, count, txn, epoch))

    @rule(which=st.integers(0, 2), gap=st.integers(1, 3))
    def skip_ahead(self, which: int, gap: int) -> None:
        client = self.clients[which]
        self._append(self._data(client, (client.next_seq + gap) % SEQUENCES, 1, client.in_txn))

    @rule(which=st.integers(0, 2), seq=st.sampled_from([0, 0, 0, 5]))
    def bump_epoch(self, which: int, seq: int) -> None:
        client = self.clients[which]
        client.epoch += 1
        client.next_seq = seq

    @rule(which=st.integers(0, 2))
    def stale_epoch(self, which: int) -> None:
        client = self.clients[which]
        if client.epoch > 0:
            self._append(self._data(client, client.next_seq, 1, client.in_txn, client.epoch - 1))

    @rule(which=st.integers(0, 2))
    def stray_plain_batch(self, which: int) -> None:
        client = self.clients[which]
        if self._append(self._data(client, client.next_seq, 1, False)) is Verdict.NEW:
            client.next_seq = (client.next_seq + 1) % SEQUENCES

    @rule(which=st.integers(0, 2))
    def begin_transaction(self, which: int) -> None:
        self.clients[which].in_txn = True

    @rule(which=st.integers(0, 2), commit=st.booleans(), coordinator=st.integers(0, 2))
    def end_transaction(self, which: int, commit: bool, coordinator: int) -> None:
        client = self.clients[which]
        kind = ControlRecordType.COMMIT if commit else ControlRecordType.ABORT
        marker = EndTxnMarker(control_type=kind, coordinator_epoch=coordinator)
        outcome = self.manager.state.validate_marker(client.pid, client.epoch, marker)
        expected = self.model.marker_verdict(client.pid, client.epoch, marker)
        assert outcome.verdict is expected, (outcome, expected)
        event(f"marker {expected.name}")
        if expected is not Verdict.NEW:
            return
        placed = marker_header(client.pid, client.epoch, offset=self.end, ts=self.now)
        self.now += 1
        self.log.append(LoggedBatch(placed, marker))
        assert self.manager.record(placed, marker) == self.model.record(placed, marker)
        client.in_txn = False

    # -- the log's events

    @rule(step=st.integers(1, 6))
    def advance_high_watermark(self, step: int) -> None:
        self.hw = min(self.end, self.hw + step)
        self.manager.state.on_high_watermark(self.hw)

    @rule()
    def flush(self) -> None:
        self.durable = len(self.log)

    @rule()
    def roll(self) -> None:
        self.flush()  # a roll syncs the segment it closes
        taken = self.manager.take_snapshot()
        assert taken == (self.end > max(self.snapshots, default=-1))
        if taken:
            self.snapshots[self.end] = copy.deepcopy(self.model)

    def _reload_model(self, end: int) -> None:
        self.snapshots = {o: s for o, s in self.snapshots.items() if self.log_start <= o <= end}
        if self.snapshots:
            model = copy.deepcopy(self.snapshots[max(self.snapshots)])
        else:
            model = Model(end=self.log_start, log_start=self.log_start)
        model.log_start = self.log_start
        for batch in self.read(max(model.end, self.log_start), end):
            model.record(batch.header, batch.marker)
        model.end = end
        self.model = model

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        visible = [i for i, b in enumerate(self.log) if b.header.base_offset >= self.log_start]
        if not visible:
            return
        cut = data.draw(st.sampled_from(visible))
        offset = self.log[cut].header.base_offset
        self.log = self.log[:cut]
        self.durable = min(self.durable, cut)
        self.hw = min(self.hw, offset)
        self.manager.truncate_to(offset, self.read)
        self._reload_model(offset)

    def _crash_and_reload(self, seed: int) -> None:
        rng = random.Random(seed)
        self.fs.crash(rng)
        self.log = self.log[: rng.randint(self.durable, len(self.log))]
        self.hw = min(self.hw, self.end)
        self.manager, _ = ProducerStateManager.load(
            self.fs,
            DIRECTORY,
            log_start_offset=self.log_start,
            log_end_offset=self.end,
            read_batches=self.read,
        )
        self._reload_model(self.end)
        event("reloaded from a snapshot" if self.snapshots else "reloaded from the log start")

    @rule(seed=st.integers(0, 2**16))
    def crash(self, seed: int) -> None:
        self._crash_and_reload(seed)

    @rule(seed=st.integers(0, 2**16), position=st.integers(0, 200))
    def corrupt_latest_snapshot_and_crash(self, seed: int, position: int) -> None:
        offsets = list_snapshot_offsets(self.fs, DIRECTORY)
        if not offsets:
            return
        path = f"{DIRECTORY}/{snapshot_file_name(offsets[-1])}"
        self.fs.corrupt(path, position % self.fs.file_size(path))
        del self.snapshots[offsets[-1]]  # it must never be used
        self._crash_and_reload(seed)

    @rule(data=st.data())
    def delete_records(self, data: st.DataObject) -> None:
        candidates = sorted(
            {
                b.header.base_offset
                for b in self.log
                if self.log_start < b.header.base_offset <= self.hw
            }
        )
        if not candidates:
            return
        offset = data.draw(st.sampled_from(candidates))
        self.flush()  # advance_log_start_offset syncs the log first
        self.log_start = offset
        self.manager.truncate_start(offset)
        self.model.log_start = offset
        self.snapshots = {o: s for o, s in self.snapshots.items() if o >= offset}
        if self.end > max(self.snapshots, default=-1):
            self.snapshots[self.end] = copy.deepcopy(self.model)
        self.pure = False

    @rule(days=st.sampled_from([0, 1, 7]))
    def expire(self, days: int) -> None:
        self.now += days * DAY_MS
        gone = sorted(self.manager.expire(self.now))
        assert gone == self.model.expire(self.now)
        if gone:
            self.pure = False

    # -- after every step

    @invariant()
    def state_matches_the_model(self) -> None:
        got = comparable(self.manager.state.view(), self.hw)
        assert got == self.model.view(self.hw)
        lso = self.manager.last_stable_offset(self.hw)
        assert lso == self.model.last_stable_offset(self.hw), (lso, self.hw)
        assert self.log_start <= lso <= self.hw or self.hw < self.log_start

    @invariant()
    def no_batch_is_written_twice(self) -> None:
        if not self.pure:
            return  # an expired producer's retry is taken again, as in Kafka
        seen = set()
        for batch in self.read(self.log_start, self.end):
            h = batch.header
            if batch.marker is None:
                key = (h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence)
                assert key not in seen, f"written twice: {key}"
                seen.add(key)

    @invariant()
    def snapshot_plus_tail_equals_the_whole_log(self) -> None:
        if not self.pure:
            return
        whole = ProducerState()
        whole.replay(self.read(0, self.end))
        whole.map_end_offset = self.end
        expected = comparable(self.manager.state.view(), self.hw)
        assert comparable(whole.view(), self.hw) == expected
        loaded, _ = ProducerStateManager.load(
            self.fs,
            DIRECTORY,
            log_start_offset=self.log_start,
            log_end_offset=self.end,
            read_batches=self.read,
        )
        assert comparable(loaded.state.view(), self.hw) == expected


STATEFUL_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ProducerStateMachine.TestCase.settings = STATEFUL_SETTINGS
TestProducerStateAgainstModel = ProducerStateMachine.TestCase


# --------------------------------------------------------------------------- planted bugs
#
# Each plants one mistake and requires the machine above to fail. Run with a fixed
# derandomized search and no shrinking, so it costs the same on every run.

PLANTED_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _last_batch_only(self: ProducerEntry, batch: BatchHeader) -> BatchMetadata | None:
    if batch.producer_epoch != self.epoch or not self.batches:
        return None
    last = self.batches[-1]
    if (last.first_sequence, last.last_sequence) == (batch.base_sequence, batch.last_sequence):
        return last
    return None


def _kafka_v1_snapshot(state: ProducerState) -> bytes:
    """Kafka's own snapshot layout keeps only each producer's last batch."""
    trimmed = ProducerState(
        map_end_offset=state.map_end_offset, log_start_offset=state.log_start_offset
    )
    view = state.view()
    trimmed._load_entries(
        (attrs.evolve(entry, batches=entry.batches[-1:]) for entry in view.producers),
        view.unreplicated,
    )
    return real_encode_snapshot(trimmed)


real_encode_snapshot = producer_state.encode_snapshot


def _open_transactions_only(self: ProducerState, high_watermark: int) -> int | None:
    return self.first_undecided_offset()


@pytest.mark.parametrize(
    ("target", "name", "planted"),
    [
        # Remembering one batch: the retry of the second-to-last is refused.
        (producer_state, "BATCHES_RETAINED", 1),
        # Retained but only the last one searched for duplicates.
        (ProducerEntry, "find_duplicate", _last_batch_only),
        # A snapshot as Kafka writes it: after a crash the older four are gone.
        (producer_state, "encode_snapshot", _kafka_v1_snapshot),
        # An LSO that passes a decided transaction whose marker is above the HWM.
        (ProducerState, "first_unstable_offset", _open_transactions_only),
    ],
    ids=["last-batch-only", "duplicate-search-of-one", "kafka-v1-snapshot", "lso-ignores-hwm"],
)
def test_the_machine_catches_a_planted_mistake(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, planted: object
) -> None:
    """The model-based test above is only worth something if it fails on real mistakes.

    Each case plants one with monkeypatch and requires `ProducerStateMachine` to
    raise (checked by this test itself, not by hand): the last-batch-only bug fails
    the state comparison and the duplicate answers; searching only the last batch
    fails the verdict comparison on a retry of an older one; Kafka's one-batch
    snapshot fails the comparison after a crash reload; an LSO that forgets decided
    but unreplicated transactions fails the LSO check.
    """
    monkeypatch.setattr(target, name, planted)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(ProducerStateMachine, settings=PLANTED_SETTINGS)
