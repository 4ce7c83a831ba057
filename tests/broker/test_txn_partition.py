"""Transactions at the partition: transactional appends, markers, the LSO, the index.

A transaction's batches hold the last stable offset until its marker; an ABORT puts
the transaction in its segment's `.txnindex`; a read_committed Fetch stops at the
LSO and lists the aborted transactions, which the client's filter drops; truncation,
crashes and corrupt index files leave the producer state, the LSO and the index
as a replay of the log would make them. KIP-890 part 1: the coordinator is asked
before a transaction opens on the partition, and a marker meanwhile voids the check.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from broker.broker_apis import ReplicationApis
from broker.data_apis import DataApis
from broker.partition import Partition
from broker.transactions.messages import TxnMarkers, markers_body
from broker.txn_markers import TxnMarkerWriter, markers_from_body
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import (
    LATEST_TIMESTAMP,
    READ_COMMITTED,
    READ_UNCOMMITTED,
    FetchRequest,
    ListOffsetsRequest,
    PartitionFetch,
    PartitionListOffsets,
    PartitionProduce,
    ProduceRequest,
    TopicFetch,
    TopicListOffsets,
    TopicProduce,
    WriteTxnMarkersResponse,
)
from client.protocol.schema import from_body
from client.read_committed import committed_batches
from kraft.metadata.image import PartitionRegistration
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch, iter_records
from storage.txn_index import AbortedTxn, FetchAbortedTxn

BROKER = 1
TIMESTAMP = 1_000
DIRECTORY = "/t-0"


def txn_batch(pid: int, epoch: int, sequence: int, count: int = 1, *, tag: str = "") -> bytes:
    return build_batch(
        [
            RecordInput(timestamp=TIMESTAMP, value=f"{tag or pid}:{sequence + i}".encode())
            for i in range(count)
        ],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=sequence,
        is_transactional=True,
    )


def plain_batch(value: bytes) -> bytes:
    return build_batch([RecordInput(timestamp=TIMESTAMP, value=value)])


def open_partition(
    fs: MemoryFileSystem, *, segment_bytes: int = 1 << 20, replicas: tuple[int, ...] = (BROKER,)
) -> Partition:
    log = SegmentedLog.open(DIRECTORY, LogConfig(segment_bytes=segment_bytes), fs=fs)
    partition = Partition(topic="t", topic_id="id", index=0, log=log, broker_id=BROKER)
    partition.apply(
        PartitionRegistration(
            replicas=replicas, isr=replicas, leader=BROKER, leader_epoch=0, partition_epoch=0
        ),
        now_ms=0,
    )
    return partition


def marker(
    partition: Partition,
    pid: int,
    epoch: int,
    *,
    committed: bool,
    coordinator_epoch: int = 0,
    version: int = 1,
) -> int:
    return partition.write_txn_marker(
        producer_id=pid,
        producer_epoch=epoch,
        committed=committed,
        coordinator_epoch=coordinator_epoch,
        transaction_version=version,
        now_wall_ms=TIMESTAMP,
    )


def visible_values(partition: Partition, start: int = 0) -> list[bytes]:
    """What a read_committed consumer gets from `start`: the LSO bound, the index's
    aborted list and the client's filter."""
    end = partition.last_stable_offset
    data, _ = partition.log.read_slice(start, 1 << 24, end)
    aborted = partition.aborted_transactions(start, end)
    values = []
    for position, _, visible in committed_batches(data, aborted):
        if visible:
            values += [record.value for record in iter_records(data, position)]
    return values


class Replicas:
    """What DataApis and TxnMarkerWriter need of a ReplicaManager, for one partition."""

    def __init__(self, partition: Partition) -> None:
        self.the_partition = partition

    def partition(self, topic: str, index: int) -> Partition:
        if (topic, index) != ("t", 0):
            raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index}")
        return self.the_partition

    def min_insync_replicas(self, topic: str) -> int:
        return 1

    def now_ms(self) -> int:
        return 0

    def topic_settings(self, topic: str) -> dict[str, str]:
        return {}

    def change_event(self) -> trio.Event:
        return trio.Event()

    def isr_may_change(self) -> None:
        pass


# ---------------------------------------------------------------------- LSO and markers


def test_an_open_transaction_holds_the_lso_and_its_commit_releases_it() -> None:
    partition = open_partition(MemoryFileSystem())
    partition.append_as_leader(plain_batch(b"before"))
    assert partition.last_stable_offset == partition.high_watermark == 1
    partition.append_as_leader(txn_batch(7, 0, 0, count=2))
    partition.append_as_leader(plain_batch(b"beside"))
    # The HWM passed the transaction, the LSO waits at its first offset.
    assert partition.high_watermark == 4
    assert partition.last_stable_offset == 1
    assert visible_values(partition) == [b"before"]
    offset = marker(partition, 7, 0, committed=True)
    assert offset == 4
    assert partition.last_stable_offset == partition.high_watermark == 5
    assert visible_values(partition) == [b"before", b"7:0", b"7:1", b"beside"]
    assert partition.txn_indexes.entries() == []  # a commit is not indexed


def test_an_abort_is_indexed_and_read_committed_skips_it_while_others_stay() -> None:
    partition = open_partition(MemoryFileSystem())
    partition.append_as_leader(txn_batch(7, 0, 0, count=2))  # 0-1
    partition.append_as_leader(txn_batch(8, 0, 0))  # 2
    partition.append_as_leader(txn_batch(7, 0, 2))  # 3
    assert partition.last_stable_offset == 0
    assert marker(partition, 7, 0, committed=False) == 4
    # 8's transaction is still open: the LSO stops at it.
    assert partition.last_stable_offset == 2
    assert partition.txn_indexes.entries() == [AbortedTxn(7, 0, 4, 2)]
    assert marker(partition, 8, 0, committed=True) == 5
    assert partition.last_stable_offset == 6
    assert partition.aborted_transactions(0, 6) == [FetchAbortedTxn(7, 0)]
    assert partition.aborted_transactions(5, 6) == []  # the abort ended before
    assert visible_values(partition) == [b"8:0"]
    # From the middle of the aborted transaction, its remainder is still dropped.
    assert visible_values(partition, start=3) == []
    assert visible_values(partition, start=2) == [b"8:0"]


def test_markers_of_a_stale_producer_or_coordinator_epoch_are_refused() -> None:
    partition = open_partition(MemoryFileSystem())
    partition.append_as_leader(txn_batch(7, 3, 0))
    end = partition.log.log_end_offset

    def refused(**kwargs: Any) -> int:
        try:
            marker(partition, 7, **kwargs)
        except KafkaError as error:
            return error.code
        raise AssertionError("the marker was written")

    assert refused(epoch=2, committed=True) == ErrorCode.INVALID_PRODUCER_EPOCH
    # Transaction version 2 bumps the epoch for its markers: the same epoch is stale.
    assert refused(epoch=3, committed=True, version=2) == ErrorCode.INVALID_PRODUCER_EPOCH
    assert partition.log.log_end_offset == end
    marker(partition, 7, 4, committed=False, coordinator_epoch=5, version=2)
    assert (
        refused(epoch=4, committed=False, coordinator_epoch=4)
        == ErrorCode.TRANSACTION_COORDINATOR_FENCED
    )
    assert partition.last_stable_offset == partition.high_watermark


def test_write_txn_markers_answers_per_partition_once_replicated() -> None:
    """Two replicas: the answer waits for the follower's fetch past the marker."""
    partition = open_partition(MemoryFileSystem(), replicas=(BROKER, 2))
    writer = TxnMarkerWriter(Replicas(partition))  # type: ignore[arg-type]
    partition.append_as_leader(txn_batch(7, 0, 0))
    markers = TxnMarkers(
        transactional_id="tx",
        producer_id=7,
        producer_epoch=0,
        committed=True,
        coordinator_epoch=0,
        partitions=frozenset({("t", 0), ("gone", 3)}),
        transaction_version=1,
    )
    body = markers_body(markers, markers.partitions)
    assert markers_from_body(body) == markers
    answers: list[WriteTxnMarkersResponse] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                answers.append(
                    from_body(WriteTxnMarkersResponse, await writer.write_txn_markers(body))
                )

            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            assert not answers  # the follower has not fetched the marker yet
            partition.on_follower_fetch(2, partition.log.log_end_offset, 0, now_ms=0)
        (answer,) = answers
        codes = {(p.topic, p.partition): p.error_code for p in answer.partitions}
        assert codes == {
            ("t", 0): ErrorCode.NONE,
            ("gone", 3): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        }
        assert partition.last_stable_offset == partition.log.log_end_offset

    trio.run(main)


def test_a_malformed_marker_body_is_an_invalid_request() -> None:
    for body in (None, {"producer_id": 1}, {"partitions": [["t"]]}):
        try:
            markers_from_body(body)
        except KafkaError as error:
            assert error.code == ErrorCode.INVALID_REQUEST
        else:
            raise AssertionError(f"{body!r} was taken")


# ---------------------------------------------------------------------- fetch and offsets


def test_fetch_read_committed_stops_at_the_lso_and_lists_the_aborts() -> None:
    partition = open_partition(MemoryFileSystem())
    data = DataApis(Replicas(partition), is_registered=lambda *_: True)  # type: ignore[arg-type]
    partition.append_as_leader(txn_batch(7, 0, 0, count=2))  # 0-1, aborted
    marker(partition, 7, 0, committed=False)  # 2
    partition.append_as_leader(plain_batch(b"x"))  # 3
    partition.append_as_leader(txn_batch(8, 0, 0))  # 4, open

    def fetch(level: int) -> Any:
        request = FetchRequest(
            topics=(
                TopicFetch(name="t", partitions=(PartitionFetch(partition=0, fetch_offset=0),)),
            ),
            max_wait_ms=0,
            isolation_level=level,
        )
        return trio.run(data.fetch_request, request, False).topics[0].partitions[0]

    committed = fetch(READ_COMMITTED)
    assert (committed.high_watermark, committed.last_stable_offset) == (5, 4)
    assert [(a.producer_id, a.first_offset) for a in committed.aborted_transactions] == [(7, 0)]
    kept = [
        record.value
        for position, _, visible in committed_batches(
            committed.records,
            [(a.producer_id, a.first_offset) for a in committed.aborted_transactions],
        )
        if visible
        for record in iter_records(committed.records, position)
    ]
    assert kept == [b"x"]
    uncommitted = fetch(READ_UNCOMMITTED)
    assert uncommitted.aborted_transactions is None
    assert len(uncommitted.records) > len(committed.records)  # up to the HWM

    def latest(level: int) -> int:
        request = ListOffsetsRequest(
            topics=(
                TopicListOffsets(
                    name="t",
                    partitions=(PartitionListOffsets(partition=0, timestamp=LATEST_TIMESTAMP),),
                ),
            ),
            isolation_level=level,
        )
        return data.list_offsets_request(request).topics[0].partitions[0].offset

    assert (latest(READ_UNCOMMITTED), latest(READ_COMMITTED)) == (5, 4)


# ---------------------------------------------------------------------- KIP-890 part 1


def _produce(data: DataApis, batch: bytes, transactional_id: str | None = "tx") -> Any:
    request = ProduceRequest(
        acks=-1,
        timeout_ms=10_000,
        topics=(
            TopicProduce(name="t", partitions=(PartitionProduce(partition=0, records=batch),)),
        ),
        transactional_id=transactional_id,
    )
    return request


def test_the_first_batch_of_a_transaction_is_verified_with_the_coordinator() -> None:
    partition = open_partition(MemoryFileSystem())
    asked: list[tuple[str, int, int, str, int]] = []
    answer = {"code": ErrorCode.NONE}

    async def verify(tid: str, pid: int, epoch: int, topic: str, index: int) -> int:
        asked.append((tid, pid, epoch, topic, index))
        return answer["code"]

    data = DataApis(Replicas(partition), is_registered=lambda *_: True, verify_transaction=verify)  # type: ignore[arg-type]

    async def produce(batch: bytes, transactional_id: str | None = "tx") -> Any:
        response = await data.produce_request(_produce(data, batch, transactional_id))
        return response.topics[0].partitions[0]

    async def main() -> None:
        answer["code"] = ErrorCode.INVALID_TXN_STATE  # the partition was not added
        refused = await produce(txn_batch(7, 0, 0))
        assert refused.error_code == ErrorCode.INVALID_TXN_STATE
        assert partition.log.log_end_offset == 0
        answer["code"] = ErrorCode.NONE
        assert (await produce(txn_batch(7, 0, 0))).error_code == ErrorCode.NONE
        assert (await produce(txn_batch(7, 0, 1))).error_code == ErrorCode.NONE
        # Asked once per transaction opening, not per batch.
        assert asked == [("tx", 7, 0, "t", 0), ("tx", 7, 0, "t", 0)]
        marker(partition, 7, 0, committed=True)
        assert (await produce(txn_batch(7, 0, 2))).error_code == ErrorCode.NONE
        assert len(asked) == 3  # the next transaction is asked about again
        missing = await produce(txn_batch(9, 0, 0), transactional_id=None)
        assert missing.error_code == ErrorCode.INVALID_RECORD
        # A plain idempotent batch never asks.
        plain = build_batch(
            [RecordInput(timestamp=TIMESTAMP, value=b"p")],
            producer_id=11,
            producer_epoch=0,
            base_sequence=0,
        )
        assert (await produce(plain, transactional_id=None)).error_code == ErrorCode.NONE
        assert len(asked) == 3
        # A transactional batch behind a plain one is still found (no shortcut there).
        both = plain_batch(b"q") + txn_batch(12, 0, 0)
        assert (await produce(both)).error_code == ErrorCode.NONE
        assert asked[-1] == ("tx", 12, 0, "t", 0)

    trio.run(main)


def test_a_marker_during_verification_voids_it() -> None:
    """The delayed-write race of KIP-890: verified, then the transaction ends before
    the append; the late batch must not open a new transaction on its own."""
    partition = open_partition(MemoryFileSystem())
    partition.append_as_leader(txn_batch(7, 0, 0))
    marker(partition, 7, 0, committed=False)  # the first transaction ended
    release = trio.Event()

    async def verify(tid: str, pid: int, epoch: int, topic: str, index: int) -> int:
        await release.wait()
        return ErrorCode.NONE

    data = DataApis(Replicas(partition), is_registered=lambda *_: True, verify_transaction=verify)  # type: ignore[arg-type]
    results: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def late() -> None:
                response = await data.produce_request(_produce(data, txn_batch(7, 0, 1)))
                results.append(response.topics[0].partitions[0])

            nursery.start_soon(late)
            await trio.testing.wait_all_tasks_blocked()
            marker(partition, 7, 0, committed=False)  # a timeout's abort meanwhile
            release.set()
        (result,) = results
        assert result.error_code == ErrorCode.INVALID_TXN_STATE
        assert partition.last_stable_offset == partition.high_watermark

    trio.run(main)


def test_the_replication_listener_routes_markers_and_refuses_client_apis() -> None:
    partition = open_partition(MemoryFileSystem())
    partition.append_as_leader(txn_batch(7, 0, 0))
    data = DataApis(Replicas(partition), is_registered=lambda *_: True)  # type: ignore[arg-type]
    apis = ReplicationApis(data)
    markers = TxnMarkers(
        transactional_id="tx",
        producer_id=7,
        producer_epoch=0,
        committed=False,
        coordinator_epoch=0,
        partitions=frozenset({("t", 0)}),
        transaction_version=1,
    )

    async def main() -> None:
        body = await apis.handle(
            ApiKey.WRITE_TXN_MARKERS, 0, markers_body(markers, markers.partitions)
        )
        (result,) = from_body(WriteTxnMarkersResponse, body).partitions
        assert result.error_code == ErrorCode.NONE
        try:
            await apis.handle(ApiKey.PRODUCE, 0, {})
        except KafkaError as error:
            assert error.code == ErrorCode.INVALID_REQUEST
        else:
            raise AssertionError("Produce was served on the REPLICATION listener")

    trio.run(main)
    assert partition.txn_indexes.entries() == [AbortedTxn(7, 0, 1, 2)]
