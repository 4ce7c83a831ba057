"""The client library end to end: producer (trio and blocking), consumer, batch encoding.

    python bench/client_bench.py [--records 300000]

1 controller + 3 brokers as separate processes (Kafka's defaults); this process is
the client. 100-byte values, keys `k0..k999`, a 6-partition topic with replication
factor 3 and acks=all. Prints one JSON line:
- producer_msgs_per_s: `await producer.send(...)` for every record, then flush;
- producer_sync_msgs_per_s: the blocking facade's `send_many` in chunks of 10,000;
- consumer_msgs_per_s: one consumer reading everything back from the beginning;
- encode_us_per_record: BatchBuilder.append of the same records alone (no I/O), the
  client-side cost every produced record pays.
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


async def produce_trio(bootstrap: str, topic: str, records: int) -> float:
    began = time.perf_counter()
    async with Producer(bootstrap, acks="all", linger_ms=5, batch_size=16_384) as producer:
        for seq in range(records):
            await producer.send(topic, VALUE, key=KEYS[seq % 1000])
        await producer.flush()
    return records / (time.perf_counter() - began)


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


def encode_us_per_record(records: int = 200_000) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        builder = BatchBuilder()
        for seq in range(records):
            builder.append(1_700_000_000_000 + seq, KEYS[seq % 1000], VALUE)
            if builder.size_bytes >= 16_384:
                builder.build()
                builder = BatchBuilder()
        best = min(best, (time.perf_counter() - began) * 1e6 / records)
    return best


async def main_async(records: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="client-bench-")
    try:
        with LocalCluster(root, controllers=1, brokers=3) as cluster:
            cluster.start_all()
            bootstrap = cluster.bootstrap_servers()
            async with Admin(bootstrap) as admin:
                for name in ("trio", "sync"):
                    await admin.create_topics(
                        [NewTopic(name, partitions=PARTITIONS, replication_factor=3)]
                    )
            trio_rate = await produce_trio(bootstrap, "trio", records)
            sync_rate = await trio.to_thread.run_sync(produce_sync, bootstrap, "sync", records)
            consumer_rate = await consume(bootstrap, "trio", records)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "records": records,
        "value_bytes": len(VALUE),
        "producer_msgs_per_s": round(trio_rate),
        "producer_sync_msgs_per_s": round(sync_rate),
        "consumer_msgs_per_s": round(consumer_rate),
        "encode_us_per_record": round(encode_us_per_record(), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    args = parser.parse_args()
    print(json.dumps(trio.run(main_async, args.records)))


if __name__ == "__main__":
    main()
