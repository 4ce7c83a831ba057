"""The cost of idempotence on a partition leader's append path, in process.

Appends the same prebuilt batches (librdkafka-like: 10 records of 100 bytes) three ways,
each into a fresh log on the OS file system (page cache, no fsync):

- `log`: `SegmentedLog.append` alone (no producer state at all);
- `plain`: `Partition.append_as_leader` of batches without a producer id;
- `idempotent`: `Partition.append_as_leader` of one producer's batches in sequence
  (validate before, record after each append).

Trials are interleaved, each timed in CPU seconds of this process (user + system), and
the best of each is kept, so other processes on a busy machine count for little. One JSON line: batches per second of each, and idempotent's cost against plain.

    python -m bench.idempotence_cost [--batches 20000] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable

from broker.partition import Partition
from kraft.metadata.image import PartitionRegistration
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch

RECORDS_PER_BATCH = 10
VALUE = b"x" * 100


def batches(count: int, *, idempotent: bool) -> list[bytes]:
    out = []
    for index in range(count):
        records = [
            RecordInput(timestamp=1_000 + index, value=VALUE) for _ in range(RECORDS_PER_BATCH)
        ]
        if idempotent:
            out.append(
                build_batch(
                    records,
                    producer_id=1,
                    producer_epoch=0,
                    base_sequence=index * RECORDS_PER_BATCH,
                )
            )
        else:
            out.append(build_batch(records))
    return out


def leader(directory: str) -> Partition:
    log = SegmentedLog.open(directory, LogConfig())
    partition = Partition(topic="bench", topic_id="id", index=0, log=log, broker_id=1)
    registration = PartitionRegistration(
        replicas=(1,), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0
    )
    partition.apply(registration, now_ms=0)
    return partition


def timed(append: Callable[[bytes], object], work: list[bytes]) -> float:
    start = time.process_time()
    for batch in work:
        append(batch)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    plain = batches(args.batches, idempotent=False)
    idempotent = batches(args.batches, idempotent=True)
    best = {"log": float("inf"), "plain": float("inf"), "idempotent": float("inf")}
    for _ in range(args.trials):
        with tempfile.TemporaryDirectory() as root:
            log = SegmentedLog.open(f"{root}/log", LogConfig())
            best["log"] = min(best["log"], timed(lambda b, log=log: log.append(b, 0), plain))
            log.close()
            partition = leader(f"{root}/plain")
            best["plain"] = min(best["plain"], timed(partition.append_as_leader, plain))
            partition.close()
            partition = leader(f"{root}/idempotent")
            seconds = timed(partition.append_as_leader, idempotent)
            best["idempotent"] = min(best["idempotent"], seconds)
            partition.close()
    rates = {name: round(args.batches / seconds) for name, seconds in best.items()}
    print(
        json.dumps(
            {
                "batches": args.batches,
                "records_per_batch": RECORDS_PER_BATCH,
                "batches_per_s": rates,
                "idempotent_cost_vs_plain_pct": round(
                    100 * (best["idempotent"] / best["plain"] - 1), 1
                ),
                "partition_cost_vs_log_pct": round(100 * (best["plain"] / best["log"] - 1), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
