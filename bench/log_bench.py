"""SegmentedLog append and read throughput against raw file I/O in the same run.

    python bench/log_bench.py [--mb 256] [--dir PATH]

Appends ~N MiB as 16 KiB batches of 100-byte records through `SegmentedLog` and
writes the same bytes with plain `os.write` to a plain file; then reads both back
(the log through `read()` in 1 MiB fetches, the file with `os.pread`). Neither side
fsyncs: this measures the broker's per-batch Python cost next to the I/O itself.
Each phase starts after `os.sync()`, the write order alternates between rounds, and
each side's best round counts, because this VM's disk makes single runs noisy.
Prints one JSON line; the ratios are what to watch, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch

BATCH_TARGET_BYTES = 16 * 1024
RECORD_VALUE_BYTES = 100
FETCH_BYTES = 1 << 20


def make_batch() -> bytes:
    records = []
    value = b"v" * RECORD_VALUE_BYTES
    while True:
        records.append(RecordInput(key=None, value=value, timestamp=1_700_000_000_000))
        encoded = build_batch(records)
        if len(encoded) >= BATCH_TARGET_BYTES:
            return encoded


def _timed(action) -> float:
    # Dirty pages left by the previous phase would be written back during this one
    # and bill it for the other's I/O: start every phase from a synced page cache.
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench(total_mb: int, directory: str, rounds: int) -> dict[str, float]:
    batch = make_batch()
    batch_count = max(1, total_mb * (1 << 20) // len(batch))
    total_bytes = batch_count * len(batch)
    raw_write, raw_read, append, read = [], [], [], []

    for round_number in range(rounds):
        raw_path = os.path.join(directory, f"raw-{round_number}.bin")
        log_dir = os.path.join(directory, f"topic-{round_number}")
        log = SegmentedLog.open(log_dir, LogConfig())

        def write_raw(path: str = raw_path) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for _ in range(batch_count):
                os.write(fd, batch)
            os.close(fd)

        def append_log(log: SegmentedLog = log) -> None:
            for _ in range(batch_count):
                log.append(batch, leader_epoch=0)

        def read_raw(path: str = raw_path) -> None:
            fd = os.open(path, os.O_RDONLY)
            position = 0
            while chunk := os.pread(fd, FETCH_BYTES, position):
                position += len(chunk)
            os.close(fd)
            assert position == total_bytes

        def read_log(log: SegmentedLog = log) -> None:
            offset, read_bytes, end = 0, 0, log.log_end_offset
            while offset < end:
                data, offset = log.read_slice(offset, FETCH_BYTES)
                read_bytes += len(data)
            assert read_bytes == total_bytes, (read_bytes, total_bytes)

        # Alternate which side goes first so neither always meets a colder cache.
        if round_number % 2 == 0:
            raw_write.append(_timed(write_raw))
            append.append(_timed(append_log))
        else:
            append.append(_timed(append_log))
            raw_write.append(_timed(write_raw))
        raw_read.append(_timed(read_raw))
        read.append(_timed(read_log))
        log.close()
        shutil.rmtree(log_dir)
        os.remove(raw_path)

    mib = total_bytes / (1 << 20)
    append_s, raw_write_s, read_s, raw_read_s = (
        min(append),
        min(raw_write),
        min(read),
        min(raw_read),
    )
    return {
        "mb": round(mib, 1),
        "batch_bytes": len(batch),
        "rounds": rounds,
        "append_mb_s": round(mib / append_s, 1),
        "raw_write_mb_s": round(mib / raw_write_s, 1),
        "append_ratio": round(raw_write_s / append_s, 3),
        "read_mb_s": round(mib / read_s, 1),
        "raw_read_mb_s": round(mib / raw_read_s, 1),
        "read_ratio": round(raw_read_s / read_s, 3),
        "append_us_per_batch": round(append_s / batch_count * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="how much data to append (MiB)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="log-bench-", dir=args.dir)
    try:
        print(json.dumps(bench(args.mb, directory, args.rounds)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
