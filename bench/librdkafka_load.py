"""One librdkafka producer and one librdkafka consumer, as kafka_bench drives them.

Both are bounded by a record count and by a wall-clock cap; a phase that reaches its
cap stops and says so in `PhaseResult.error` instead of hanging. Whatever broker is
behind the bootstrap address sees exactly the same requests: the same values, the same
explicit partition for record i (i mod partitions), the same client settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

VALUE_BYTES = 100
LINGER_MS = 5
# librdkafka's defaults, written out so the JSON line says what was measured.
BATCH_NUM_MESSAGES = 10_000
BATCH_SIZE_BYTES = 1_000_000
QUEUE_MAX_MESSAGES = 100_000
CONSUME_CHUNK = 10_000  # messages asked of one consume() call
MAX_PARTITION_FETCH_BYTES = 4 * 1024 * 1024
FETCH_MAX_BYTES = 64 * 1024 * 1024
FETCH_WAIT_MAX_MS = 100
QUEUED_MIN_MESSAGES = 500_000
QUEUED_MAX_KBYTES = 256 * 1024
DEADLINE_CHECK_EVERY = 1024  # produce() calls between looks at the clock
TOPIC_READY_TIMEOUT_S = 60.0

PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger.ms": LINGER_MS,
    "batch.num.messages": BATCH_NUM_MESSAGES,
    "batch.size": BATCH_SIZE_BYTES,
    "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
    "compression.type": "none",
    "enable.idempotence": False,
}
CONSUMER_SETTINGS: dict[str, Any] = {
    "group.id": "kafka-bench-unused",  # assign() only: no group is joined
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
    "max.partition.fetch.bytes": MAX_PARTITION_FETCH_BYTES,
    "fetch.max.bytes": FETCH_MAX_BYTES,
    "queued.min.messages": QUEUED_MIN_MESSAGES,
    "queued.max.messages.kbytes": QUEUED_MAX_KBYTES,
}


@attrs.define
class PhaseResult:
    """What one produce or consume phase measured."""

    records: int  # produced (delivered without error) or consumed
    seconds: float
    client_cpu_s: float  # this process's CPU time in the phase: the client's own cost
    errors: int = 0  # delivery reports with an error, or consumer errors
    error: str = ""  # why the phase stopped early, if it did

    @property
    def msgs_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def create_topic(bootstrap: str, name: str, partitions: int, factor: int) -> dict[int, int]:
    """Create the topic and wait until every partition has a leader and a full ISR.

    Returns partition -> leader id.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=factor)],
        operation_timeout=30,
        request_timeout=30,
    )
    futures[name].result(timeout=TOPIC_READY_TIMEOUT_S)
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    while True:
        topic = admin.list_topics(name, timeout=10).topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions:
            parts = topic.partitions.values()
            if all(p.leader >= 0 and len(p.isrs) == factor for p in parts):
                return {p.id: p.leader for p in parts}
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {name} has no leader or full ISR: {topic}")
        time.sleep(0.1)


class _DeliveryCount:
    def __init__(self) -> None:
        self.delivered = 0
        self.errors = 0
        self.first_error = ""
        self.last_report_at = 0.0

    def on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        self.last_report_at = time.perf_counter()
        if error is None:
            self.delivered += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or str(error)


def _produce_all(
    producer: Producer,
    topic: str,
    partitions: int,
    first: int,
    count: int,
    value: bytes,
    past_deadline: Callable[[], bool],
) -> int:
    """produce() record first..first+count-1; how many were handed to librdkafka."""
    for seq in range(first, first + count):
        while True:
            try:
                producer.produce(topic, value, partition=seq % partitions)
                break
            except BufferError:  # the local queue is full: serve delivery reports
                producer.poll(0.01)
        producer.poll(0)
        if seq % DEADLINE_CHECK_EVERY == 0 and past_deadline():
            return seq - first + 1
    return count


def produce(
    bootstrap: str,
    topic: str,
    partitions: int,
    records: int,
    warmup: int,
    cap_s: float,
) -> PhaseResult:
    """`warmup` records (connections, metadata, first batches), then `records` on the clock.

    The clock runs from the first measured produce() to the last delivery report.
    """
    counts = _DeliveryCount()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "on_delivery": counts.on_delivery, **PRODUCER_SETTINGS}
    )
    value = b"v" * VALUE_BYTES
    deadline = time.monotonic() + cap_s

    def past_deadline() -> bool:
        return time.monotonic() > deadline

    try:
        _produce_all(producer, topic, partitions, 0, warmup, value, past_deadline)
        left = producer.flush(max(0.0, deadline - time.monotonic()))
        if left or counts.errors or counts.delivered != warmup:
            return PhaseResult(
                0, 0.0, 0.0, counts.errors, _failed("warm-up", counts, warmup, left, cap_s)
            )
        counts.delivered = 0
        cpu_began = time.process_time()
        began = time.perf_counter()
        handed = _produce_all(producer, topic, partitions, warmup, records, value, past_deadline)
        left = producer.flush(max(0.0, deadline - time.monotonic()))
        seconds = counts.last_report_at - began
        cpu = time.process_time() - cpu_began
        error = ""
        if handed < records or left or counts.errors or counts.delivered != records:
            error = _failed("produce", counts, records, left + records - handed, cap_s)
        return PhaseResult(counts.delivered, seconds, cpu, counts.errors, error)
    finally:
        producer.purge()  # nothing is left after a clean run; after a capped one, drop it
        producer.flush(0)


def _failed(what: str, counts: _DeliveryCount, wanted: int, undelivered: int, cap_s: float) -> str:
    why = f"{what}: {counts.delivered} of {wanted} delivered"
    if undelivered:
        why += f", {undelivered} not delivered within the {cap_s:g} s cap"
    if counts.errors:
        why += f", {counts.errors} delivery errors (first: {counts.first_error})"
    return why


def consume(
    bootstrap: str, topic: str, partitions: int, expected: int, cap_s: float
) -> PhaseResult:
    """Read the topic from the beginning with assign() until `expected` messages are in.

    The clock runs from assign() to the last message; the bootstrap connection and
    metadata are set up before it.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, **CONSUMER_SETTINGS})
    try:
        consumer.list_topics(topic, timeout=30)
        deadline = time.monotonic() + cap_s
        seen = errors = 0
        at_end: set[int] = set()
        first_error = ""
        cpu_began = time.process_time()
        began = last = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        while seen < expected and time.monotonic() < deadline:
            before = seen
            # Never more than are left: consume() waits until it has num_messages (or
            # its timeout), so the call that gets the last message returns with it.
            wanted = min(CONSUME_CHUNK, expected - seen)
            for message in consumer.consume(num_messages=wanted, timeout=0.5):
                error = message.error()
                if error is None:
                    seen += 1
                    continue
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                errors += 1
                first_error = first_error or str(error)
            if seen > before:
                last = time.perf_counter()
            if len(at_end) == partitions:
                # Everything was produced before: every partition at its end means the
                # rest will never come.
                break
        cpu = time.process_time() - cpu_began
        why = ""
        if seen != expected or errors:
            why = f"consume: {seen} of {expected} messages"
            if time.monotonic() >= deadline:
                why += f", stopped by the {cap_s:g} s cap"
            if errors:
                why += f", {errors} consumer errors (first: {first_error})"
        return PhaseResult(seen, last - began, cpu, errors, why)
    finally:
        consumer.close()
