"""acks=all on a partition whose high-water mark is already past the append (an ISR of
one) is answered without a task or nursery to wait in; one still behind waits."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from broker.data_apis import DataApis
from broker.partition import Partition
from client.protocol.errors import ErrorCode
from client.protocol.messages import PartitionProduce, ProduceRequest, TopicProduce
from kraft.metadata.image import PartitionRegistration
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch

BROKER = 1


def _leader(replicas: tuple[int, ...]) -> Partition:
    log = SegmentedLog.open("/t-0", LogConfig(), fs=MemoryFileSystem())
    partition = Partition(topic="t", topic_id="id", index=0, log=log, broker_id=BROKER)
    partition.apply(
        PartitionRegistration(
            replicas=replicas, isr=replicas, leader=BROKER, leader_epoch=0, partition_epoch=0
        ),
        now_ms=0,
    )
    return partition


def _data_apis(partition: Partition) -> DataApis:
    class Replicas:
        def partition(self, topic: str, index: int) -> Partition:
            return partition

        def min_insync_replicas(self, topic: str) -> int:
            return 1

        def now_ms(self) -> int:
            return 0

        def topic_settings(self, topic: str) -> dict[str, str]:
            return {}

    return DataApis(Replicas(), is_registered=lambda *_: True)  # type: ignore[arg-type]


class _Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


def _request(timeout_ms: int) -> ProduceRequest:
    records = build_batch([RecordInput(timestamp=1_000, value=b"v%d" % i) for i in range(3)])
    return ProduceRequest(
        acks=-1,
        timeout_ms=timeout_ms,
        topics=(
            TopicProduce(name="t", partitions=(PartitionProduce(partition=0, records=records),)),
        ),
    )


def _produce(partition: Partition, timeout_ms: int) -> tuple[Any, int]:
    data = _data_apis(partition)
    spawns = _Spawns()

    async def main() -> Any:
        trio.lowlevel.add_instrument(spawns)
        try:
            return await data.produce_request(_request(timeout_ms))
        finally:
            trio.lowlevel.remove_instrument(spawns)

    response = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return response.topics[0].partitions[0], spawns.count


def test_an_isr_of_one_answers_acks_all_without_a_task() -> None:
    partition = _leader((BROKER,))
    answer, spawned = _produce(partition, 30_000)
    assert (answer.error_code, answer.base_offset) == (ErrorCode.NONE, 0)
    assert partition.high_watermark == 3
    assert spawned == 0


def test_followers_behind_are_waited_for_until_the_timeout() -> None:
    partition = _leader((BROKER, 2, 3))
    answer, spawned = _produce(partition, 100)
    assert answer.error_code == ErrorCode.REQUEST_TIMED_OUT
    assert partition.high_watermark == 0
    assert spawned >= 1
