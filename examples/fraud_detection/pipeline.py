"""The pieces `demo` and `bench` assemble: a cluster, the topics, the processes, and
the watchers of alerts and lag."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

from examples.fraud_detection.detector import take_ready
from examples.fraud_detection.events import decode_alert
from examples.fraud_detection.latency import Latencies

PAYMENTS = "payments"
ALERTS = "alerts"
DETECTOR_GROUP = "fraud-detectors"


@contextlib.contextmanager
def cluster_or_given(bootstrap: str | None, nodes: int, root: str | None) -> Iterator[str]:
    """The bootstrap servers given, or those of a cluster of `nodes` processes started
    here and stopped (by pid) on the way out."""
    if bootstrap:
        yield bootstrap
        return
    from broker.local_cluster import LocalCluster

    workdir = root or tempfile.mkdtemp(prefix="fraud-cluster-")
    cluster = LocalCluster(workdir, combined=nodes)
    try:
        cluster.start_all()
        yield cluster.bootstrap_servers()
    finally:
        cluster.close()


def create_topics(bootstrap: str, *, partitions: int, replication: int, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=partitions, replication_factor=replication)
            for name in names
        ]
    )
    for name, future in futures.items():
        try:
            future.result(30)
        except Exception as error:
            if "TOPIC_ALREADY_EXISTS" not in str(error):
                raise RuntimeError(f"creating topic {name}: {error}") from error
    wait_for_leaders(bootstrap, names, partitions)


def wait_for_leaders(
    bootstrap: str, names: list[str], partitions: int, timeout_s: float = 60
) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=10)
        ready = all(
            name in metadata.topics
            and len(metadata.topics[name].partitions) == partitions
            and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
            for name in names
        )
        if ready:
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {names} have no leaders after {timeout_s} s")


class Child:
    """A process of this example (`python -m examples.fraud_detection ...`), its JSON
    lines on stdout read by a thread; stderr to a log file."""

    def __init__(self, name: str, args: list[str], log_dir: str) -> None:
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in wait/kill)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.fraud_detection", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.lines: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.log.write(raw)
            self.log.flush()
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def last(self, key: str) -> Any:
        for line in reversed(self.lines):
            if key in line:
                return line[key]
        return None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 20) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def stderr_tail(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()[-2000:]


def detector_args(
    bootstrap: str,
    semantics: str,
    instance: int,
    payments: str,
    alerts: str,
    group: str,
    fetch_wait_ms: int = 20,
    rebuild_window_s: float = 30.0,
) -> list[str]:
    return [
        "detect",
        "--bootstrap", bootstrap,
        "--semantics", semantics,
        "--instance", str(instance),
        "--payments-topic", payments,
        "--alerts-topic", alerts,
        "--group", group,
        "--fetch-wait-ms", str(fetch_wait_ms),
        "--rebuild-window-s", str(rebuild_window_s),
    ]  # fmt: skip


def wait_assigned(detectors: list[Child], partitions: int, timeout_s: float = 90) -> None:
    """Until the live detectors' latest assignments cover every partition once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned: list[int] = []
        for detector in detectors:
            if detector.process.poll() is not None:
                raise RuntimeError(f"{detector.name} exited: {detector.stderr_tail()}")
            owned.extend(detector.last("assigned") or [])
        if sorted(owned) == list(range(partitions)) and all(
            detector.last("assigned") for detector in detectors
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the detectors did not share the {partitions} partitions in {timeout_s} s")


class AlertWatcher:
    """Reads `alerts` from the beginning (read_committed: what a downstream consumer
    sees), timing each alert from its payment's timestamp to its arrival here.

    `start()` polls in a thread of its own: polled from the run's loop, an alert that
    arrived while the loop waited on the lag meter's requests (13 round trips each
    second, hundreds of milliseconds on a busy machine) was timed late by that wait."""

    def __init__(
        self, bootstrap: str, topic: str, partitions: int, fetch_wait_ms: int = 10
    ) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"fraud-alert-watcher-{os.getpid()}",  # assign(): never joins
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": fetch_wait_ms,
            }
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.latencies = Latencies()
        self.to_detector = Latencies()  # payment timestamp to the detector seeing it
        self.per_second: list[tuple[float, float]] = []  # (arrival s, latency ms)
        self.seen: Counter[tuple[int, str]] = Counter()
        self.count = 0
        self.last_alert_at = time.monotonic()  # of the last poll that took an alert
        self.lock = threading.Lock()  # poll's updates, against readers in other threads
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, timeout_s: float) -> int:
        messages = take_ready(self.consumer, 10_000, timeout_s)
        now_ms = time.time() * 1000
        taken = 0
        with self.lock:
            for message in messages:
                if message.error() is not None:
                    continue
                alert = decode_alert(message.value())
                latency = now_ms - alert.event_ts_ms
                self.latencies.record(latency)
                self.to_detector.record(alert.detected_ms - alert.event_ts_ms)
                self.per_second.append((now_ms / 1000, latency))
                self.seen[(alert.card, alert.pattern)] += 1
                taken += 1
            self.count += taken
            if taken:
                self.last_alert_at = time.monotonic()
        return taken

    def start(self) -> None:
        def loop() -> None:
            while not self._stopped.is_set():
                self.poll(0.05)

        self._thread = threading.Thread(target=loop, name="alert-watcher", daemon=True)
        self._thread.start()

    def recent(self, since_s: float) -> list[float]:
        """Latencies of the alerts that arrived at or after `since_s` (epoch seconds)."""
        with self.lock:
            found = []
            for arrived, latency in reversed(self.per_second):
                if arrived < since_s:
                    break
                found.append(latency)
            return found

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(10)
        self.consumer.close()


class LagMeter:
    """Payments not yet committed by the detector group, summed over partitions."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, group: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                # read_committed would make committed() ask for stable offsets only, and
                # with a transaction always open it would wait (UNSTABLE_OFFSET_COMMIT).
                "isolation.level": "read_uncommitted",
            }
        )
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.last = (-1, 0)

    def measure(self) -> tuple[int, int]:
        """(lag, end offsets summed); the last figures again if the cluster is slow to
        answer (lag -1 until a first answer)."""
        from confluent_kafka import KafkaException

        with contextlib.suppress(KafkaException):
            self.last = self._measure()
        return self.last

    def _measure(self) -> tuple[int, int]:
        committed = self.consumer.committed(self.partitions, timeout=10)
        lag = 0
        ends = 0
        for tp in committed:
            _, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            ends += high
            lag += high - max(tp.offset, 0)
        return lag, ends

    def close(self) -> None:
        self.consumer.close()


def score(incidents: list[Any], seen: Counter[tuple[int, str]]) -> dict[str, Any]:
    planted = {(incident.card, incident.pattern) for incident in incidents}
    found = planted & set(seen)
    return {
        "planted": len(planted),
        "found": len(found),
        "recall": round(len(found) / len(planted), 6) if planted else None,
        "false_alerts": len(set(seen) - planted),
        "duplicate_alerts": sum(count - 1 for count in seen.values()),
    }
