"""How long a partition takes to load its producer state, with and without snapshots.

Writes a log of `--mib` MiB of idempotent batches (`--producers` producers, 16 KiB
batches, segments of `--segment-mib`, the last one full), then opens it three ways:

- `clean`: after a clean close (a snapshot at the log end: nothing replayed);
- `crash`: as after a SIGKILL (the snapshot of the last roll, then the active segment);
- `rebuild`: with every snapshot deleted (the whole log replayed, as on an upgrade).

Each is timed from `SegmentedLog.open` to a loaded `Partition`; one JSON line.

    python -m bench.producer_state_load [--mib 256] [--segment-mib 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from broker.partition import Partition
from kraft.metadata.image import PartitionRegistration
from storage.fs import OsFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.producer_state import delete_snapshots
from storage.records import RecordInput, build_batch

BATCH_RECORDS = 16
VALUE = b"v" * 1000


def write_log(directory: str, mib: int, segment_mib: int, producers: int) -> int:
    log = SegmentedLog.open(directory, LogConfig(segment_bytes=segment_mib << 20))
    partition = Partition(topic="load", topic_id="id", index=0, log=log, broker_id=1)
    registration = PartitionRegistration(
        replicas=(1,), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0
    )
    partition.apply(registration, now_ms=0)
    records = [RecordInput(timestamp=1_000, value=VALUE) for _ in range(BATCH_RECORDS)]
    sequences = [0] * producers
    batches = 0
    while True:
        pid = batches % producers
        batch = build_batch(
            records, producer_id=pid, producer_epoch=0, base_sequence=sequences[pid]
        )
        # Up to the last byte that fits: the active segment ends (nearly) full, the
        # worst case for a crash (the most to replay after the last roll's snapshot).
        last = len(log.segments) == max(1, mib // segment_mib)
        if last and log.active_segment.size + len(batch) > segment_mib << 20:
            break
        partition.append_as_leader(batch)
        sequences[pid] += BATCH_RECORDS
        batches += 1
    log.flush()  # durable, but not closed: no snapshot at the end
    return batches


def open_seconds(directory: str, segment_mib: int) -> tuple[float, int]:
    start = time.perf_counter()
    log = SegmentedLog.open(directory, LogConfig(segment_bytes=segment_mib << 20))
    partition = Partition(topic="load", topic_id="id", index=0, log=log, broker_id=1)
    seconds = time.perf_counter() - start
    producers = len(partition.producer_state.state.producers)
    log.close()  # no snapshot: the next way starts from the same files
    return seconds, producers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--segment-mib", type=int, default=64)
    parser.add_argument("--producers", type=int, default=100)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="producer-state-load-")
    try:
        directory = os.path.join(root, "load-0")
        batches = write_log(directory, args.mib, args.segment_mib, args.producers)
        fs = OsFileSystem()
        crash = open_seconds(directory, args.segment_mib)  # snapshots of the rolls only
        log = SegmentedLog.open(directory, LogConfig(segment_bytes=args.segment_mib << 20))
        partition = Partition(topic="load", topic_id="id", index=0, log=log, broker_id=1)
        partition.close()  # a clean stop: a snapshot at the end
        clean = open_seconds(directory, args.segment_mib)
        delete_snapshots(fs, directory, lambda _: False)
        rebuild = open_seconds(directory, args.segment_mib)
        print(
            json.dumps(
                {
                    "log_mib": args.mib,
                    "segment_mib": args.segment_mib,
                    "batches": batches,
                    "producers": crash[1],
                    "open_s": {
                        "clean": round(clean[0], 3),
                        "crash": round(crash[0], 3),
                        "rebuild": round(rebuild[0], 3),
                    },
                }
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
