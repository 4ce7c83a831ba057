"""Transactions at the partition through truncation, crashes and restarts.

The producer state, the LSO and the transaction indexes follow a follower's
truncation, a crash mid-transaction, a corrupt index file, DeleteRecords and a
restart behind the leader, and always equal what a replay of the log gives (a
stateful property over all of them).
"""

from __future__ import annotations

import random

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from broker.partition import Partition
from kraft.metadata.image import PartitionRegistration
from storage.fs import MemoryFileSystem
from storage.producer_state import ProducerState, log_reader
from storage.txn_index import AbortedTxn, FetchAbortedTxn, txn_index_path
from tests.broker.test_txn_partition import (
    BROKER,
    DIRECTORY,
    marker,
    open_partition,
    plain_batch,
    txn_batch,
    visible_values,
)

# ---------------------------------------------------------------------- truncation and restarts


def test_follower_truncation_takes_markers_and_index_entries_back() -> None:
    leader = open_partition(MemoryFileSystem())
    leader.append_as_leader(txn_batch(7, 0, 0))  # 0
    marker(leader, 7, 0, committed=False)  # 1
    leader.append_as_leader(txn_batch(8, 0, 0))  # 2
    marker(leader, 8, 0, committed=False)  # 3
    copied, _ = leader.log.read_slice(0, 1 << 20)

    follower = open_partition(MemoryFileSystem())
    follower.apply(
        PartitionRegistration(
            replicas=(BROKER, 2), isr=(BROKER, 2), leader=2, leader_epoch=1, partition_epoch=1
        ),
        now_ms=0,
    )
    follower.append_as_follower(copied, leader_high_watermark=1)
    assert follower.txn_indexes.entries() == leader.txn_indexes.entries()
    follower.unclean_election = True
    follower.truncate_as_follower(3)  # 8's abort goes: its transaction is open again
    assert follower.txn_indexes.entries() == [AbortedTxn(7, 0, 1, 2)]
    follower.update_follower_high_watermark(3)
    assert follower.last_stable_offset == 2
    follower.truncate_as_follower(1)
    assert follower.txn_indexes.entries() == []
    assert follower.last_stable_offset == 0


def _mixed_history(partition: Partition, rounds: int) -> None:
    for n in range(rounds):
        partition.append_as_leader(txn_batch(7, 0, 2 * n, tag=f"a{n}"))
        partition.append_as_leader(txn_batch(8, 0, 2 * n, tag=f"b{n}"))
        partition.append_as_leader(txn_batch(7, 0, 2 * n + 1, tag=f"a{n}"))
        marker(partition, 7, 0, committed=n % 2 == 0)
        partition.append_as_leader(txn_batch(8, 0, 2 * n + 1, tag=f"b{n}"))
        marker(partition, 8, 0, committed=n % 3 == 0)


def test_a_crash_mid_transaction_restarts_with_the_producer_state_lso_and_index() -> None:
    fs = MemoryFileSystem()
    partition = open_partition(fs, segment_bytes=600)
    _mixed_history(partition, 6)
    partition.append_as_leader(txn_batch(9, 0, 0, tag="open"))
    open_at = partition.log.log_end_offset - 1
    partition.append_as_leader(plain_batch(b"after"))
    partition.log.flush()  # the log is durable; the index tail and snapshots may not be
    assert len(partition.log.segments) > 2
    view = partition.producer_state.state.view()
    entries = partition.txn_indexes.entries()
    seen = visible_values(partition)
    fs.crash()
    reopened = open_partition(fs, segment_bytes=600)
    assert reopened.producer_state.state.view() == view
    assert reopened.txn_indexes.entries() == entries
    reopened.high_watermark = reopened.log.log_end_offset  # as the ISR would confirm
    assert reopened.last_stable_offset == open_at
    assert visible_values(reopened) == seen
    marker(reopened, 9, 0, committed=False)
    assert reopened.last_stable_offset == reopened.log.log_end_offset
    assert b"open:0" not in visible_values(reopened)


def test_a_corrupt_index_is_rebuilt_from_the_log() -> None:
    """A file that fails its checks is rebuilt. (A missing file of an older segment
    reads as "no abort there", as in Kafka: only the segments after the last
    snapshot are replayed on open, and their indexes are reconciled with it.)"""
    fs = MemoryFileSystem()
    partition = open_partition(fs, segment_bytes=600)
    _mixed_history(partition, 8)
    entries = partition.txn_indexes.entries()
    assert len(entries) >= 4
    bases = [b for b in partition.txn_indexes.bases if partition.txn_indexes._indexes[b].entries]
    partition.close()
    rng = random.Random(5)
    damaged = bases[0]
    handle = fs.open(txn_index_path(DIRECTORY, damaged), create=False)
    handle.append(b"\x00" * rng.randrange(1, 33))  # not a whole entry
    handle.sync()
    handle.close()
    reopened = open_partition(fs, segment_bytes=600)
    assert reopened.txn_indexes.entries() == entries
    assert fs.exists(txn_index_path(DIRECTORY, damaged))


def test_retention_and_restart_take_indexes_with_their_segments() -> None:
    fs = MemoryFileSystem()
    partition = open_partition(fs, segment_bytes=600)
    _mixed_history(partition, 8)
    first_bases = partition.txn_indexes.bases
    cut = partition.log.segments[2].base_offset
    partition.delete_records_before(cut)
    assert all(e.last_offset >= first_bases[1] for e in partition.txn_indexes.entries())
    assert partition.txn_indexes.bases[0] == partition.log.segments[0].base_offset
    for base in first_bases:
        if base < partition.log.segments[0].base_offset:
            assert not fs.exists(txn_index_path(DIRECTORY, base))
    partition.restart_at(10_000)
    assert partition.txn_indexes.entries() == []
    assert partition.txn_indexes.bases == (10_000,)


# ---------------------------------------------------------------------- against the log replayed


class TransactionsThroughFaults(RuleBasedStateMachine):
    """Transactional and plain writes, markers, truncations and restarts (clean or
    crashed) of one partition: its producer state, LSO and transaction indexes are
    always what a replay of its log from the start gives."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = MemoryFileSystem()
        self.partition = self._open()
        self.aborted: list[AbortedTxn] = []  # every abort still in the log's history

    def _open(self) -> Partition:
        partition = open_partition(self.fs, segment_bytes=300)
        partition.unclean_election = True
        return partition

    @rule(pid=st.sampled_from([7, 8, 9]), count=st.integers(1, 3))
    def write(self, pid: int, count: int) -> None:
        entry = self.partition.producer_state.state.entry(pid)
        sequence = entry.last_sequence + 1 if entry is not None and entry.batches else 0
        self.partition.append_as_leader(txn_batch(pid, 0, sequence, count))

    @rule()
    def write_plain(self) -> None:
        self.partition.append_as_leader(plain_batch(b"p"))

    @rule(pid=st.sampled_from([7, 8, 9]), committed=st.booleans())
    def end(self, pid: int, committed: bool) -> None:
        before = len(self.partition.txn_indexes.entries())
        marker(self.partition, pid, 0, committed=committed)
        self.aborted += self.partition.txn_indexes.entries()[before:]

    @rule(data=st.data())
    def delete_records(self, data: st.DataObject) -> None:
        log = self.partition.log
        offset = data.draw(st.integers(log.log_start_offset, self.partition.high_watermark))
        self.partition.delete_records_before(offset)

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        log = self.partition.log
        target = data.draw(st.integers(log.log_start_offset, log.log_end_offset))
        self.partition.truncate_as_follower(max(target, log.log_start_offset))
        end = self.partition.log.log_end_offset
        self.aborted = [entry for entry in self.aborted if entry.last_offset < end]

    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        if crash:
            self.partition.log.flush()
            self.fs.crash()
        else:
            self.partition.close()
        self.partition = self._open()

    @invariant()
    def fetch_lists_the_aborts_of_its_range(self) -> None:
        partition = self.partition
        lso = partition.last_stable_offset
        for start in range(partition.log.log_start_offset, lso + 1, 3):
            expected = [
                FetchAbortedTxn(entry.producer_id, entry.first_offset)
                for entry in self.aborted
                if entry.last_offset >= start and entry.first_offset < lso
            ]
            assert partition.aborted_transactions(start, lso) == (expected if start < lso else [])

    @invariant()
    def as_the_log_replayed(self) -> None:
        partition = self.partition
        if partition.log.log_start_offset > 0:
            return  # the replay from the start needs the whole log
        replayed = ProducerState()
        aborted = replayed.replay(log_reader(partition.log)(0, partition.log.log_end_offset))
        assert partition.producer_state.state.view().producers == replayed.view().producers
        assert partition.txn_indexes.entries() == aborted
        assert partition.last_stable_offset == replayed.last_stable_offset(partition.high_watermark)


TransactionsThroughFaults.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
test_transactions_through_faults = TransactionsThroughFaults.TestCase


def test_a_batch_straddling_the_log_start_is_replayed_whole() -> None:
    """DeleteRecords moved the log start into a batch; a truncation (or a reopen)
    then replays from the start, which reads that batch whole (found by the
    property below: the replay asserted on its base offset)."""
    fs = MemoryFileSystem()
    partition = open_partition(fs)
    partition.append_as_leader(plain_batch(b"0"))
    partition.append_as_leader(txn_batch(7, 0, 0, count=2))  # 1-2
    partition.append_as_leader(plain_batch(b"3"))
    partition.delete_records_before(2)
    partition.unclean_election = True
    partition.truncate_as_follower(3)
    entry = partition.producer_state.state.entry(7)
    assert entry is not None and entry.txn_first_offset == 1 and entry.last_sequence == 1
    assert partition.last_stable_offset == 2  # held at the log start, not below it
    partition.close()
    reopened = open_partition(fs)
    assert reopened.producer_state.state.entry(7) == entry
