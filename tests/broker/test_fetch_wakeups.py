"""Parked fetches wake per partition (Kafka's DelayedFetch purgatory, keyed by partition).

A long-polling Fetch waits only on the partitions it asked for, and there only for
what its fetcher reads up to: a follower for the log end, a consumer for the
high-water mark, a read_committed consumer for the last stable offset. A leadership
change or the partition going offline wakes every waiter (answered with the error);
nothing is left registered once a fetch is answered. Time is trio's MockClock
(autojump), so nothing here depends on the machine's speed.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from broker.data_apis import DataApis
from broker.partition import Partition
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import (
    READ_COMMITTED,
    FetchRequest,
    FetchResponse,
    PartitionFetch,
    TopicFetch,
)
from kraft.metadata.image import PartitionRegistration
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch

BROKER = 1
REPLICAS = (1, 2, 3)
WAIT_MS = 10_000


def batch(value: bytes = b"v") -> bytes:
    return build_batch([RecordInput(timestamp=1_000, value=value)])


def txn_batch(pid: int) -> bytes:
    return build_batch(
        [RecordInput(timestamp=1_000, value=b"t")],
        producer_id=pid,
        producer_epoch=0,
        base_sequence=0,
        is_transactional=True,
    )


def registration(leader: int = BROKER, epoch: int = 0) -> PartitionRegistration:
    return PartitionRegistration(
        replicas=REPLICAS, isr=REPLICAS, leader=leader, leader_epoch=epoch, partition_epoch=epoch
    )


class Replicas:
    """What DataApis needs of a ReplicaManager, for a few partitions of topic t."""

    def __init__(self, count: int) -> None:
        fs = MemoryFileSystem()
        self.partitions: dict[tuple[str, int], Partition] = {}
        for index in range(count):
            log = SegmentedLog.open(f"/t-{index}", LogConfig(), fs=fs)
            partition = Partition(topic="t", topic_id="id", index=index, log=log, broker_id=BROKER)
            partition.apply(registration(), now_ms=0)
            self.partitions[("t", index)] = partition

    def partition(self, topic: str, index: int) -> Partition:
        found = self.partitions.get((topic, index))
        if found is None:
            raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index}")
        return found

    def min_insync_replicas(self, topic: str) -> int:
        return 1

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    def topic_settings(self, topic: str) -> dict[str, str]:
        return {}

    def isr_may_change(self) -> None:
        pass


class Counting(DataApis):
    """DataApis that counts its passes over the partitions."""

    reads = 0

    def _read_all(self, request: FetchRequest, record_fetch: bool) -> Any:
        self.reads += 1
        return super()._read_all(request, record_fetch)


def setup(count: int) -> tuple[Replicas, Counting]:
    replicas = Replicas(count)
    return replicas, Counting(replicas, is_registered=lambda *_: True)  # type: ignore[arg-type]


def request(
    offsets: dict[int, int], *, replica_id: int = -1, level: int = 0, epoch: int = -1
) -> FetchRequest:
    return FetchRequest(
        topics=(
            TopicFetch(
                name="t",
                partitions=tuple(
                    PartitionFetch(partition=p, fetch_offset=o, current_leader_epoch=epoch)
                    for p, o in offsets.items()
                ),
            ),
        ),
        replica_id=replica_id,
        broker_epoch=0 if replica_id >= 0 else -1,
        max_wait_ms=WAIT_MS,
        isolation_level=level,
    )


def follower_fetch(partition: Partition, replica: int, offset: int) -> None:
    """A follower's fetch as the leader records it: may move the high-water mark."""
    partition.on_follower_fetch(replica, offset, -1, 0)


def run(test: Any) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def sizes(response: FetchResponse) -> dict[int, int]:
    return {r.partition: len(r.records) for r in response.topics[0].partitions}


def test_a_consumer_wakes_for_its_own_partitions_high_water_mark_only() -> None:
    async def main() -> None:
        replicas, data = setup(3)
        p0, p1 = replicas.partitions[("t", 0)], replicas.partitions[("t", 1)]
        answers: list[FetchResponse] = []

        async def fetch() -> None:
            answers.append(await data.fetch_request(request({0: 0}), False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await trio.testing.wait_all_tasks_blocked()
            assert data.reads == 1
            for _ in range(5):
                p1.append_as_leader(batch())  # another partition: not this fetch's
                p0.append_as_leader(batch())  # its partition, but the HWM stays (RF 3)
                await trio.testing.wait_all_tasks_blocked()
            follower_fetch(p1, 2, 5)
            follower_fetch(p1, 3, 5)  # p1's HWM moves: still not this fetch's
            await trio.testing.wait_all_tasks_blocked()
            assert (data.reads, answers) == (1, [])
            start = trio.current_time()
            follower_fetch(p0, 2, 5)
            follower_fetch(p0, 3, 5)  # p0's HWM reaches 5: answered now
        assert trio.current_time() == start
        assert data.reads == 2
        assert sizes(answers[0])[0] > 0
        assert not any(p._fetch_watchers for p in replicas.partitions.values())

    run(main)


def test_a_follower_wakes_for_the_log_end_not_the_high_water_mark() -> None:
    async def main() -> None:
        replicas, data = setup(2)
        p0, p1 = replicas.partitions[("t", 0)], replicas.partitions[("t", 1)]
        p0.append_as_leader(batch())
        follower_fetch(p0, 3, 1)
        answers: list[FetchResponse] = []

        async def fetch() -> None:
            answers.append(await data.fetch_request(request({0: 1, 1: 0}, replica_id=2), True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await trio.testing.wait_all_tasks_blocked()
            assert data.reads == 1  # replica 2 at p0's end: the HWM moved to 1
            follower_fetch(p0, 3, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert (data.reads, answers) == (1, [])
            p1.append_as_leader(batch())  # the log end of one of its partitions
        assert data.reads == 2
        assert sizes(answers[0]) == {0: 0, 1: len(batch())}
        assert not p0._fetch_watchers and not p1._fetch_watchers

    run(main)


def test_read_committed_waits_for_the_lso_not_the_high_water_mark() -> None:
    async def main() -> None:
        replicas, data = setup(1)
        (p0,) = replicas.partitions.values()
        p0.append_as_leader(txn_batch(7))  # 0: open, holds the LSO at 0
        answers: list[FetchResponse] = []

        async def fetch() -> None:
            answers.append(await data.fetch_request(request({0: 0}, level=READ_COMMITTED), False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await trio.testing.wait_all_tasks_blocked()
            p0.append_as_leader(batch())  # 1
            follower_fetch(p0, 2, 2)
            follower_fetch(p0, 3, 2)  # HWM 2, LSO still 0
            await trio.testing.wait_all_tasks_blocked()
            assert (p0.high_watermark, p0.last_stable_offset) == (2, 0)
            assert (data.reads, answers) == (1, [])
            p0.write_txn_marker(
                producer_id=7,
                producer_epoch=0,
                committed=True,
                coordinator_epoch=0,
                transaction_version=1,
                now_wall_ms=1_000,
            )  # 2, not yet replicated: the LSO stays
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            follower_fetch(p0, 2, 3)
            follower_fetch(p0, 3, 3)  # the marker commits: LSO 3
        assert p0.last_stable_offset == 3
        assert sizes(answers[0])[0] > 0

    run(main)


def test_a_leadership_change_or_removal_answers_parked_fetches_with_the_error() -> None:
    async def main() -> None:
        replicas, data = setup(2)
        p0, p1 = replicas.partitions[("t", 0)], replicas.partitions[("t", 1)]
        answers: dict[str, FetchResponse] = {}

        async def fetch(name: str, req: FetchRequest, replication: bool) -> None:
            answers[name] = await data.fetch_request(req, replication)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, "consumer", request({0: 0, 1: 0}, epoch=0), False)
            nursery.start_soon(fetch, "follower", request({1: 0}, replica_id=2), True)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            p0.apply(registration(leader=2, epoch=1), now_ms=0)  # moves away
            await trio.testing.wait_all_tasks_blocked()
            assert list(answers) == ["consumer"]
            p1.close()  # removed
        assert trio.current_time() == start
        codes = {
            name: {r.partition: r.error_code for r in answer.topics[0].partitions}
            for name, answer in answers.items()
        }
        assert codes["consumer"][0] == ErrorCode.FENCED_LEADER_EPOCH  # it named epoch 0
        assert codes["follower"][1] == ErrorCode.KAFKA_STORAGE_ERROR
        assert not p0._fetch_watchers and not p1._fetch_watchers

    run(main)


def test_a_fetch_with_nothing_new_waits_out_max_wait_and_leaves_no_watcher() -> None:
    async def main() -> None:
        replicas, data = setup(2)
        start = trio.current_time()
        answer = await data.fetch_request(request({0: 0, 1: 0}), False)
        assert trio.current_time() - start == WAIT_MS / 1000
        assert sizes(answer) == {0: 0, 1: 0}
        assert data.reads == 2  # the first pass and the one at the deadline
        assert not any(p._fetch_watchers for p in replicas.partitions.values())

    run(main)


def test_min_bytes_keeps_a_woken_fetch_parked_until_enough_arrived() -> None:
    async def main() -> None:
        replicas, data = setup(1)
        (p0,) = replicas.partitions.values()
        size = len(batch())
        answers: list[FetchResponse] = []
        req = FetchRequest(
            topics=(
                TopicFetch(name="t", partitions=(PartitionFetch(partition=0, fetch_offset=0),)),
            ),
            replica_id=2,
            broker_epoch=0,
            max_wait_ms=WAIT_MS,
            min_bytes=3 * size,
        )

        async def fetch() -> None:
            answers.append(await data.fetch_request(req, True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            for _ in range(2):
                await trio.testing.wait_all_tasks_blocked()
                p0.append_as_leader(batch())
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            start = trio.current_time()
            p0.append_as_leader(batch())
        assert trio.current_time() == start
        assert (data.reads, sizes(answers[0])) == (4, {0: 3 * size})

    run(main)
