"""Producer state: one test per rule of Kafka's ProducerStateManager, then snapshots."""

from __future__ import annotations

import logging

import pytest

from storage import producer_state
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.producer_state import (
    BATCHES_RETAINED,
    PRODUCER_ID_EXPIRATION_MS,
    SEQUENCE_MAX,
    TRANSACTIONAL_ID_EXPIRATION_MS,
    CorruptSnapshotError,
    EndTxnMarker,
    LoggedBatch,
    Origin,
    ProducerState,
    ProducerStateManager,
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
