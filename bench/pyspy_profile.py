"""Sampling profiles of a running broker with py-spy, and their top functions.

    python bench/pyspy_profile.py PROFILE.txt [--top 15] [--under data_apis.py:produce]

`recording(pid, path)` samples a process while its block runs (py-spy's raw format:
one line per distinct stack, "frame;frame;... count"). `summarise` turns such a file
into the functions with the most samples where they are the innermost frame (self)
and where they are anywhere on the stack (total), as shares of the samples that
were taken while a thread was busy (py-spy leaves out idle threads; samples of the
trio loop in epoll are left out here too, and counted as `loop_wait_pct`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

SAMPLES_PER_S = 100
# Where a trio loop waits for sockets: py-spy can count it as busy (the thread is
# running a syscall), but it is the loop having nothing to do.
WAIT_LEAVES = ("trio/_core/_io_epoll.py:EpollIOManager.get_events",)
# The process's entry frames, on every stack: left out of the totals.
ROOT_FRAMES = ("<frozen runpy>:", "broker/cli.py:", "trio/_core/_run.py:run")
STOP_TIMEOUT_S = 30.0
# "name (path/to/file.py:12)": with --function the line is the function's first one.
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, path: str) -> Iterator[None]:
    """py-spy samples `pid` for as long as the block runs; the raw profile goes to `path`."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    with open(path + ".log", "wb") as log:
        process = subprocess.Popen(
            [
                *(binary, "record", "--pid", str(pid), "--format", "raw", "--function"),
                *("--rate", str(SAMPLES_PER_S), "--output", path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        time.sleep(0.5)  # py-spy attaches before the phase starts
        yield
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)  # py-spy writes what it has on SIGINT
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def read_stacks(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


def short_name(frame: str) -> str:
    """'file.py:function' for a Python frame ('process NNN' and thread frames as they are)."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['file']}:{match['name']}"


def _first(names: list[str], under: str) -> int:
    return next(i for i, name in enumerate(names) if under in name)


def summarise(path: str, top: int = 15, under: str = "") -> dict[str, Any]:
    """Top `top` functions by self and by total samples; with `under`, only the stacks
    that pass through a frame whose short name contains it (one path, e.g. produce)."""
    stacks = [
        ([short_name(frame) for frame in frames], count) for frames, count in read_stacks(path)
    ]
    sampled = sum(count for _, count in stacks)
    stacks = [(names, count) for names, count in stacks if names[-1] not in WAIT_LEAVES]
    busy = sum(count for _, count in stacks)
    if under:
        # From the `under` frame down: its callers are on every chosen stack.
        stacks = [
            (names[_first(names, under) :], count)
            for names, count in stacks
            if any(under in n for n in names)
        ]
    else:
        stacks = [
            ([n for n in names if not n.startswith(ROOT_FRAMES)], count) for names, count in stacks
        ]
    chosen = sum(count for _, count in stacks)
    self_samples: collections.Counter[str] = collections.Counter()
    total_samples: collections.Counter[str] = collections.Counter()
    for names, count in stacks:
        if not names:
            continue
        self_samples[names[-1]] += count
        for name in set(names):
            total_samples[name] += count

    def table(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "pct": round(100 * n / chosen, 1) if chosen else 0}
            for name, n in counter.most_common(top)
        ]

    return {
        "profile": path,
        "sampled": sampled,
        "loop_wait_pct": round(100 * (sampled - busy) / sampled, 1) if sampled else 0,
        "busy_samples": busy,
        "under": under,
        "samples": chosen,
        "pct_of_busy": round(100 * chosen / busy, 1) if busy else 0,
        "self": table(self_samples),
        "total": table(total_samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--under", default="", help="only stacks through this frame")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of tables")
    args = parser.parse_args()
    summary = summarise(args.profile, args.top, args.under)
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"{summary['profile']}: {summary['samples']} samples"
        + (f" under {args.under}" if args.under else "")
        + f" ({summary['pct_of_busy']}% of {summary['busy_samples']} busy;"
        f" {summary['loop_wait_pct']}% of all {summary['sampled']} were the loop waiting)"
    )
    for kind in ("self", "total"):
        print(f"\n  by {kind} samples")
        for row in summary[kind]:
            print(f"  {row['pct']:5.1f}%  {row['samples']:7d}  {row['function']}")


if __name__ == "__main__":
    main()
