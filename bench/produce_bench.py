"""Produce throughput and latency against a real cluster of processes.

    python bench/produce_bench.py [--seconds 5]

1 controller + 3 brokers (separate OS processes, Kafka's defaults, no fsync per
batch: Kafka relies on replication), and this process as the client. Records are 100
bytes, in batches of ~16 KiB (150 records) built once up front, so the figures are
the brokers', not the client's record encoding. Prints one JSON line:
- msgs_per_s_rf1_acks1 / msgs_per_s_rf3_acksall: 3 partitions (one led by each
  broker), 8 requests in flight per partition;
- produce_p50_ms / produce_p99_ms: request latency in the rf3 acks=all run;
- msgs_per_s_rf3_acksall_flush1: the same with the topic's flush.messages=1 (every
  replica fsyncs each append before it counts, group-committed off the event loop);
  ratio_flush1_vs_plain is the cost of that durability;
- e2e_p99_ms: produce (record timestamp) to a long-polling consumer's receipt, at a
  steady e2e_target_msgs_per_s (rf3, acks=all);
- ratio_vs_log_append: rf1 acks=1 throughput over SegmentedLog.append of the same
  batches in this process (same run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from broker.local_cluster import LocalCluster
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode
from client.protocol.rpc import RpcClient
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch, read_header

RECORD = b"x" * 100
PER_BATCH = 150
PARTITIONS = 3
IN_FLIGHT = 8
E2E_RATE = 50_000


def make_batch(timestamp: int = 0) -> bytes:
    return build_batch([RecordInput(timestamp=timestamp, value=RECORD) for _ in range(PER_BATCH)])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def create(
    cluster: LocalCluster, name: str, factor: int, configs: dict[str, str] | None = None
) -> dict[int, int]:
    topic: dict[str, Any] = {"name": name, "partitions": PARTITIONS, "replication_factor": factor}
    if configs:
        topic["configs"] = [[key, value] for key, value in configs.items()]
    body = {"topics": [topic]}
    answer = await cluster.request(2, ApiKey.CREATE_TOPICS, body)
    assert answer["topics"][0]["error_code"] == ErrorCode.NONE, answer
    while True:
        meta = await cluster.request(2, ApiKey.METADATA, {"topics": [name]})
        parts = meta["topics"][0]["partitions"]
        if len(parts) == PARTITIONS and all(len(p["isr"]) == factor for p in parts):
            await trio.sleep(0.5)  # followers open their logs and start fetching
            return {p["partition"]: p["leader"] for p in parts}
        await trio.sleep(0.05)


class Clients:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.clients: dict[int, RpcClient] = {}

    def of(self, node: int) -> RpcClient:
        if node not in self.clients:
            import random

            host, port = self.cluster.address(node, "PLAINTEXT")
            self.clients[node] = RpcClient(host, port, client_id="bench", rng=random.Random(node))
        return self.clients[node]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def saturate(
    clients: Clients, leaders: dict[int, int], topic: str, acks: int, seconds: float
) -> tuple[float, list[float]]:
    batch = make_batch()
    sent = 0
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    async def sender(partition: int) -> None:
        nonlocal sent
        client = clients.of(leaders[partition])
        body = {
            "acks": acks,
            "timeout_ms": 30_000,
            "topics": [{"name": topic, "partitions": [{"partition": partition, "records": batch}]}],
        }
        while trio.current_time() < deadline:
            began = time.perf_counter()
            answer = await client.request(ApiKey.PRODUCE, API_VERSION, body, timeout_s=30)
            latencies.append((time.perf_counter() - began) * 1000)
            assert answer["topics"][0]["partitions"][0]["error_code"] == ErrorCode.NONE, answer
            sent += PER_BATCH

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        for partition in range(PARTITIONS):
            for _ in range(IN_FLIGHT):
                nursery.start_soon(sender, partition)
    return sent / (trio.current_time() - began), latencies


async def end_to_end(
    clients: Clients, leaders: dict[int, int], topic: str, seconds: float
) -> list[float]:
    delays: list[float] = []
    interval = PER_BATCH * PARTITIONS / E2E_RATE  # one batch per partition per tick
    deadline = trio.current_time() + seconds

    async def consume(partition: int) -> None:
        client = clients.of(leaders[partition])
        offset = 0
        while trio.current_time() < deadline + 1:
            body = {
                "max_wait_ms": 500,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition": partition, "fetch_offset": offset}],
                    }
                ],
            }
            answer = await client.request(ApiKey.FETCH, API_VERSION, body, timeout_s=30)
            part = answer["topics"][0]["partitions"][0]
            data = part["records"]
            now_ms = time.time() * 1000
            position = 0
            while position < len(data):
                header = read_header(data, position)
                delays.append(now_ms - header.base_timestamp)
                offset = header.next_offset
                position += header.size_bytes

    async def send(node: int, body: dict[str, Any]) -> None:
        await clients.of(node).request(ApiKey.PRODUCE, API_VERSION, body, timeout_s=30)

    async def produce() -> None:
        tick = trio.current_time()
        while tick < deadline:
            await trio.sleep_until(tick)
            for partition in range(PARTITIONS):
                body = {
                    "acks": -1,
                    "timeout_ms": 30_000,
                    "topics": [
                        {
                            "name": topic,
                            "partitions": [
                                {
                                    "partition": partition,
                                    "records": make_batch(int(time.time() * 1000)),
                                }
                            ],
                        }
                    ],
                }
                nursery.start_soon(send, leaders[partition], body)
            tick += interval

    async with trio.open_nursery() as nursery:
        for partition in range(PARTITIONS):
            nursery.start_soon(consume, partition)
        await produce()
    return delays


def raw_append_msgs_per_s(seconds: float) -> float:
    root = tempfile.mkdtemp(prefix="append-baseline-")
    try:
        log = SegmentedLog.open(os.path.join(root, "t-0"), LogConfig())
        batch = make_batch()
        count = 0
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            for _ in range(100):
                log.append(batch, leader_epoch=0)
            count += 100 * PER_BATCH
        rate = count / (time.perf_counter() - began)
        log.close()
        return rate
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main_async(seconds: float) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="produce-bench-")
    try:
        with LocalCluster(root, controllers=1, brokers=3) as cluster:
            cluster.start_all()
            clients = Clients(cluster)
            rf1 = await create(cluster, "rf1", 1)
            rf1_rate, _ = await saturate(clients, rf1, "rf1", 1, seconds)
            rf3 = await create(cluster, "rf3", 3)
            rf3_rate, latencies = await saturate(clients, rf3, "rf3", -1, seconds)
            flushed = await create(cluster, "rf3flush", 3, {"flush.messages": "1"})
            flush_rate, flush_latencies = await saturate(clients, flushed, "rf3flush", -1, seconds)
            e2e = await create(cluster, "e2e", 3)
            delays = await end_to_end(clients, e2e, "e2e", seconds)
            await clients.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    baseline = raw_append_msgs_per_s(2.0)
    return {
        "record_bytes": len(RECORD),
        "batch_bytes": len(make_batch()),
        "msgs_per_s_rf1_acks1": round(rf1_rate),
        "msgs_per_s_rf3_acksall": round(rf3_rate),
        "produce_p50_ms": round(statistics.median(latencies), 2),
        "produce_p99_ms": round(percentile(latencies, 0.99), 2),
        "msgs_per_s_rf3_acksall_flush1": round(flush_rate),
        "produce_p99_ms_flush1": round(percentile(flush_latencies, 0.99), 2),
        "ratio_flush1_vs_plain": round(flush_rate / rf3_rate, 3),
        "e2e_target_msgs_per_s": E2E_RATE,
        "e2e_p50_ms": round(statistics.median(delays), 1),
        "e2e_p99_ms": round(percentile(delays, 0.99), 1),
        "log_append_msgs_per_s": round(baseline),
        "ratio_vs_log_append": round(rf1_rate / baseline, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(trio.run(main_async, args.seconds)))


if __name__ == "__main__":
    main()
