"""Controller failover, partition failover and metadata image load time.

    python bench/controller_bench.py [--trials 10] [--partition-trials 3]

A LocalCluster of 3 controllers + 3 brokers, each its own OS process, with Kafka's
default timeouts (broker session 9 s, quorum fetch 2 s, election 1 s). Prints one
JSON line:
- controller_failover_ms_p50 / _p99: SIGKILL of the active controller to the first
  CreateTopics answered without error (sent to a broker, which forwards it);
- partition_failover_ms_p50: SIGKILL of a broker leading partitions to a new leader
  visible in another broker's Metadata answer (bounded below by the session timeout:
  a broker that just stops answering is only declared dead when its session runs out);
- image_load_ms_10k_partitions: decode and replay a snapshot of 10,000 partitions
  (100 topics x 100 partitions, 3 replicas) into a MetadataImage, in this process;
  with image_load_baseline_ms, plain `cbor2.loads` of the same values, and their ratio.
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

import cbor2
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from broker.local_cluster import LocalCluster
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode
from kraft.metadata.image import EMPTY_IMAGE, replay
from kraft.metadata.records import (
    Listener,
    PartitionRecord,
    RegisterBrokerRecord,
    TopicRecord,
    decode_record,
    encode_record,
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def topic_body(name: str) -> dict[str, Any]:
    return {"topics": [{"name": name, "partitions": 6, "replication_factor": 3}]}


async def wait_all_unfenced(cluster: LocalCluster, via: int) -> None:
    while True:
        try:
            answer = await cluster.request(via, ApiKey.DESCRIBE_CLUSTER, {})
            if len(answer["brokers"]) == 3 and not any(b["fenced"] for b in answer["brokers"]):
                return
        except Exception:
            pass
        await trio.sleep(0.05)


async def controller_failovers(cluster: LocalCluster, trials: int) -> list[float]:
    times = []
    for trial in range(trials):
        await cluster.wait_images_agree()
        active = (await cluster.request(4, ApiKey.DESCRIBE_QUORUM, {}))["leader_id"]
        killed_at = time.monotonic()
        cluster.kill(active)
        while True:
            answer = await cluster.request(
                4 + trial % 3, ApiKey.CREATE_TOPICS, topic_body(f"failover-{trial}"), timeout_s=30
            )
            codes = [t["error_code"] for t in answer.get("topics", [])] or [answer["error_code"]]
            if codes == [ErrorCode.NONE]:
                break
            await trio.sleep(0.01)
        times.append((time.monotonic() - killed_at) * 1000)
        cluster.start(active)
    return times


async def partition_failovers(cluster: LocalCluster, trials: int) -> list[float]:
    times = []
    for trial in range(trials):
        await wait_all_unfenced(cluster, 4)
        await cluster.wait_images_agree()
        victim = 4 + trial % 3
        witness = 4 + (trial + 1) % 3
        answer = await cluster.request(witness, ApiKey.METADATA, {"topics": ["failover-0"]})
        assert victim in [p["leader"] for p in answer["topics"][0]["partitions"]]
        killed_at = time.monotonic()
        cluster.kill(victim)
        while True:
            answer = await cluster.request(witness, ApiKey.METADATA, {"topics": ["failover-0"]})
            if victim not in [p["leader"] for p in answer["topics"][0]["partitions"]]:
                break
            await trio.sleep(0.01)
        times.append((time.monotonic() - killed_at) * 1000)
        cluster.start(victim)
        # Give leadership back, so the next victim leads something.
        await wait_all_unfenced(cluster, witness)
        await cluster.request(witness, ApiKey.ELECT_LEADERS, {})
    return times


def image_load_ms(partitions_per_topic: int = 100, topics: int = 100) -> tuple[float, float]:
    records: list[Any] = [
        RegisterBrokerRecord(
            broker_id=b,
            broker_epoch=b,
            incarnation_id=f"i{b}",
            listeners=(Listener(name="PLAINTEXT", host="127.0.0.1", port=9090 + b),),
            rack=None,
            fenced=False,
        )
        for b in (1, 2, 3)
    ]
    for t in range(topics):
        topic_id = f"{t:032x}"
        records.append(TopicRecord(name=f"topic-{t}", topic_id=topic_id))
        for p in range(partitions_per_topic):
            replicas = tuple((p + i) % 3 + 1 for i in range(3))
            records.append(
                PartitionRecord(
                    topic_id=topic_id,
                    partition=p,
                    replicas=replicas,
                    isr=replicas,
                    leader=replicas[0],
                    leader_epoch=0,
                    partition_epoch=0,
                )
            )
    values = [encode_record(record) for record in records]
    best, baseline = float("inf"), float("inf")
    for _ in range(5):
        started = time.perf_counter()
        image = replay(EMPTY_IMAGE, [(-1, decode_record(value)) for value in values])
        best = min(best, (time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for value in values:
            cbor2.loads(value)
        baseline = min(baseline, (time.perf_counter() - started) * 1000)
    assert sum(len(topic.partitions) for topic in image.topics.values()) == 10_000
    return best, baseline


async def main_async(trials: int, partition_trials: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="controller-bench-")
    try:
        with LocalCluster(root, controllers=3, brokers=3) as cluster:
            cluster.start_all()
            await wait_all_unfenced(cluster, 4)
            controller_ms = await controller_failovers(cluster, trials)
            partition_ms = await partition_failovers(cluster, partition_trials)
            session_ms = cluster.configs[4].broker_session_timeout_ms
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_ms, baseline_ms = image_load_ms()
    return {
        "trials": trials,
        "controller_failover_ms_p50": round(statistics.median(controller_ms), 1),
        "controller_failover_ms_p99": round(percentile(controller_ms, 0.99), 1),
        "controller_failover_ms_max": round(max(controller_ms), 1),
        "partition_trials": partition_trials,
        "partition_failover_ms_p50": round(statistics.median(partition_ms), 1),
        "broker_session_timeout_ms": session_ms,
        "image_load_ms_10k_partitions": round(load_ms, 1),
        "image_load_baseline_ms": round(baseline_ms, 1),
        "image_load_ratio": round(load_ms / baseline_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--partition-trials", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(trio.run(main_async, args.trials, args.partition_trials)))


if __name__ == "__main__":
    main()
