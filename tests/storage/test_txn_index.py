"""The aborted-transaction index: Kafka's layout, durability, fetch ranges, rebuilds."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from storage.fs import MemoryFileSystem
from storage.producer_state import (
    EndTxnMarker,
    LoggedBatch,
    ProducerState,
    aborted_transactions_between,
)
from storage.records import (
    CONTROL_BIT,
    NO_SEQUENCE,
    TRANSACTIONAL_BIT,
    BatchHeader,
    ControlRecordType,
)
from storage.txn_index import (
    ENTRY_BYTES,
    AbortedTxn,
    FetchAbortedTxn,
    LogTxnIndexes,
    TransactionIndex,
    TxnIndexCorruptError,
    aborted_transactions,
    remove_orphans,
    txn_index_path,
)

DIRECTORY = "/data/topic-0"


def fresh_fs() -> MemoryFileSystem:
    fs = MemoryFileSystem()
    fs.makedirs(DIRECTORY)
    return fs


def test_entries_are_kafkas_34_bytes() -> None:
    fs = fresh_fs()
    index = TransactionIndex(fs, DIRECTORY, 100)
    assert not fs.exists(index.path)  # no file until the first entry
    index.append(AbortedTxn(7, 90, 105, 95))
    index.flush()
    handle = fs.open(txn_index_path(DIRECTORY, 100), create=False)
    raw = handle.read_at(0, handle.size())
    assert ENTRY_BYTES == 34
    assert raw == struct.pack(">hqqqq", 0, 7, 90, 105, 95)


def test_load_reads_back_what_was_flushed_and_a_crash_keeps_it() -> None:
    fs = fresh_fs()
    fs.sync_dir(DIRECTORY)
    index = TransactionIndex(fs, DIRECTORY, 0)
    entries = [AbortedTxn(1, 0, 4, 2), AbortedTxn(2, 2, 9, 10)]
    for entry in entries:
        index.append(entry)
    index.flush()
    fs.sync_dir(DIRECTORY)
    fs.crash()
    assert TransactionIndex.load(fs, DIRECTORY, 0, next_offset=10).entries == tuple(entries)


def test_an_unsynced_torn_tail_is_refused() -> None:
    fs = fresh_fs()
    index = TransactionIndex(fs, DIRECTORY, 0)
    index.append(AbortedTxn(1, 0, 4, 5))
    index.flush()
    fs.sync_dir(DIRECTORY)
    index.append(AbortedTxn(2, 5, 9, 10))
    torn = None
    for seed in range(50):  # find a crash that keeps part of the unsynced entry
        copy = fresh_copy(fs)
        copy.crash(random.Random(seed))
        size = copy.file_size(index.path)
        if size % ENTRY_BYTES:
            torn = copy
            break
    assert torn is not None
    with pytest.raises(TxnIndexCorruptError, match="whole number"):
        TransactionIndex.load(torn, DIRECTORY, 0)


def fresh_copy(fs: MemoryFileSystem) -> MemoryFileSystem:
    import copy

    return copy.deepcopy(fs)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (struct.pack(">hqqqq", 1, 1, 0, 4, 5), "version"),
        (struct.pack(">hqqqq", 0, 1, 5, 4, 5), "impossible"),
        (struct.pack(">hqqqq", 0, 1, 0, 40, 41), "outside the segment"),
        (struct.pack(">hqqqq", 0, 1, 0, 4, 9), "last stable offset"),
    ],
)
def test_impossible_entries_are_refused(entry: bytes, match: str) -> None:
    fs = fresh_fs()
    handle = fs.open(txn_index_path(DIRECTORY, 0))
    handle.append(entry)
    with pytest.raises(TxnIndexCorruptError, match=match):
        TransactionIndex.load(fs, DIRECTORY, 0, next_offset=10)


def test_markers_must_run_forward() -> None:
    fs = fresh_fs()
    handle = fs.open(txn_index_path(DIRECTORY, 0))
    handle.append(struct.pack(">hqqqq", 0, 1, 0, 6, 7) + struct.pack(">hqqqq", 0, 2, 1, 6, 7))
    with pytest.raises(TxnIndexCorruptError, match="after"):
        TransactionIndex.load(fs, DIRECTORY, 0)
    index = TransactionIndex(fs, DIRECTORY, 100)
    index.append(AbortedTxn(1, 100, 106, 107))
    with pytest.raises(AssertionError):
        index.append(AbortedTxn(2, 100, 106, 107))


def test_truncation_is_durable() -> None:
    fs = fresh_fs()
    fs.sync_dir(DIRECTORY)
    index = TransactionIndex(fs, DIRECTORY, 0)
    for n in range(4):
        index.append(AbortedTxn(n, 10 * n, 10 * n + 5, 10 * n + 6))
    index.flush()
    fs.sync_dir(DIRECTORY)
    index.truncate_to(25)  # drops the markers at 25 and 35
    assert [e.producer_id for e in index.entries] == [0, 1]
    fs.crash()
    assert [e.producer_id for e in TransactionIndex.load(fs, DIRECTORY, 0).entries] == [0, 1]


def test_fetch_collects_overlapping_aborts_and_stops_at_the_lso() -> None:
    fs = fresh_fs()
    first = TransactionIndex(fs, DIRECTORY, 0)
    second = TransactionIndex(fs, DIRECTORY, 100)
    third = TransactionIndex(fs, DIRECTORY, 200)
    first.append(AbortedTxn(1, 10, 20, 21))  # before the range
    first.append(AbortedTxn(2, 15, 60, 40))  # spans the range start; producer 3 was open
    second.append(AbortedTxn(3, 40, 120, 121))  # overlaps
    second.append(AbortedTxn(4, 130, 140, 141))  # starts past the end; LSO ends the search
    third.append(AbortedTxn(5, 50, 210, 211))  # never reached
    found = aborted_transactions([first, second, third], 30, 125)
    assert found == [FetchAbortedTxn(2, 15), FetchAbortedTxn(3, 40)]
    assert aborted_transactions([first, second, third], 30, 30) == []
    entries, complete = first.collect(30, 125)
    assert (entries, complete) == ([AbortedTxn(2, 15, 60, 40)], False)


def test_rebuild_replaces_the_content_from_the_log() -> None:
    fs = fresh_fs()
    state = ProducerState()
    abort = EndTxnMarker(control_type=ControlRecordType.ABORT, coordinator_epoch=0)
    log = [
        LoggedBatch(batch(1, 0, offset=0, txn=True)),
        LoggedBatch(batch(2, 0, offset=1, txn=True)),
        LoggedBatch(marker(1, offset=2), abort),
        LoggedBatch(marker(2, offset=3), abort),
    ]
    expected = state.replay(log)
    assert expected == [AbortedTxn(1, 0, 2, 1), AbortedTxn(2, 1, 3, 4)]

    def read(start: int, end: int) -> list[LoggedBatch]:
        return [b for b in log if start <= b.header.base_offset < end]

    index = TransactionIndex(fs, DIRECTORY, 2)
    index.append(AbortedTxn(9, 2, 2, 3))  # garbage to be replaced
    recovered = aborted_transactions_between(
        fs, DIRECTORY, log_start_offset=0, start_offset=2, end_offset=4, read_batches=read
    )
    index.rebuild(recovered)
    assert TransactionIndex.load(fs, DIRECTORY, 2, next_offset=4).entries == tuple(expected)


def test_deleted_segments_take_their_index_along() -> None:
    fs = fresh_fs()
    for base in (0, 100, 200):
        TransactionIndex(fs, DIRECTORY, base).append(AbortedTxn(1, base, base + 1, base + 2))
    fs.open(f"{DIRECTORY}/junk.txnindex")
    assert remove_orphans(fs, DIRECTORY, [100, 200]) == [0]
    assert sorted(n for n in fs.listdir(DIRECTORY) if n.endswith(".txnindex")) == [
        "00000000000000000100.txnindex",
        "00000000000000000200.txnindex",
    ]
    index = TransactionIndex.load(fs, DIRECTORY, 100)
    index.delete()
    assert not fs.exists(txn_index_path(DIRECTORY, 100))


def batch(pid: int, seq: int, *, offset: int, txn: bool) -> BatchHeader:
    attributes = TRANSACTIONAL_BIT if txn else 0
    return BatchHeader(offset, 57, 0, 2, 0, attributes, 0, 0, 0, pid, 0, seq, 1)


def marker(pid: int, *, offset: int) -> BatchHeader:
    attributes = TRANSACTIONAL_BIT | CONTROL_BIT
    return BatchHeader(offset, 57, 0, 2, 0, attributes, 0, 0, 0, pid, 0, NO_SEQUENCE, 1)


ABORT_SEARCHES = {
    "steps": st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["data", "data", "commit", "abort"])),
        max_size=40,
    ),
    "data": st.data(),
}


@settings(max_examples=500, deadline=None)
@given(**ABORT_SEARCHES)
def test_the_lso_stop_never_hides_an_overlapping_abort(
    steps: list[tuple[int, str]], data: st.DataObject
) -> None:
    """Per-segment indexes, searched from the start's segment with Kafka's early stop,
    find exactly the aborted transactions that overlap the range (brute force).
    `test_the_property_catches_an_early_stop_on_the_marker` checks that it fails on a
    planted stop at the marker offset instead of the LSO."""
    check_abort_search(steps, data)


def check_abort_search(steps: list[tuple[int, str]], data: st.DataObject) -> None:
    state = ProducerState()
    offset = 0
    aborted: list[AbortedTxn] = []
    for pid, action in steps:
        if action == "data":
            state.record(batch(pid, 0, offset=offset, txn=True))
        else:
            kind = ControlRecordType.COMMIT if action == "commit" else ControlRecordType.ABORT
            end_marker = EndTxnMarker(control_type=kind, coordinator_epoch=0)
            found = state.record(marker(pid, offset=offset), end_marker)
            if found is not None:
                aborted.append(found)
        offset += 1
    fs = fresh_fs()
    cuts = data.draw(st.lists(st.integers(1, max(1, offset)), max_size=4))
    bases = sorted({0, *(c for c in cuts if c < offset)})
    indexes = [TransactionIndex(fs, DIRECTORY, base) for base in bases]
    for entry in aborted:
        owner = max(i for i, base in enumerate(bases) if base <= entry.last_offset)
        indexes[owner].append(entry)
    start = data.draw(st.integers(0, offset))
    end = data.draw(st.integers(start, offset + 1))
    first = max(i for i, base in enumerate(bases) if base <= start)
    expected = [
        FetchAbortedTxn(e.producer_id, e.first_offset)
        for e in aborted
        if e.last_offset >= start and e.first_offset < end and start < end
    ]
    assert aborted_transactions(indexes[first:], start, end) == expected


def _stop_at_the_marker(
    self: TransactionIndex, start_offset: int, end_offset: int
) -> tuple[list[AbortedTxn], bool]:
    found = [
        e for e in self.entries if e.last_offset >= start_offset and e.first_offset < end_offset
    ]
    for entry in self.entries:
        if entry.last_offset >= end_offset:  # the planted mistake: not the LSO
            return [e for e in found if e.last_offset <= entry.last_offset], True
    return found, False


def test_the_property_catches_an_early_stop_on_the_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TransactionIndex, "collect", _stop_at_the_marker)
    planted = settings(
        max_examples=500, deadline=None, derandomize=True, database=None, phases=[Phase.generate]
    )(given(**ABORT_SEARCHES)(check_abort_search))
    # A transaction open across the range's end and aborted after a marker past it.
    with pytest.raises(AssertionError):
        planted()


def test_a_logs_indexes_keep_merged_segments_and_drop_what_the_log_lost() -> None:
    """LogTxnIndexes.open: an index whose segment the cleaner merged away stays (its
    markers are still in the log); one below the first segment or past the log end
    goes; entries go to the index of the segment holding their marker."""
    fs = fresh_fs()
    for base, entry in ((0, AbortedTxn(1, 2, 5, 6)), (100, AbortedTxn(2, 90, 120, 121))):
        index = TransactionIndex(fs, DIRECTORY, base)
        index.append(entry)
        index.flush()
        index.close()
    for base in (40, 900):  # a segment already deleted by retention, a lost tail
        stale = TransactionIndex(fs, DIRECTORY, base)
        stale.append(AbortedTxn(3, base, base + 1, base + 2))
        stale.flush()
        stale.close()
    fs.remove(txn_index_path(DIRECTORY, 0))  # retention took segment 0 and its index
    indexes = LogTxnIndexes.open(
        fs,
        DIRECTORY,
        segment_bases=[50, 200],  # 100 was merged into the segment at 50
        log_end_offset=300,
        recover=lambda start, end: [],
    )
    assert indexes.bases == (50, 100, 200)  # every segment has one, the merged one too
    assert indexes.entries() == [AbortedTxn(2, 90, 120, 121)]
    assert not fs.exists(txn_index_path(DIRECTORY, 40))
    assert not fs.exists(txn_index_path(DIRECTORY, 900))
    indexes.append(AbortedTxn(4, 210, 250, 251))
    assert indexes.aborted_transactions(100, 300) == [
        FetchAbortedTxn(2, 90),
        FetchAbortedTxn(4, 210),
    ]
    indexes.truncate_to(240, segment_bases=[50, 200])
    assert indexes.aborted_transactions(0, 300) == [FetchAbortedTxn(2, 90)]
    indexes.drop_below(200)  # retention took the segment at 50
    assert indexes.entries() == []
    assert not fs.exists(txn_index_path(DIRECTORY, 100))
