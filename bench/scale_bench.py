"""How pykraft's costs grow with the work, as series of points (issue 18, item 3).

    python bench/scale_bench.py [--quick] [--only partitions,connections,image]
                                [--root DIR] [--seconds 120]

Prints one JSON line with three series, each a list of points so the curve is seen:
- `partitions` (bench/scale_partitions.py): 1, 100, 1,000 and 10,000 partitions on one
  broker (1 controller + 1 broker processes, RF 1): topic creation time, librdkafka
  produce throughput across all partitions (bounded by record count and --seconds),
  broker RSS and descriptors after the create, the produce and a restart, memory per
  partition ((RSS(n) - RSS(1)) / n) and the broker's restart time with n partitions
  on disk;
- `connections` (bench/scale_connections.py): 10, 100 and 1,000 Kafka connections to
  one broker, each ApiVersions + Metadata, then one small Produce from each: time to
  connect all, RSS per connection, Metadata latency of one more client while they are
  open (and before), and how many were refused;
- `image` (bench/scale_image.py): the metadata image replayed from the log's records
  at 1k, 10k and 100k partitions (goal: <= 2 s at 100k), a snapshot written and loaded.
--quick: 1, 100 and 1,000 partitions, 10 and 200 connections, images up to 10k.
The line carries the load average at start and end (the machine may be shared: the
figures are only comparable as ratios within one run). Every process started here is
stopped by its pid however the run ends; the data goes under --root (a fresh
temporary directory by default), removed after. Exits 1 if a point failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.scale_connections import connection_series
from bench.scale_image import image_series
from bench.scale_partitions import partition_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERIES = ("partitions", "connections", "image")
FULL: dict[str, Any] = {
    "partitions": [1, 100, 1_000, 10_000],
    "records": 200_000,
    "connections": [10, 100, 1_000],
    "image": [1_000, 10_000, 100_000],
    "image_one_topic": [10_000, 100_000],
}
QUICK: dict[str, Any] = {
    "partitions": [1, 100, 1_000],
    "records": 50_000,
    "connections": [10, 200],
    "image": [1_000, 10_000],
    "image_one_topic": [10_000],
}
IMAGE_GOAL_S = 2.0


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _failed(series: dict[str, Any]) -> bool:
    points = series.get("points", []) + series.get("one_topic", [])
    return any("error" in p or p.get("produce_error") or p.get("refused") for p in points)


def bench(plan: dict[str, Any], only: tuple[str, ...], root: str, cap_s: float) -> dict[str, Any]:
    line: dict[str, Any] = {
        "quick": plan is QUICK,
        "series": list(only),
        "pykraft_git_commit": _git("rev-parse", "--short", "HEAD"),
        "pykraft_git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python_version": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "data_root": root,
    }
    failed = False
    if "image" in only:
        began = time.monotonic()
        image = image_series(plan["image"], plan["image_one_topic"])
        image["wall_s"] = round(time.monotonic() - began, 1)
        largest = max(image["points"], key=lambda p: p["partitions"])
        image["goal_s"] = IMAGE_GOAL_S
        image["largest_load_s"] = largest["load_s"]
        image["largest_meets_goal"] = largest["load_s"] <= IMAGE_GOAL_S
        line["image"] = image
        line["load_avg_1m_after_image"] = round(os.getloadavg()[0], 2)
    if "connections" in only:
        began = time.monotonic()
        connections = connection_series(root, plan["connections"])
        connections["wall_s"] = round(time.monotonic() - began, 1)
        line["connections"] = connections
        failed |= _failed(connections)
        line["load_avg_1m_after_connections"] = round(os.getloadavg()[0], 2)
    if "partitions" in only:
        began = time.monotonic()
        partitions = partition_series(root, plan["partitions"], plan["records"], cap_s)
        partitions["wall_s"] = round(time.monotonic() - began, 1)
        line["partitions"] = partitions
        failed |= _failed(partitions)
    line["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    line["ok"] = not failed
    return line


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the with-blocks stop every process this run started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced series")
    parser.add_argument("--only", default=",".join(SERIES), help="a subset of " + ",".join(SERIES))
    parser.add_argument("--root", default="", help="where the nodes' data goes")
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="wall-clock cap of each produce phase"
    )
    args = parser.parse_args()
    wanted = args.only.split(",")
    if set(wanted) - set(SERIES) or args.seconds <= 0:
        parser.error(f"--only takes a comma-separated subset of {','.join(SERIES)}")
    only = tuple(name for name in SERIES if name in wanted)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    root = tempfile.mkdtemp(prefix="scale-bench-", dir=args.root or None)
    began = time.monotonic()
    try:
        line = bench(QUICK if args.quick else FULL, only, root, args.seconds)
    except KeyboardInterrupt:
        print("scale_bench: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    line["wall_s"] = round(time.monotonic() - began, 1)
    print(json.dumps(line))
    sys.exit(0 if line["ok"] else 1)


if __name__ == "__main__":
    main()
