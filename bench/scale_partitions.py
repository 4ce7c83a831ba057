"""Partitions on one broker: the partition series of scale_bench.

For each count n, a fresh 1 controller + 1 broker (separate processes), topics of RF 1
holding n partitions (topics of at most TOPIC_PARTITIONS_MAX), then:
- `create_s`: CreateTopics sent (librdkafka's admin client) to every partition having
  a leader in the broker's Metadata answer;
- broker RSS and open descriptors when started, after the create, after producing and
  after a restart; `kib_per_partition_*` = (RSS(n) - RSS(1)) / n, filled in by the
  series once the n = 1 point is in;
- `produce_*`: one librdkafka producer (acks=all, 100-byte values, key = record
  number), record i to global partition i mod n, so every partition gets records;
  bounded by a record count and a wall-clock cap;
- `restart_s`: SIGTERM to the broker, then a new broker process on the same data
  directory until it prints its ready line (unfenced), split by its log into
  `restart_registration_wait_s` and `restart_after_registration_s`; and
  `restart_all_led_s`: until its log has named every partition as led again (the
  ready line can come before the logs are open).
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.librdkafka_load import PRODUCER_SETTINGS, VALUE_BYTES
from bench.scale_procs import fd_limit, one_broker, open_fds, rss_mb
from broker.local_cluster import LocalCluster

TOPIC_PARTITIONS_MAX = 1_000
CREATE_TIMEOUT_S = 900.0
# A broker opens (and syncs) every log before it says it is ready: minutes at 10,000.
RESTART_TIMEOUT_S = 1800.0
READY_POLL_S = 0.2
# librdkafka logs every refused reconnect while the broker restarts; errors that matter
# come back through the delivery reports and the admin futures.
_LIBRDKAFKA_LOG = logging.getLogger("scale_bench.librdkafka")
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
_LIBRDKAFKA_LOG.propagate = False
QUIET = {"logger": _LIBRDKAFKA_LOG, "log_level": 0}
PRODUCE_SETTINGS = {
    **{k: v for k, v in PRODUCER_SETTINGS.items() if k != "statistics.interval.ms"},
    "queue.buffering.max.messages": 200_000,
}


def topic_layout(partitions: int) -> list[tuple[str, int]]:
    """(topic name, partition count) covering `partitions`."""
    layout = []
    for number, first in enumerate(range(0, partitions, TOPIC_PARTITIONS_MAX)):
        layout.append((f"scale-{number}", min(TOPIC_PARTITIONS_MAX, partitions - first)))
    return layout


def create_topics(bootstrap: str, layout: list[tuple[str, int]]) -> tuple[float, str]:
    """Seconds from CreateTopics to every partition led, as the broker's Metadata says,
    and the error CreateTopics answered, if any (the broker forwards it to the
    controller, and a broker busy opening logs may time that out while the topics are
    made all the same: the wait for the leaders decides)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    began = time.perf_counter()
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=count, replication_factor=1) for name, count in layout],
        operation_timeout=CREATE_TIMEOUT_S,
        request_timeout=CREATE_TIMEOUT_S,
    )
    answer = ""
    for future in futures.values():
        try:
            future.result(timeout=CREATE_TIMEOUT_S)
        except KafkaException as error:
            answer = answer or str(error)
    wanted = dict(layout)
    deadline = time.monotonic() + CREATE_TIMEOUT_S
    while True:
        try:
            topics = admin.list_topics(timeout=60).topics
        except KafkaException:  # the broker is busy opening logs: ask again
            topics = {}
        led = {
            name: sum(1 for p in topics[name].partitions.values() if p.leader >= 0)
            for name in wanted
            if name in topics and topics[name].error is None
        }
        if led == wanted:
            return time.perf_counter() - began, answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"partitions not all led after {CREATE_TIMEOUT_S} s ({answer})")
        time.sleep(READY_POLL_S)


def produce(
    bootstrap: str, layout: list[tuple[str, int]], records: int, cap_s: float
) -> dict[str, Any]:
    """Record i to global partition i mod n; the clock runs from the first produce() to
    the last delivery report."""
    targets = [(name, index) for name, count in layout for index in range(count)]
    delivered = errors = 0
    first_error = ""
    last_report = 0.0

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        nonlocal delivered, errors, first_error, last_report
        last_report = time.perf_counter()
        if error is None:
            delivered += 1
        else:
            errors += 1
            first_error = first_error or str(error)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "on_delivery": on_delivery,
            **PRODUCE_SETTINGS,
            **QUIET,
        }
    )
    value = b"v" * VALUE_BYTES
    try:
        # Metadata for every topic before the clock: the first produce() would wait for it.
        producer.list_topics(timeout=60)
        began = time.perf_counter()
        deadline = time.monotonic() + cap_s
        handed = 0
        for seq in range(records):
            topic, partition = targets[seq % len(targets)]
            while True:
                try:
                    producer.produce(topic, value, key=str(seq).encode(), partition=partition)
                    break
                except BufferError:
                    producer.poll(0.01)
            handed += 1
            producer.poll(0)
            if seq % 1024 == 0 and time.monotonic() > deadline:
                break
        left = producer.flush(max(0.0, deadline - time.monotonic()))
        seconds = max(1e-9, last_report - began)
    finally:
        producer.purge()
        producer.flush(0)
    result: dict[str, Any] = {
        "produce_records": delivered,
        "produce_msgs_per_s": round(delivered / seconds),
        "produce_s": round(seconds, 2),
    }
    if errors or left or handed < records or delivered != records:
        result["produce_error"] = (
            f"{delivered} of {records} delivered, {errors} errors ({first_error}), "
            f"{left} left at the {cap_s:g} s cap"
        )
    return result


def _logged_at(line: str) -> float | None:
    """The wall-clock time a node's log line was written ("2026-12-01 18:38:32,258 ...")."""
    try:
        stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    except ValueError:
        return None
    return stamp.timestamp()


def restart_phases(log_path: str, log_from: int, began_wall: float) -> dict[str, float]:
    """The restart split by the broker's own log: the wait until the controller took
    its registration (a sole broker's controlled shutdown cannot move its leaderships,
    so its old session is still alive and a new registration is refused until that
    session times out, as Kafka does), then the rest (metadata caught up, every log
    opened, unfenced)."""
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(log_from)
        lines = log.readlines()
    registered = next((_logged_at(x) for x in lines if "registered with epoch" in x), None)
    unfenced = next((_logged_at(x) for x in lines if ": unfenced" in x), None)
    if registered is None or unfenced is None:
        return {}
    return {
        "restart_registration_wait_s": round(registered - began_wall, 2),
        "restart_after_registration_s": round(unfenced - registered, 2),
    }


def wait_partitions_led(log_path: str, log_from: int, partitions: int) -> int:
    """Until the broker's log, past `log_from`, names `partitions` partitions it leads
    (or RESTART_TIMEOUT_S passes); how many it named."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    led: set[str] = set()
    position = log_from
    while len(led) < partitions and time.monotonic() < deadline:
        with open(log_path, "rb") as log:
            log.seek(position)
            chunk = log.read()
        complete = chunk.rfind(b"\n") + 1
        position += complete
        for line in chunk[:complete].decode(errors="replace").splitlines():
            name, found, _ = line.partition(": leader at epoch")
            if found:
                led.add(name.rsplit(" ", 1)[-1])
        if len(led) < partitions:
            time.sleep(READY_POLL_S)
    return len(led)


def _broker_state(cluster: LocalCluster, suffix: str) -> dict[str, Any]:
    pid = cluster.pid(cluster.broker_ids[0])
    return {f"broker_rss_mb_{suffix}": rss_mb(pid), f"broker_fds_{suffix}": open_fds(pid)}


def partition_point(
    directory: str, partitions: int, records: int, cap_s: float, point: dict[str, Any]
) -> None:
    """Fills `point` as it goes: a phase that fails leaves the figures before it."""
    layout = topic_layout(partitions)
    point["topics"] = len(layout)
    with one_broker(directory) as cluster:
        (broker,) = cluster.broker_ids
        (controller,) = cluster.controller_ids
        bootstrap = cluster.bootstrap_servers()
        point["broker_fd_limit"] = fd_limit(cluster.pid(broker))
        point.update(_broker_state(cluster, "started"))
        create_s, answer = create_topics(bootstrap, layout)
        point["create_s"] = round(create_s, 2)
        if answer:
            point["create_answer_error"] = answer
        point.update(_broker_state(cluster, "created"))
        point["controller_rss_mb_created"] = rss_mb(cluster.pid(controller))
        point.update(produce(bootstrap, layout, records, cap_s))
        point.update(_broker_state(cluster, "produced"))
        cluster.stop(broker)
        log_from = os.path.getsize(cluster.log_path(broker))
        began, began_wall = time.perf_counter(), time.time()
        cluster.start(broker, wait=False)
        cluster.wait_ready(broker, timeout_s=RESTART_TIMEOUT_S)
        point["restart_s"] = round(time.perf_counter() - began, 2)
        point.update(restart_phases(cluster.log_path(broker), log_from, began_wall))
        # Ready is not the end: the broker may say it is unfenced before it has opened
        # its logs; each partition it leads is logged as it is opened.
        led = wait_partitions_led(cluster.log_path(broker), log_from, partitions)
        point["restart_partitions_led"] = led
        point["restart_all_led_s"] = round(time.perf_counter() - began, 2)
        point.update(_broker_state(cluster, "restarted"))


def partition_series(root: str, counts: list[int], records: int, cap_s: float) -> dict[str, Any]:
    points = []
    for count in counts:
        directory = os.path.join(root, f"partitions-{count}")
        point: dict[str, Any] = {"partitions": count}
        points.append(point)
        try:
            partition_point(directory, count, records, cap_s, point)
        except Exception as error:  # reported in the line; the next point still runs
            point["error"] = f"{type(error).__name__}: {error}"
    base = next((p for p in points if p["partitions"] == 1 and "error" not in p), None)
    for point in points:
        if base is None or point is base:
            continue
        for phase in ("created", "produced"):
            if f"broker_rss_mb_{phase}" not in point:
                continue
            grown = point[f"broker_rss_mb_{phase}"] - base[f"broker_rss_mb_{phase}"]
            # per partition in KiB: an MB figure would round to 0 at small counts
            point[f"kib_per_partition_{phase}"] = round(1024 * grown / point["partitions"], 1)
    return {
        "records_per_point": records,
        "topic_partitions_max": TOPIC_PARTITIONS_MAX,
        "replication_factor": 1,
        "acks": "all",
        "points": points,
    }
