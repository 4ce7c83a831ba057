"""The client library end to end: producer (trio and blocking), consumer, batch encoding.

    python bench/client_bench.py [--records 300000] [--only producer|encode]

1 controller + 3 brokers as separate processes (Kafka's defaults); this process is
the client. 100-byte values, keys `k0..k999`, 6-partition topics with replication
factor 3 and acks=all (and one with factor 1, acks=1). Prints one JSON line:
- producer_msgs_per_s: `await producer.send(...)` for every record, then flush;
- producer_cpu_us_per_record: this process's CPU time in that run per record (the
  client's own cost: less noisy than a rate on a shared machine);
- producer_rf1_msgs_per_s: the same into the replication-factor-1 topic, acks=1;
- producer_sync_msgs_per_s: the blocking facade's `send_many` in chunks of 10,000;
- consumer_msgs_per_s: one consumer reading everything back from the beginning;
- encode_us_per_record: BatchBuilder.append of the same records alone (no I/O), as
  the accumulator drives it (append returns the batch's size), the client-side cost
  every produced record pays; encode_cpu_us_per_record: the same in CPU time.

`--only producer` (or `encode`) runs just those parts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from broker.local_cluster import LocalCluster
from client import sync
from client.admin import Admin, NewTopic
from client.consumer import Consumer
from client.producer import Producer
from storage.records import BatchBuilder

VALUE = b"v" * 100
KEYS = [b"k%d" % i for i in range(1000)]
PARTITIONS = 6


async def produce_trio(
    bootstrap: str, topic: str, records: int, acks: str = "all"
) -> tuple[float, float]:
    """(records per second, CPU microseconds of this process per record)."""
    began = time.perf_counter()
    began_cpu = time.process_time()
    async with Producer(bootstrap, acks=acks, linger_ms=5, batch_size=16_384) as producer:
        for seq in range(records):
            await producer.send(topic, VALUE, key=KEYS[seq % 1000])
        await producer.flush()
    cpu_us = (time.process_time() - began_cpu) * 1e6 / records
    return records / (time.perf_counter() - began), cpu_us


def produce_sync(bootstrap: str, topic: str, records: int) -> float:
    items = [(KEYS[seq % 1000], VALUE) for seq in range(records)]
    began = time.perf_counter()
    with sync.Producer(bootstrap, acks="all", linger_ms=5) as producer:
        for start in range(0, records, 10_000):
            producer.send_many(topic, items[start : start + 10_000])
        producer.flush()
    return records / (time.perf_counter() - began)


async def consume(bootstrap: str, topic: str, records: int) -> float:
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in range(PARTITIONS)])
        began = time.perf_counter()
        seen = 0
        while seen < records:
            seen += len(await consumer.poll(1.0))
        return seen / (time.perf_counter() - began)


def encode_us_per_record(records: int = 200_000) -> tuple[float, float]:
    """(wall, CPU) microseconds per record, the best of 3 runs each."""
    best = best_cpu = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        began_cpu = time.process_time()
        builder = BatchBuilder()
        for seq in range(records):
            if builder.append(1_700_000_000_000 + seq, KEYS[seq % 1000], VALUE) >= 16_384:
                builder.build()
                builder = BatchBuilder()
        best = min(best, (time.perf_counter() - began) * 1e6 / records)
        best_cpu = min(best_cpu, (time.process_time() - began_cpu) * 1e6 / records)
    return best, best_cpu


async def main_async(records: int, only: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"records": records, "value_bytes": len(VALUE)}
    if only != "encode":
        result.update(await cluster_figures(records, producer_only=only == "producer"))
    encode_us, encode_cpu_us = encode_us_per_record()
    result["encode_us_per_record"] = round(encode_us, 3)
    result["encode_cpu_us_per_record"] = round(encode_cpu_us, 3)
    return result


async def cluster_figures(records: int, *, producer_only: bool) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="client-bench-")
    figures: dict[str, Any] = {}
    try:
        with LocalCluster(root, controllers=1, brokers=3) as cluster:
            cluster.start_all()
            bootstrap = cluster.bootstrap_servers()
            async with Admin(bootstrap) as admin:
                await admin.create_topics(
                    [
                        NewTopic(n, partitions=PARTITIONS, replication_factor=3)
                        for n in ("trio", "sync")
                    ]
                    + [NewTopic("rf1", partitions=PARTITIONS, replication_factor=1)]
                )
            rate, cpu_us = await produce_trio(bootstrap, "trio", records)
            figures["producer_msgs_per_s"] = round(rate)
            figures["producer_cpu_us_per_record"] = round(cpu_us, 3)
            rate, _ = await produce_trio(bootstrap, "rf1", records, acks="1")
            figures["producer_rf1_msgs_per_s"] = round(rate)
            if not producer_only:
                sync_rate = await trio.to_thread.run_sync(produce_sync, bootstrap, "sync", records)
                figures["producer_sync_msgs_per_s"] = round(sync_rate)
                figures["consumer_msgs_per_s"] = round(await consume(bootstrap, "trio", records))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--only", choices=("producer", "encode"))
    args = parser.parse_args()
    print(json.dumps(trio.run(main_async, args.records, args.only)))


if __name__ == "__main__":
    main()
