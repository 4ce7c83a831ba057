"""Resource amplification against a real broker process (issue 14, finding 5).

Hostile clients at once, in both of the client listener's protocols: one pipelines
hundreds of 10 MB fetches and never reads the answers, one names a million topics (in
Kafka's protocol, 200,000) in a Metadata request, one names a partition twenty times
with a gigabyte per partition. Beside them a well-behaved producer keeps
going. The broker's memory stays bounded, the producer's latency stays low, and the
broker is never fenced by its own controller.
"""

from __future__ import annotations

import random
import socket
import statistics
import time

import pytest
import trio

from broker.local_cluster import LocalCluster
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode
from client.protocol.framing import encode_frame
from client.protocol.kafka import RequestHeader, encode_request
from client.protocol.kafka import messages as kafka
from client.protocol.rpc import RpcClient
from storage.records import RecordInput, build_batch

pytestmark = pytest.mark.slow

MEGABYTE = 1024 * 1024
RSS_GROWTH_MAX = 300 * MEGABYTE


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fetch_body(partitions: int, max_bytes: int, partition_max_bytes: int) -> dict:
    return {
        "max_wait_ms": 0,
        "max_bytes": max_bytes,
        "topics": [
            {
                "name": "t",
                "partitions": [
                    {"partition": 0, "fetch_offset": 0, "partition_max_bytes": partition_max_bytes}
                ]
                * partitions,
            }
        ],
    }


def request_frame(correlation_id: int, api_key: int, body: dict) -> bytes:
    return encode_frame([api_key, API_VERSION, correlation_id, "hostile", body])


def kafka_fetch_frame(correlation_id: int, partitions: int, max_bytes: int) -> bytes:
    """The same hog, in Kafka's protocol (the listener serves both)."""
    fetch = kafka.FetchRequest
    request = fetch(
        max_wait_ms=0,
        max_bytes=max_bytes,
        topics=(
            fetch.FetchTopic(
                topic="t",
                partitions=(
                    fetch.FetchPartition(
                        partition=0, fetch_offset=0, partition_max_bytes=max_bytes
                    ),
                )
                * partitions,
            ),
        ),
    )
    header = RequestHeader(
        request_api_key=ApiKey.FETCH,
        request_api_version=12,
        correlation_id=correlation_id,
        client_id="hostile",
    )
    return bytes(encode_request(header, request))


def kafka_metadata_frame(names: int) -> bytes:
    metadata = kafka.MetadataRequest
    request = metadata(
        topics=tuple(metadata.MetadataRequestTopic(name=f"topic-{i}") for i in range(names))
    )
    header = RequestHeader(
        request_api_key=ApiKey.METADATA, request_api_version=12, correlation_id=1, client_id="h"
    )
    return bytes(encode_request(header, request))


async def test_hostile_clients_cost_bounded_memory_and_starve_no_one(tmp_path) -> None:
    settings = {"broker_session_timeout_ms": 6000, "broker_heartbeat_interval_ms": 1000}
    with LocalCluster(str(tmp_path), combined=1, **settings) as cluster:
        cluster.start_all()
        pid = cluster.pid(1)
        host, port = cluster.bootstrap_servers().split(",")[0].split(":")
        client = RpcClient(host, int(port), client_id="good", rng=random.Random(0))
        with trio.fail_after(120):
            create = {"topics": [{"name": "t", "partitions": 1, "replication_factor": 1}]}
            answer = await client.request(ApiKey.CREATE_TOPICS, API_VERSION, create, timeout_s=30)
            assert answer["topics"][0]["error_code"] == ErrorCode.NONE
            # 12 MB in the partition, so a fetch of 10 MB gets 10 MB.
            big = build_batch([RecordInput(timestamp=1, value=b"x" * 1000) for _ in range(900)])
            for _ in range(14):
                body = {
                    "acks": 1,
                    "timeout_ms": 5000,
                    "topics": [{"name": "t", "partitions": [{"partition": 0, "records": big}]}],
                }
                while True:
                    answer = await client.request(ApiKey.PRODUCE, API_VERSION, body, timeout_s=30)
                    code = answer["topics"][0]["partitions"][0]["error_code"]
                    if code == ErrorCode.NONE:
                        break
                    await trio.sleep(0.2)  # the new partition's leadership is settling
            baseline = rss_bytes(pid)

            # 1. 300 pipelined 10 MB fetches, never read.
            hog = socket.create_connection((host, int(port)))
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            hog.sendall(
                b"".join(
                    request_frame(i, ApiKey.FETCH, fetch_body(1, 10 * MEGABYTE, 10 * MEGABYTE))
                    for i in range(300)
                )
            )
            # The same, in Kafka's protocol.
            kafka_hog = socket.create_connection((host, int(port)))
            kafka_hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            kafka_hog.sendall(b"".join(kafka_fetch_frame(i, 1, 10 * MEGABYTE) for i in range(300)))
            kafka_names = socket.create_connection((host, int(port)))
            kafka_names.sendall(kafka_metadata_frame(200_000))  # ~2.4 MB of names
            kafka_repeated = socket.create_connection((host, int(port)))
            kafka_repeated.sendall(kafka_fetch_frame(7, 20, 10**9))
            # 2. A million names in one Metadata request; 3. one partition named 20 times.
            names = {"topics": [f"topic-{i}" for i in range(1_000_000)]}
            metadata = await client.request(ApiKey.METADATA, API_VERSION, names, timeout_s=30)
            assert metadata["error_code"] == ErrorCode.INVALID_REQUEST
            repeated = await client.request(
                ApiKey.FETCH, API_VERSION, fetch_body(20, 10**9, 10**9), timeout_s=30
            )
            assert repeated["error_code"] == ErrorCode.INVALID_REQUEST

            # A well-behaved producer beside them, by count: 200 small sends.
            small = build_batch([RecordInput(timestamp=1, value=b"ok")])
            body = {
                "acks": 1,
                "timeout_ms": 5000,
                "topics": [{"name": "t", "partitions": [{"partition": 0, "records": small}]}],
            }
            latencies, peak = [], baseline
            for _ in range(200):
                started = time.monotonic()
                answer = await client.request(ApiKey.PRODUCE, API_VERSION, body, timeout_s=30)
                latencies.append(time.monotonic() - started)
                assert answer["topics"][0]["partitions"][0]["error_code"] == ErrorCode.NONE
                peak = max(peak, rss_bytes(pid))
                await trio.sleep(0.02)
            described = await client.request(ApiKey.DESCRIBE_CLUSTER, API_VERSION, {}, timeout_s=30)
            for hostile in (hog, kafka_hog, kafka_names, kafka_repeated):
                hostile.close()
            await client.aclose()
        p99 = statistics.quantiles(latencies, n=100)[98]
        assert p99 < 1.0, f"p99 {p99:.3f} s beside the hostile clients"
        assert peak - baseline < RSS_GROWTH_MAX, f"RSS grew {(peak - baseline) >> 20} MB"
        assert not any(broker["fenced"] for broker in described["brokers"])
        assert cluster.is_running(1)
