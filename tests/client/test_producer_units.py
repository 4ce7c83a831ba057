"""The accumulator and the producer's retry logic, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from client.accumulator import RecordAccumulator
from client.producer import Producer
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.protocol.messages import PartitionMetadata
from storage.records import iter_records

TP = ("t", 0)


def values(data: bytes) -> list[bytes]:
    return [r.value or b"" for r in iter_records(data)]


def test_records_fill_batches_up_to_batch_size_in_order() -> None:
    acc = RecordAccumulator(batch_size=200, linger_ms=1000)
    deliveries = [acc.append(TP, 1, None, b"v%02d" % i, (), now_s=0.0) for i in range(30)]
    queue = acc.batches[TP]
    assert len(queue) > 1 and all(b.builder.size_bytes <= 200 for b in queue)
    assert [d.index for d in deliveries[: queue[0].record_count]] == list(
        range(queue[0].record_count)
    )
    drained = []
    while acc.batches[TP]:
        drained += values(acc.drain(TP).build())
    assert drained == [b"v%02d" % i for i in range(30)]


def test_ready_after_linger_when_full_or_when_flushing() -> None:
    acc = RecordAccumulator(batch_size=10_000, linger_ms=50)
    acc.append(TP, 1, None, b"x", (), now_s=1.0)
    ready, next_s = acc.ready(1.01, muted=set())
    assert ready == [] and next_s == pytest.approx(1.05)
    assert acc.ready(1.05, muted=set())[0] == [TP]
    assert acc.ready(1.05, muted={TP})[0] == []  # max in flight reached
    acc.flushing = True
    assert acc.ready(1.0, muted=set())[0] == [TP]


def test_a_requeued_batch_goes_first_and_waits_for_its_backoff() -> None:
    acc = RecordAccumulator(batch_size=50, linger_ms=0)
    for i in range(10):
        acc.append(TP, 1, None, b"record-%d" % i, (), now_s=0.0)
    first = acc.drain(TP)
    acc.requeue(first, retry_at_s=5.0)
    ready, next_s = acc.ready(1.0, muted=set())
    assert ready == [] and next_s == 5.0  # the retry blocks the partition until due
    assert acc.ready(5.0, muted=set())[0] == [TP]
    again = acc.drain(TP)
    assert again is first and again.attempts == 2 and again.data == first.data


def test_expired_batches_leave_the_queue() -> None:
    acc = RecordAccumulator(batch_size=20, linger_ms=0)
    for i in range(4):
        acc.append(TP, 1, None, b"r%d" % i, (), now_s=float(i))
    expired = acc.expire(now_s=2.5, timeout_s=1.0)
    assert [b.created_s for b in expired] == [0.0, 1.0]


class ScriptedCluster:
    """Answers Produce from a script of error codes; counts metadata refreshes."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.requests: list[tuple[int, Any]] = []
        self.refreshes = 0
        self.log: list[bytes] = []
        self.leader_id = 1
        self.partitions: dict[str, Any] = {}

    async def partition_count(self, topic: str, *, wait_s: float = 0.0) -> int:
        return 1

    def leader(self, topic: str, partition: int) -> PartitionMetadata:
        return PartitionMetadata(
            partition=partition,
            error_code=0,
            leader=self.leader_id,
            leader_epoch=0,
            replicas=(1,),
            isr=(1,),
        )

    async def refresh(self, topics: Any = None) -> None:
        self.refreshes += 1
        self.leader_id = 2  # the new leader

    async def request_broker(self, broker_id: int, request: Any, *, version: Any = None) -> Any:
        self.requests.append((broker_id, request))
        code = self.codes.pop(0) if self.codes else 0
        if code == ErrorCode.NETWORK_EXCEPTION:
            raise KafkaError(code, "connection lost")
        Response = kafka.ProduceResponse
        results = []
        for topic in request.topic_data:
            for part in topic.partition_data:
                base = len(self.log)
                if code == 0:
                    self.log += values(part.records)
                results.append(
                    Response.PartitionProduceResponse(
                        index=part.index, error_code=code, base_offset=base
                    )
                )
        name = request.topic_data[0].name
        return Response(
            responses=(
                Response.TopicProduceResponse(name=name, partition_responses=tuple(results)),
            )
        )

    async def aclose(self) -> None:
        pass


async def produce_with(codes: list[int], count: int = 20, **settings: Any):
    producer = Producer("127.0.0.1:1", retry_backoff_ms=10, batch_size=60, linger_ms=0, **settings)
    scripted = ScriptedCluster(codes)
    producer.cluster = scripted  # type: ignore[assignment]
    async with producer:
        deliveries = [await producer.send("t", b"m%02d" % i) for i in range(count)]
        outcomes = []
        for delivery in deliveries:
            try:
                outcomes.append(await delivery)
            except KafkaError as error:
                outcomes.append(error)
    return producer, scripted, outcomes


async def test_retriable_errors_are_retried_in_order_after_a_metadata_refresh() -> None:
    codes = [
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.NETWORK_EXCEPTION,
        ErrorCode.REQUEST_TIMED_OUT,
    ]
    with trio.fail_after(10):
        producer, cluster, outcomes = await produce_with(codes, max_in_flight=1)
    assert cluster.log == [b"m%02d" % i for i in range(20)]  # once each, in order
    assert [o.offset for o in outcomes] == list(range(20))
    assert producer.retries == 3 and cluster.refreshes >= 1
    assert cluster.requests[-1][0] == 2  # went to the new leader


async def test_a_non_retriable_error_fails_the_batch_and_only_it() -> None:
    with trio.fail_after(10):
        _, cluster, outcomes = await produce_with([ErrorCode.MESSAGE_TOO_LARGE], max_in_flight=1)
    failed = [o for o in outcomes if isinstance(o, KafkaError)]
    assert failed and all(f.code == ErrorCode.MESSAGE_TOO_LARGE for f in failed)
    succeeded = [o for o in outcomes if not isinstance(o, KafkaError)]
    assert len(failed) + len(succeeded) == 20
    assert [v for v in cluster.log] == [b"m%02d" % i for i in range(len(failed), 20)]


async def test_delivery_timeout_fails_records_that_never_get_through() -> None:
    with trio.fail_after(10):
        _, cluster, outcomes = await produce_with(
            [ErrorCode.NOT_LEADER_OR_FOLLOWER] * 10_000, count=3, delivery_timeout_ms=200
        )
    assert all(isinstance(o, KafkaError) for o in outcomes)
    assert cluster.log == []


def test_append_to_open_fills_the_open_batch_and_declines_otherwise() -> None:
    acc = RecordAccumulator(batch_size=200, linger_ms=1000)
    assert acc.append_to_open(TP, 1, None, b"x", ()) is None  # no batch yet
    first = acc.append(TP, 1, None, b"a" * 10, (), now_s=0.0)
    second = acc.append_to_open(TP, 2, b"k", b"b" * 10, ())
    assert second is not None and second.batch is first.batch and second.index == 1
    assert first.batch.size_bytes == first.batch.builder.size_bytes
    assert acc.append_to_open(TP, 3, None, b"c" * 100, ()) is None  # would pass batch_size
    assert acc.records == 2 and len(acc.batches[TP]) == 1
    acc.drain(TP)
    acc.requeue(first.batch, retry_at_s=0.0)
    assert acc.append_to_open(TP, 4, None, b"d", ()) is None  # a built retry takes no more
    assert values(acc.append(TP, 4, None, b"d", (), now_s=1.0).batch.build()) == [b"d"]


async def test_records_into_an_open_batch_go_out_when_it_lingers_out() -> None:
    producer = Producer("127.0.0.1:1", batch_size=100_000, linger_ms=30)
    scripted = ScriptedCluster([])
    producer.cluster = scripted  # type: ignore[assignment]
    with trio.fail_after(10):
        async with producer:
            deliveries = [await producer.send("t", b"m%02d" % i) for i in range(50)]
            outcomes = [await delivery for delivery in deliveries]
    assert [o.offset for o in outcomes] == list(range(50))
    assert len(scripted.requests) == 1  # one batch: the sender waited for the linger
    assert scripted.log == [b"m%02d" % i for i in range(50)]


async def test_a_tight_send_loop_lets_the_sender_run_and_a_cancelled_send_appends_nothing() -> None:
    producer = Producer("127.0.0.1:1", batch_size=60, linger_ms=0)
    scripted = ScriptedCluster([])
    producer.cluster = scripted  # type: ignore[assignment]
    with trio.fail_after(10):
        async with producer:
            for i in range(20):
                await producer.send("t", b"m%02d" % i)
            assert scripted.requests  # sent while the loop was still sending
            with trio.CancelScope() as scope:
                scope.cancel()
                await producer.send("t", b"x" * 50)  # needs a new batch: yields first
            assert scope.cancelled_caught
    assert scripted.log == [b"m%02d" % i for i in range(20)]  # the cancelled one never sent
