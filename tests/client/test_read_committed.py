"""The read_committed filter against a model: records of aborted transactions and
control batches are dropped, everything else below the LSO is kept.

The log is built from random interleavings of producers' transactional writes,
commits, aborts and plain writes; the aborted list comes from the broker's own
producer state and transaction index for the fetched range, as a Fetch answers it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from client.read_committed import ReadCommittedFilter, committed_batches
from storage.fs import MemoryFileSystem
from storage.producer_state import (
    EndTxnMarker,
    ProducerState,
    build_marker_batch,
    logged_batches,
)
from storage.records import (
    CONTROL_BIT,
    TRANSACTIONAL_BIT,
    BatchHeader,
    ControlRecordType,
    RecordInput,
    build_batch,
    iter_batches,
    iter_records,
)
from storage.txn_index import TransactionIndex, aborted_transactions

PRODUCERS = (1, 2, 3)

operation = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PRODUCERS), st.integers(1, 3)),
    st.tuples(st.just("commit"), st.sampled_from(PRODUCERS), st.just(0)),
    st.tuples(st.just("abort"), st.sampled_from(PRODUCERS), st.just(0)),
    st.tuples(st.just("plain"), st.just(-1), st.integers(1, 2)),
)


def build_log(operations: list[tuple[str, int, int]]) -> tuple[bytes, dict[bytes, bool]]:
    """The log's bytes and, per record value, whether its transaction was aborted
    (None while open: those lie past the LSO)."""
    chunks: list[bytes] = []
    offset = 0
    open_values: dict[int, list[bytes]] = {}
    fate: dict[bytes, bool] = {}
    sequences = dict.fromkeys(PRODUCERS, 0)
    for kind, pid, count in operations:
        if kind in ("write", "plain"):
            values = [f"{kind}{pid}@{offset + i}".encode() for i in range(count)]
            batch = build_batch(
                [RecordInput(timestamp=1, value=value) for value in values],
                base_offset=offset,
                producer_id=pid if kind == "write" else -1,
                producer_epoch=0 if kind == "write" else -1,
                base_sequence=sequences[pid] if kind == "write" else -1,
                is_transactional=kind == "write",
            )
            if kind == "write":
                sequences[pid] += count
                open_values.setdefault(pid, []).extend(values)
            else:
                fate.update(dict.fromkeys(values, False))
            offset += count
        else:
            control = ControlRecordType.ABORT if kind == "abort" else ControlRecordType.COMMIT
            batch = build_marker_batch(
                EndTxnMarker(control_type=control, coordinator_epoch=0),
                producer_id=pid,
                producer_epoch=0,
                timestamp=1,
                base_offset=offset,
            )
            fate.update(dict.fromkeys(open_values.pop(pid, []), kind == "abort"))
            offset += 1
        chunks.append(batch)
    return b"".join(chunks), fate


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40), st.data())
def test_read_committed_returns_exactly_the_committed_and_plain_records(
    operations: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    log, fate = build_log(operations)
    state = ProducerState()
    fs = MemoryFileSystem()
    fs.makedirs("/p")
    index = TransactionIndex(fs, "/p", 0)
    boundaries = [0]
    for header, marker in logged_batches(log):
        aborted = state.record(header, marker)
        if aborted is not None:
            index.append(aborted)
        boundaries.append(header.next_offset)
    end = boundaries[-1]
    lso = state.last_stable_offset(end)
    start = data.draw(st.sampled_from([b for b in boundaries if b <= lso]))
    fetched = b"".join(
        batch
        for batch, (header, _) in zip(_split(log), logged_batches(log), strict=True)
        if start <= header.base_offset < lso
    )
    listed = aborted_transactions([index], start, lso)
    kept = [
        record.value
        for position, _, visible in committed_batches(fetched, listed)
        if visible
        for record in iter_records(fetched, position)
    ]
    expected = [
        record.value
        for position, header, _ in committed_batches(fetched, [])
        if not header.is_control
        for record in iter_records(fetched, position)
        if fate.get(record.value) is False
    ]
    assert kept == expected


def _split(log: bytes) -> list[bytes]:
    return [log[position : position + header.size_bytes] for position, header in iter_batches(log)]


def test_an_aborted_producer_is_dropped_only_until_its_abort_marker() -> None:
    """The walk itself: a producer enters at its first offset and leaves at its ABORT."""

    def header(offset: int, pid: int, control: bool = False) -> BatchHeader:
        attributes = TRANSACTIONAL_BIT | (CONTROL_BIT if control else 0)
        return BatchHeader(offset, 61, 0, 2, 0, attributes, 0, 1, 1, pid, 0, 0, 1)

    walk = ReadCommittedFilter([(5, 10)])
    assert not walk.skips(header(9, 5), False)  # before its aborted transaction
    assert walk.skips(header(10, 5), False)
    assert not walk.skips(header(11, 6), False)  # another producer
    assert walk.skips(header(12, 5, control=True), True)  # the marker: hidden, and out
    assert not walk.skips(header(13, 5), False)  # its next transaction is kept
