"""SegmentedLog append and read throughput against raw file I/O in the same run.

    python bench/log_bench.py [--mb 256] [--dir PATH]

Appends ~N MiB as 16 KiB batches of 100-byte records through `SegmentedLog` and
writes the same bytes with plain `os.write` to a plain file; then reads both back
(the log through `read()` in 1 MiB fetches, the file with `os.pread`). Neither side
fsyncs: this measures the broker's per-batch Python cost next to the I/O itself.
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
from storage.records import RecordInput, build_batch, iter_batches

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


def bench(total_mb: int, directory: str) -> dict[str, float]:
    batch = make_batch()
    batch_count = max(1, total_mb * (1 << 20) // len(batch))
    total_bytes = batch_count * len(batch)

    raw_path = os.path.join(directory, "raw.bin")
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    started = time.perf_counter()
    for _ in range(batch_count):
        os.write(fd, batch)
    raw_write_s = time.perf_counter() - started
    os.close(fd)

    log = SegmentedLog.open(os.path.join(directory, "topic-0"), LogConfig())
    started = time.perf_counter()
    for _ in range(batch_count):
        log.append(batch, leader_epoch=0)
    append_s = time.perf_counter() - started

    fd = os.open(raw_path, os.O_RDONLY)
    started = time.perf_counter()
    position = 0
    while chunk := os.pread(fd, FETCH_BYTES, position):
        position += len(chunk)
    raw_read_s = time.perf_counter() - started
    os.close(fd)

    started = time.perf_counter()
    offset, read_bytes = 0, 0
    end = log.log_end_offset
    while offset < end:
        data = log.read(offset, FETCH_BYTES)
        read_bytes += len(data)
        # The next offset follows the last batch: its header holds baseOffset and
        # lastOffsetDelta, so no record is decoded on the read path either.
        last = _last_batch_next_offset(data)
        offset = last
    read_s = time.perf_counter() - started
    log.close()
    assert read_bytes == total_bytes, (read_bytes, total_bytes)

    mib = total_bytes / (1 << 20)
    return {
        "mb": round(mib, 1),
        "batch_bytes": len(batch),
        "append_mb_s": round(mib / append_s, 1),
        "raw_write_mb_s": round(mib / raw_write_s, 1),
        "append_ratio": round(raw_write_s / append_s, 3),
        "read_mb_s": round(mib / read_s, 1),
        "raw_read_mb_s": round(mib / raw_read_s, 1),
        "read_ratio": round(raw_read_s / read_s, 3),
        "append_us_per_batch": round(append_s / batch_count * 1e6, 2),
    }


def _last_batch_next_offset(data: bytes) -> int:
    next_offset = 0
    for _, header in iter_batches(data, validate=False):
        next_offset = header.next_offset
    return next_offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="how much data to append (MiB)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="log-bench-", dir=args.dir)
    try:
        print(json.dumps(bench(args.mb, directory)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
