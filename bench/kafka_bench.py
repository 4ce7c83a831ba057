"""librdkafka against pykraft and against the Tansu broker, in one run.

    python bench/kafka_bench.py [--records 1000000] [--seconds 60] [--only rf1,rf3,tansu]
                                [--profile DIR]

One confluent-kafka (librdkafka) producer, acks=all, 100-byte values, linger.ms 5,
record i to partition i mod 6, then one librdkafka consumer reading the topic back
from the beginning with assign(). The same workload runs against:
- pykraft, 1 controller + 1 broker (separate OS processes), topic RF 1
  (msgs_per_s_rf1, consume_msgs_per_s_rf1);
- pykraft, 1 controller + 3 brokers, RF 3 (msgs_per_s_rf3_acksall, consume_msgs_per_s);
- Tansu (bench/tansu.py: one node, memory storage), RF 1 (tansu_msgs_per_s,
  tansu_consume_msgs_per_s);
one system at a time, so they never share the CPU. Each produce phase first sends a
warm-up (connections, metadata, first batches), then the clock runs from the first
measured produce() to the last delivery report; each consume phase runs from assign()
to the last message (it reads the warm-up too, and must get exactly what was
acknowledged; it finds its group coordinator before the clock, since librdkafka
insists on a group.id). Phases are bounded by record count and by a wall-clock cap
(--seconds): one that reaches it ends with an `<phase>_error` key. Prints one JSON
line; exits 1 if any delivery report had an error, any count is off or any phase
failed. Besides the rates, each phase reports the servers' CPU per message
(`*_server_cpu_us_per_msg`, from /proc) and the client's (`*_client_cpu_s`, all its
threads; `*_client_main_thread_cpu_s` near `*_seconds` means the Python loop calling
produce() was the limit, not the broker), and each produce phase librdkafka's own
statistics (requests, records and bytes per batch, round-trip times) and how often
produce() found librdkafka's queue full (`*_queue_full_waits`: the broker held it
back). With --profile DIR, py-spy samples the RF 1 broker through its produce and its
consume phase (DIR/produce.txt, DIR/fetch.txt) and the first RF 3 broker through its
produce phase (DIR/rf3_produce.txt); bench/pyspy_profile.py summarises them.
Every process started here is stopped by its pid however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import confluent_kafka

from bench import librdkafka_load as load
from bench import pyspy_profile
from bench.librdkafka_load import PhaseResult
from bench.tansu import running_tansu, tansu_binary
from broker.local_cluster import LocalCluster, NodeFailedToStart

PARTITIONS = 6
DEFAULT_RECORDS = 1_000_000
DEFAULT_CAP_S = 60.0
WARMUP_FRACTION = 10  # warm-up records: records / this, within the bounds below
WARMUP_MIN, WARMUP_MAX = 1_000, 30_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warmup_records(records: int) -> int:
    return min(max(records // WARMUP_FRACTION, WARMUP_MIN), WARMUP_MAX)


class Run:
    """The JSON line being built, and whether anything went wrong."""

    def __init__(self, records: int, cap_s: float) -> None:
        self.records = records
        self.warmup = warmup_records(records)
        self.cap_s = cap_s
        self.line: dict[str, Any] = context(records, self.warmup, cap_s)
        self.delivery_errors = 0
        self.failed = False

    def fail(self, key: str, why: str) -> None:
        self.line[key] = why
        self.failed = True

    def produce(self, prefix: str, bootstrap: str, topic: str, servers: list[int]) -> PhaseResult:
        clock = ServerCpu(servers)
        result = load.produce(
            bootstrap, topic, PARTITIONS, self.records, self.warmup, self.cap_s, clock
        )
        self.delivery_errors += result.errors
        self._record(f"{prefix}produce", result, clock.seconds)
        return result

    def consume(
        self, prefix: str, bootstrap: str, topic: str, servers: list[int], produced: PhaseResult
    ) -> PhaseResult:
        """Everything the produce phase had acknowledged, read back."""
        clock = ServerCpu(servers)
        expected = self.warmup + produced.records
        result = load.consume(bootstrap, topic, PARTITIONS, expected, self.cap_s, clock)
        self._record(f"{prefix}consume", result, clock.seconds)
        return result

    def _record(self, phase: str, result: PhaseResult, server_cpu: float) -> None:
        self.line[f"{phase}_seconds"] = round(result.seconds, 3)
        self.line[f"{phase}_client_cpu_s"] = round(result.client_cpu_s, 2)
        self.line[f"{phase}_client_main_thread_cpu_s"] = round(result.client_main_thread_cpu_s, 2)
        self.line[f"{phase}_server_cpu_s"] = round(server_cpu, 2)
        if result.records:
            per_message = 1e6 * server_cpu / result.records
            self.line[f"{phase}_server_cpu_us_per_msg"] = round(per_message, 2)
        for key, value in result.producer_stats.items():
            self.line[f"{phase}_{key}"] = value
        if result.error:
            self.fail(f"{phase}_error", result.error)

    def guarded(self, key: str, body: Callable[[], None]) -> None:
        """Run one system's phases; an exception there is reported, and the next
        system still runs."""
        try:
            body()
        except Exception as error:  # reported in the JSON line, and the run exits 1
            self.fail(key, f"{type(error).__name__}: {error}")


def context(records: int, warmup: int, cap_s: float) -> dict[str, Any]:
    return {
        "records": records,
        "warmup_records": warmup,
        "partitions": PARTITIONS,
        "value_bytes": load.VALUE_BYTES,
        "acks": "all",
        "linger_ms": load.LINGER_MS,
        "batch_num_messages": load.BATCH_NUM_MESSAGES,
        "batch_size_bytes": load.BATCH_SIZE_BYTES,
        "compression": "none",
        "max_partition_fetch_bytes": load.MAX_PARTITION_FETCH_BYTES,
        "fetch_max_bytes": load.FETCH_MAX_BYTES,
        "fetch_wait_max_ms": load.FETCH_WAIT_MAX_MS,
        "phase_cap_s": cap_s,
        "librdkafka_version": confluent_kafka.libversion()[0],
        "confluent_kafka_version": confluent_kafka.__version__,
        "python_version": sys.version.split()[0],
        "pykraft_git_commit": _git("rev-parse", "--short", "HEAD"),
        "pykraft_git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "tansu_version": _tansu_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _tansu_version() -> str:
    binary = tansu_binary()
    if binary is None:
        return ""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip().removeprefix("tansu ")


class ServerCpu(load.Clock):
    """The CPU the server processes used while a phase's clock ran."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seconds = 0.0
        self._began = 0.0

    def started(self) -> None:
        self._began = server_cpu_s(self.pids)

    def stopped(self) -> None:
        self.seconds = server_cpu_s(self.pids) - self._began


def server_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes (all their threads) have used so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def tansu_pids() -> list[int]:
    """The Tansu process running_tansu() started: a child of this one named tansu."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", encoding="ascii") as file:
            head, _, rest = file.read().rpartition(")")
            if head.endswith("(tansu") and int(rest.split()[1]) == os.getpid():
                found.append(int(entry))
    return found


@contextlib.contextmanager
def pykraft(root: str, name: str, brokers: int) -> Iterator[LocalCluster]:
    """1 controller + `brokers` brokers, each its own process; every pid stopped after."""
    directory = os.path.join(root, name)
    try:
        with LocalCluster(directory, controllers=1, brokers=brokers) as cluster:
            try:
                cluster.start_all()
            except NodeFailedToStart as error:
                raise NodeFailedToStart(f"{error}: {_log_tails(cluster)}") from error
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _log_tails(cluster: LocalCluster, chars: int = 600) -> str:
    """The end of each node's log: the directory holding them is removed after the run."""
    tails = []
    for node_id in sorted(cluster.configs):
        with contextlib.suppress(OSError), open(cluster.log_path(node_id), "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - chars))
            tails.append(f"node {node_id}: ...{log.read().decode(errors='replace')}")
    return " | ".join(tails)


@contextlib.contextmanager
def maybe_profiling(pid: int, profile_dir: str, name: str) -> Iterator[None]:
    if not profile_dir:
        yield
        return
    with pyspy_profile.recording(pid, os.path.join(profile_dir, f"{name}.txt")):
        yield


def run_pykraft_rf1(run: Run, root: str, profile_dir: str) -> None:
    with pykraft(root, "rf1", brokers=1) as cluster:
        bootstrap = cluster.bootstrap_servers()
        load.create_topic(bootstrap, "bench-rf1", PARTITIONS, 1)
        (broker,) = cluster.broker_ids
        servers = [cluster.pid(node) for node in cluster.configs]
        with maybe_profiling(cluster.pid(broker), profile_dir, "produce"):
            produced = run.produce("rf1_", bootstrap, "bench-rf1", servers)
        run.line["msgs_per_s_rf1"] = round(produced.msgs_per_s)
        with maybe_profiling(cluster.pid(broker), profile_dir, "fetch"):
            consumed = run.consume("rf1_", bootstrap, "bench-rf1", servers, produced)
        run.line["consume_msgs_per_s_rf1"] = round(consumed.msgs_per_s)


def run_pykraft_rf3(run: Run, root: str, profile_dir: str) -> None:
    with pykraft(root, "rf3", brokers=3) as cluster:
        bootstrap = cluster.bootstrap_servers()
        leaders = load.create_topic(bootstrap, "bench-rf3", PARTITIONS, 3)
        led = {
            str(b): sum(1 for leader in leaders.values() if leader == b) for b in cluster.broker_ids
        }
        run.line["rf3_partitions_led_by_broker"] = led
        servers = [cluster.pid(node) for node in cluster.configs]
        # One broker: it leads two partitions and follows four (Kafka's replica fetches).
        with maybe_profiling(cluster.pid(cluster.broker_ids[0]), profile_dir, "rf3_produce"):
            produced = run.produce("rf3_", bootstrap, "bench-rf3", servers)
        run.line["msgs_per_s_rf3_acksall"] = round(produced.msgs_per_s)
        consumed = run.consume("rf3_", bootstrap, "bench-rf3", servers, produced)
        run.line["consume_msgs_per_s"] = round(consumed.msgs_per_s)


def run_tansu(run: Run) -> None:
    with running_tansu() as bootstrap:
        load.create_topic(bootstrap, "bench-tansu", PARTITIONS, 1)
        servers = tansu_pids()
        produced = run.produce("tansu_", bootstrap, "bench-tansu", servers)
        run.line["tansu_msgs_per_s"] = round(produced.msgs_per_s)
        consumed = run.consume("tansu_", bootstrap, "bench-tansu", servers, produced)
        run.line["tansu_consume_msgs_per_s"] = round(consumed.msgs_per_s)


def ratio(line: dict[str, Any], numerator: str, denominator: str) -> float | None:
    if line.get(numerator) and line.get(denominator):
        return round(line[numerator] / line[denominator], 3)
    return None


SYSTEMS = ("rf1", "rf3", "tansu")


def bench(records: int, cap_s: float, profile_dir: str, systems: tuple[str, ...]) -> Run:
    run = Run(records, cap_s)
    run.line["systems"] = list(systems)
    root = tempfile.mkdtemp(prefix="kafka-bench-")
    try:
        if "rf1" in systems:
            run.guarded("rf1_error", lambda: run_pykraft_rf1(run, root, profile_dir))
        if "rf3" in systems:
            run.guarded("rf3_error", lambda: run_pykraft_rf3(run, root, profile_dir))
        if "tansu" in systems:
            run.guarded("tansu_error", lambda: run_tansu(run))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    line = run.line
    line["delivery_errors"] = run.delivery_errors
    line["ratio_rf1_vs_tansu"] = ratio(line, "msgs_per_s_rf1", "tansu_msgs_per_s")
    line["ratio_consume_rf1_vs_tansu"] = ratio(
        line, "consume_msgs_per_s_rf1", "tansu_consume_msgs_per_s"
    )
    line["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    line["ok"] = not run.failed and run.delivery_errors == 0
    return run


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the with-blocks stop every process this run started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_CAP_S, help="wall-clock cap of each phase"
    )
    parser.add_argument("--profile", default="", metavar="DIR", help="py-spy the brokers")
    parser.add_argument(
        "--only", default=",".join(SYSTEMS), help="which of rf1,rf3,tansu to run (default: all)"
    )
    args = parser.parse_args()
    if args.records < 1 or args.seconds <= 0:
        parser.error("--records and --seconds must be positive")
    systems = tuple(name for name in SYSTEMS if name in args.only.split(","))
    if not systems or set(args.only.split(",")) - set(SYSTEMS):
        parser.error(f"--only takes a comma-separated subset of {','.join(SYSTEMS)}")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    began = time.monotonic()
    try:
        run = bench(args.records, args.seconds, args.profile, systems)
    except KeyboardInterrupt:
        print("kafka_bench: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
    run.line["wall_s"] = round(time.monotonic() - began, 1)
    print(json.dumps(run.line))
    sys.exit(0 if run.line["ok"] else 1)


if __name__ == "__main__":
    main()
