"""One librdkafka producer and one librdkafka consumer, as kafka_bench drives them.

Both are bounded by a record count and by a wall-clock cap; a phase that reaches its
cap stops and says so in `PhaseResult.error` instead of hanging. Whatever broker is
behind the bootstrap address sees exactly the same requests: the same values, the same
explicit partition for record i (i mod partitions), the same client settings.
"""

from __future__ import annotations

import json
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
STATS_INTERVAL_MS = 500
STATS_WAIT_S = 5.0  # for the report that closes a window, after the clock has stopped

PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger.ms": LINGER_MS,
    "batch.num.messages": BATCH_NUM_MESSAGES,
    "batch.size": BATCH_SIZE_BYTES,
    "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
    "compression.type": "none",
    "enable.idempotence": False,
    "statistics.interval.ms": STATS_INTERVAL_MS,
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


class Clock:
    """Told when a phase's clock starts and stops (kafka_bench reads the servers' CPU)."""

    def started(self) -> None:
        pass

    def stopped(self) -> None:
        pass


@attrs.define
class PhaseResult:
    """What one produce or consume phase measured."""

    records: int  # produced (delivered without error) or consumed
    seconds: float
    client_cpu_s: float  # this process's CPU time in the phase: the client's own cost
    # The Python thread that calls produce()/consume(): near `seconds`, the client is the
    # limit, not the broker.
    client_main_thread_cpu_s: float
    errors: int = 0  # delivery reports with an error, or consumer errors
    error: str = ""  # why the phase stopped early, if it did
    producer_stats: dict[str, float] = attrs.Factory(dict)  # from librdkafka's statistics

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


class _ProducerStats:
    """librdkafka's statistics reports, added up from one `reset()` on.

    Its histograms (batch sizes, round-trip times) are windows that start anew at
    each report; request counts are totals since the producer began.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.reports = 0
        self.produce_requests = 0
        self.reset()

    def reset(self) -> None:
        self.produce_requests_before = self.produce_requests
        self.batches = self.batch_records = self.batch_bytes = 0
        self.rtt_count = 0
        self.rtt_sum_us = 0.0
        self.rtt_p99_max_us = 0

    def on_stats(self, report: str) -> None:
        stats = json.loads(report)
        self.reports += 1
        topic = stats.get("topics", {}).get(self.topic)
        if topic is not None:
            self.batches += topic["batchcnt"]["cnt"]
            self.batch_records += topic["batchcnt"]["sum"]
            self.batch_bytes += topic["batchsize"]["sum"]
        requests = 0
        for broker in stats.get("brokers", {}).values():
            if broker.get("nodeid", -1) < 0:
                continue  # the bootstrap connection
            requests += broker.get("req", {}).get("Produce", 0)
            rtt = broker["rtt"]
            self.rtt_count += rtt["cnt"]
            self.rtt_sum_us += rtt["sum"]
            self.rtt_p99_max_us = max(self.rtt_p99_max_us, rtt["p99"])
        self.produce_requests = requests

    def wait_report(self, producer: Producer) -> None:
        """Until one more report has come: it closes the windows that are open."""
        seen = self.reports
        deadline = time.monotonic() + STATS_WAIT_S
        while self.reports == seen and time.monotonic() < deadline:
            producer.poll(0.05)

    def summary(self) -> dict[str, float]:
        if not self.batches:
            return {}
        return {
            "requests": self.produce_requests - self.produce_requests_before,
            "batches": self.batches,
            "batch_records_avg": round(self.batch_records / self.batches, 1),
            "batch_bytes_avg": round(self.batch_bytes / self.batches),
            "rtt_avg_ms": round(self.rtt_sum_us / max(1, self.rtt_count) / 1000, 2),
            "rtt_p99_max_ms": round(self.rtt_p99_max_us / 1000, 2),
        }


def _produce_all(
    producer: Producer,
    topic: str,
    partitions: int,
    first: int,
    count: int,
    value: bytes,
    past_deadline: Callable[[], bool],
) -> tuple[int, int]:
    """produce() record first..first+count-1: (how many were handed to librdkafka, how
    often its queue was full)."""
    queue_full = 0
    for seq in range(first, first + count):
        while True:
            try:
                producer.produce(topic, value, partition=seq % partitions)
                break
            except BufferError:  # the local queue is full: serve delivery reports
                queue_full += 1
                producer.poll(0.01)
        producer.poll(0)
        if seq % DEADLINE_CHECK_EVERY == 0 and past_deadline():
            return seq - first + 1, queue_full
    return count, queue_full


def produce(
    bootstrap: str,
    topic: str,
    partitions: int,
    records: int,
    warmup: int,
    cap_s: float,
    clock: Clock | None = None,
) -> PhaseResult:
    """`warmup` records (connections, metadata, first batches), then `records` on the clock.

    The clock runs from the first measured produce() to the last delivery report.
    """
    counts = _DeliveryCount()
    stats = _ProducerStats(topic)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "on_delivery": counts.on_delivery,
            "stats_cb": stats.on_stats,
            **PRODUCER_SETTINGS,
        }
    )
    value = b"v" * VALUE_BYTES
    deadline = time.monotonic() + cap_s

    def past_deadline() -> bool:
        return time.monotonic() > deadline

    try:
        _produce_all(producer, topic, partitions, 0, warmup, value, past_deadline)
        left = producer.flush(max(0.0, deadline - time.monotonic()))
        if left or counts.errors or counts.delivered != warmup:
            why = _failed(
                "warm-up", counts, warmup, warmup - counts.delivered - counts.errors, cap_s
            )
            return PhaseResult(0, 0.0, 0.0, 0.0, counts.errors, why)
        stats.wait_report(producer)
        stats.reset()
        counts.delivered = 0
        clock = clock or Clock()
        clock.started()
        cpu_began, main_began = time.process_time(), time.thread_time()
        began = time.perf_counter()
        handed, queue_full = _produce_all(
            producer, topic, partitions, warmup, records, value, past_deadline
        )
        left = producer.flush(max(0.0, deadline - time.monotonic()))
        clock.stopped()
        seconds = max(0.0, counts.last_report_at - began)
        cpu, main_cpu = time.process_time() - cpu_began, time.thread_time() - main_began
        stats.wait_report(producer)
        error = ""
        if handed < records or left or counts.errors or counts.delivered != records:
            undelivered = records - counts.delivered - counts.errors
            error = _failed("produce", counts, records, undelivered, cap_s)
        summary = {**stats.summary(), "queue_full_waits": queue_full}
        return PhaseResult(counts.delivered, seconds, cpu, main_cpu, counts.errors, error, summary)
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
    bootstrap: str,
    topic: str,
    partitions: int,
    expected: int,
    cap_s: float,
    clock: Clock | None = None,
) -> PhaseResult:
    """Read the topic from the beginning with assign() until `expected` messages are in.

    The clock runs from assign() to the last message; the bootstrap connection and
    metadata are set up before it.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, **CONSUMER_SETTINGS})
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        consumer.list_topics(topic, timeout=30)
        # The client needs a group.id, so it looks for its coordinator at once; asking for
        # committed offsets waits for it. A broker that creates its offsets topic on the
        # first FindCoordinator does that now, not on the clock.
        consumer.committed(assigned, timeout=TOPIC_READY_TIMEOUT_S)
        deadline = time.monotonic() + cap_s
        seen = errors = 0
        at_end: set[int] = set()
        first_error = ""
        clock = clock or Clock()
        clock.started()
        cpu_began, main_began = time.process_time(), time.thread_time()
        began = last = time.perf_counter()
        for item in assigned:
            item.offset = OFFSET_BEGINNING
        consumer.assign(assigned)
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
                    at_end.add(message.partition() or 0)
                    continue
                errors += 1
                first_error = first_error or str(error)
            if seen > before:
                last = time.perf_counter()
            if len(at_end) == partitions:
                # Everything was produced before: every partition at its end means the
                # rest will never come.
                break
        clock.stopped()
        cpu, main_cpu = time.process_time() - cpu_began, time.thread_time() - main_began
        why = ""
        if seen != expected or errors:
            why = f"consume: {seen} of {expected} messages"
            if time.monotonic() >= deadline:
                why += f", stopped by the {cap_s:g} s cap"
            if errors:
                why += f", {errors} consumer errors (first: {first_error})"
        return PhaseResult(seen, last - began, cpu, main_cpu, errors, why)
    finally:
        consumer.close()
