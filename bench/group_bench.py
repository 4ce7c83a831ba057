"""Consumer-group figures against a 3-node pykraft cluster: rebalance times, commit rates.

    python bench/group_bench.py [--trials 10]

Members are `jepsen_like.group_member` processes (kafka-python, the classic protocol,
eager rebalancing, Kafka's minimum session timeout of 6 s), three in one group on a
6-partition topic. Each trial takes one member away and times, from the signal, how
long until the others' assignments in a newer generation cover every partition again:

- rebalance_leave_ms: the member is stopped (SIGTERM: it leaves the group, LeaveGroup);
- rebalance_kill_ms: the member is SIGKILLed (the coordinator notices when its session
  times out, so this is bounded below by session_timeout_ms).

After each trial the member is started again and the group settles before the next.
Offset commits per second: one confluent-kafka consumer committing an explicit offset
of one partition, synchronously (each waits for its answer: latency bound) and
asynchronously (up to `--in-flight` outstanding). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from broker.local_cluster import LocalCluster

PARTITIONS = 6
MEMBERS = 3
SESSION_TIMEOUT_MS = 6_000
SETTLE_TIMEOUT_S = 60.0
GROUP = "bench-group"
TOPIC = "bench-group-topic"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Members:
    """Member processes and their events, read by one thread per process."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.covered: dict[int, set[int]] = {}  # generation -> partitions assigned in it
        self.generation = -1  # the newest generation that covered every partition

    def start(self, member: int) -> None:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jepsen_like.group_member",
                "--bootstrap",
                self.bootstrap,
                "--topic",
                TOPIC,
                "--group",
                GROUP,
                "--member",
                str(member),
                "--time-s",
                "3600",
                "--session-timeout-ms",
                str(SESSION_TIMEOUT_MS),
                "--process-ms",
                "5",
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self.processes[member] = process
        threading.Thread(target=self._read, args=(member, process), daemon=True).start()

    def _read(self, member: int, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip():
                self.events.put((member, json.loads(line)))

    def wait_covered(self, after_generation: int, timeout_s: float = SETTLE_TIMEOUT_S) -> int:
        """Until a generation newer than `after_generation` covers every partition: the
        monotonic time (ns) of the assignment that completed it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                _, event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event["event"] != "assigned":
                continue
            generation = event["generation"]
            seen = self.covered.setdefault(generation, set())
            seen.update(event["partitions"])
            if generation > after_generation and len(seen) == PARTITIONS:
                self.generation = generation
                return int(event["time"])
        raise RuntimeError(f"no generation after {after_generation} covered every partition")

    def stop(self, member: int, signum: int) -> int:
        """Signal a member; the monotonic time (ns) just before."""
        process = self.processes.pop(member)
        at = time.monotonic_ns()
        os.kill(process.pid, signum)
        process.wait(timeout=SESSION_TIMEOUT_MS / 1000 + 30)
        return at

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


def create_topic(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)]).values():
        future.result(30)


def rebalances(bootstrap: str, trials: int) -> dict[str, Any]:
    members = Members(bootstrap)
    leave_ms: list[float] = []
    kill_ms: list[float] = []
    try:
        for member in range(MEMBERS):
            members.start(member)
        members.wait_covered(-1)
        for trial in range(trials):
            for signum, sink in ((signal.SIGTERM, leave_ms), (signal.SIGKILL, kill_ms)):
                victim = trial % MEMBERS
                before = members.generation
                at = members.stop(victim, signum)
                done = members.wait_covered(before)
                sink.append((done - at) / 1e6)
                before = members.generation
                members.start(victim)
                members.wait_covered(before)  # the member is back: the group has 3 again
    finally:
        members.close()
    return {
        "rebalance_leave_ms_p50": round(percentile(leave_ms, 0.5), 1),
        "rebalance_leave_ms_p99": round(percentile(leave_ms, 0.99), 1),
        "rebalance_kill_ms_p50": round(percentile(kill_ms, 0.5), 1),
        "rebalance_kill_ms_p99": round(percentile(kill_ms, 0.99), 1),
        "rebalance_leave_ms": [round(v) for v in leave_ms],
        "rebalance_kill_ms": [round(v) for v in kill_ms],
    }


def commit_rates(bootstrap: str, commits: int, in_flight: int) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    done = [0]
    errors = [0]

    def committed(error: Any, _partitions: Any) -> None:
        done[0] += 1
        if error is not None:
            errors[0] += 1

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-commits",
            "enable.auto.commit": False,
            "on_commit": committed,
        }
    )
    try:
        consumer.commit(offsets=[TopicPartition(TOPIC, 0, 0)], asynchronous=False)  # warm
        started = time.perf_counter()
        for offset in range(1, commits + 1):
            consumer.commit(offsets=[TopicPartition(TOPIC, 0, offset)], asynchronous=False)
        sync_s = time.perf_counter() - started
        done[0] = errors[0] = 0
        started = time.perf_counter()
        sent = 0
        while done[0] < commits:
            while sent < commits and sent - done[0] < in_flight:
                sent += 1
                consumer.commit(
                    offsets=[TopicPartition(TOPIC, 0, commits + sent)], asynchronous=True
                )
            consumer.poll(0.001)
        async_s = time.perf_counter() - started
    finally:
        consumer.close()
    return {
        "offset_commits_per_s_sync": round(commits / sync_s),
        "offset_commits_per_s_async": round(commits / async_s),
        "commit_errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=50)
    args = parser.parse_args()
    import confluent_kafka

    line: dict[str, Any] = {
        "bench": "group",
        "trials": args.trials,
        "members": MEMBERS,
        "partitions": PARTITIONS,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "librdkafka": confluent_kafka.libversion()[0],
    }
    with (
        tempfile.TemporaryDirectory(prefix="group-bench-") as root,
        LocalCluster(root, combined=3) as cluster,
    ):
        cluster.start_all()
        bootstrap = cluster.bootstrap_servers()
        create_topic(bootstrap)
        line.update(commit_rates(bootstrap, args.commits, args.in_flight))
        line.update(rebalances(bootstrap, args.trials))
    line["rebalance_kill_minus_session_ms_p50"] = round(
        line["rebalance_kill_ms_p50"] - SESSION_TIMEOUT_MS, 1
    )
    line["commit_latency_ms_mean"] = round(1000 / line["offset_commits_per_s_sync"], 3)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
