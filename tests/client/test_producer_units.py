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
from storage.records import iter_records, read_header

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


WRITTEN_THEN_LOST = -1000  # a scripted answer: the batch is written, the answer lost


class ScriptedCluster:
    """Answers Produce from a script of error codes; counts metadata refreshes. Like a
    leader, it takes an idempotent producer's batches only in sequence order and
    answers a duplicate with its first offset."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.epoch = 0
        self.inits: list[Any] = []
        self.expected: dict[tuple[int, int, int], int] = {}  # (id, epoch, partition) -> seq
        self.first_offsets: dict[tuple[int, int, int], int] = {}
        self.headers: list[Any] = []
        self.concurrent = self.most_concurrent = 0
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

    async def request_any(self, request: Any) -> Any:
        self.inits.append(request)
        if request.producer_id >= 0:
            self.epoch = request.producer_epoch + 1
        return kafka.InitProducerIdResponse(producer_id=7, producer_epoch=self.epoch)

    async def request_broker(self, broker_id: int, request: Any, *, version: Any = None) -> Any:
        self.requests.append((broker_id, request))
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        await trio.sleep(0.005)  # lets the sender put more requests in flight
        self.concurrent -= 1
        code = self.codes.pop(0) if self.codes else 0
        if code == ErrorCode.NETWORK_EXCEPTION:
            raise KafkaError(code, "connection lost")
        Response = kafka.ProduceResponse
        results = []
        for topic in request.topic_data:
            for part in topic.partition_data:
                base = len(self.log)
                header = read_header(part.records)
                self.headers.append(header)
                if code in (0, WRITTEN_THEN_LOST) and header.producer_id >= 0:
                    code, base = self._sequence_check(part.index, header, base)
                if code in (0, WRITTEN_THEN_LOST) and base == len(self.log):
                    self.log += values(part.records)
                if code == WRITTEN_THEN_LOST:
                    raise KafkaError(ErrorCode.NETWORK_EXCEPTION, "answer lost")
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

    def _sequence_check(self, partition: int, header: Any, base: int) -> tuple[int, int]:
        key = (header.producer_id, header.producer_epoch, partition)
        expected = self.expected.get(key, 0)
        if header.base_sequence == expected:
            self.expected[key] = expected + header.last_offset_delta + 1
            self.first_offsets[(*key, header.base_sequence)] = base
            return 0, base
        if (*key, header.base_sequence) in self.first_offsets:  # a duplicate
            return 0, self.first_offsets[(*key, header.base_sequence)]
        return ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, -1

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


def test_idempotence_is_on_by_default_and_off_for_settings_that_forbid_it() -> None:
    assert Producer("127.0.0.1:1").idempotent
    assert not Producer("127.0.0.1:1", acks=1).idempotent  # silently, as Kafka 3 does
    assert not Producer("127.0.0.1:1", enable_idempotence=False).idempotent
    with pytest.raises(ValueError, match="acks=all"):
        Producer("127.0.0.1:1", acks=1, enable_idempotence=True)
    with pytest.raises(ValueError, match="max_in_flight"):
        Producer("127.0.0.1:1", max_in_flight=6, enable_idempotence=True)


def test_retries_go_back_in_drain_order_whatever_order_they_fail_in() -> None:
    acc = RecordAccumulator(batch_size=50, linger_ms=0)
    for i in range(10):
        acc.append(TP, 1, None, b"record-%d" % i, (), now_s=0.0)
    first, second, third = acc.drain(TP), acc.drain(TP), acc.drain(TP)
    acc.requeue(third, retry_at_s=0.0)
    acc.requeue(first, retry_at_s=0.0)
    acc.requeue(second, retry_at_s=0.0)
    assert [acc.drain(TP) for _ in range(3)] == [first, second, third]


async def test_idempotent_batches_carry_the_id_and_consecutive_sequences_kept_on_retry() -> None:
    with trio.fail_after(10):
        producer, cluster, outcomes = await produce_with(
            [ErrorCode.NOT_LEADER_OR_FOLLOWER, WRITTEN_THEN_LOST], count=30
        )
    assert cluster.log == [b"m%02d" % i for i in range(30)]  # once each, in order
    assert [o.offset for o in outcomes] == list(range(30))
    assert {(h.producer_id, h.producer_epoch) for h in cluster.headers} == {(7, 0)}
    firsts = sorted({(h.base_sequence, h.last_offset_delta) for h in cluster.headers})
    assert [s for s, _ in firsts] == [0] + [s + d + 1 for s, d in firsts[:-1]]
    # Later batches in flight behind a failed one come back out of order and go again.
    assert producer.retries >= 2 and len(cluster.headers) == len(firsts) + producer.retries


async def test_five_in_flight_with_lost_answers_write_each_record_once_in_order() -> None:
    codes = [0, WRITTEN_THEN_LOST, 0, ErrorCode.REQUEST_TIMED_OUT, WRITTEN_THEN_LOST] * 4
    with trio.fail_after(20):
        producer, cluster, outcomes = await produce_with(codes, count=60, max_in_flight=5)
    assert cluster.log == [b"m%02d" % i for i in range(60)]
    assert [o.offset for o in outcomes] == list(range(60))
    assert producer.retries >= 4 and producer.sequences is not None
    assert producer.sequences.bumps == 0 and len(cluster.inits) == 1
    assert cluster.most_concurrent > 1
    assert len({h.base_sequence for h in cluster.headers}) < len(cluster.headers)  # resent


async def test_out_of_order_at_the_head_fails_that_batch_and_bumps_the_epoch() -> None:
    with trio.fail_after(10):
        producer, cluster, outcomes = await produce_with(
            [ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER], count=20, max_in_flight=1
        )
    failed = [o for o in outcomes if isinstance(o, KafkaError)]
    assert failed and {f.code for f in failed} == {ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER}
    assert cluster.log == [b"m%02d" % i for i in range(len(failed), 20)]
    assert producer.sequences is not None and producer.sequences.bumps == 1
    assert cluster.inits[-1].producer_id == 7 and cluster.inits[-1].producer_epoch == 0
    after = [h for h in cluster.headers if h.producer_epoch == 1]
    assert after and after[0].base_sequence == 0


async def test_unknown_producer_id_bumps_the_epoch_and_retries_without_losing_records() -> None:
    with trio.fail_after(10):
        producer, cluster, outcomes = await produce_with(
            [0, ErrorCode.UNKNOWN_PRODUCER_ID], count=20, max_in_flight=1
        )
    assert cluster.log == [b"m%02d" % i for i in range(20)]
    assert [o.offset for o in outcomes] == list(range(20))
    assert producer.sequences is not None and producer.sequences.bumps == 1
