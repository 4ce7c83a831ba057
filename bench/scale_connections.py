"""Many client connections to one broker: the connection series of scale_bench.

One trio loop in this process holds `n` Kafka-protocol connections (pykraft's
KafkaConnection: ApiVersions v3 on connect, then a Metadata of the bench topic) to a
1 controller + 1 broker cluster, opened at most CONNECT_CONCURRENCY at a time. With
all of them open:
- `connect_all_s`: from the first connect to the last Metadata answer;
- broker RSS and descriptors before and with all open; `kib_per_connection`;
- `probe_metadata_ms_p50/_p99`: PROBES sequential Metadata requests from one more
  connection, once before the n are opened (`idle_*`) and once while they are open;
- `produce_all_s`: every connection sends one small Produce (acks=1, one record) at once;
- `refused`: connects, Metadata or Produce calls that failed (0 when all fit), with the
  first error. The client side's descriptor limit is lifted to its hard limit first; the
  broker's limit and its log-file budget (storage/handles.py: half the limit) are
  reported, so whether n connections fit next to the logs can be read off the line.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import trio

from bench.scale_procs import fd_limit, one_broker, open_fds, raise_own_fd_limit, rss_mb
from client.kafka_connection import KafkaConnection
from client.protocol.errors import ErrorCode
from client.protocol.kafka import messages as kafka
from storage.handles import LOG_FILES_SHARE
from storage.records import RecordInput, build_batch

TOPIC = "scale-connections"
TOPIC_PARTITIONS = 8
CONNECT_CONCURRENCY = 100
PROBES = 200
REQUEST_TIMEOUT_S = 60.0
KIB = 1024


def _metadata_request() -> Any:
    return kafka.MetadataRequest(
        topics=(kafka.MetadataRequest.MetadataRequestTopic(name=TOPIC),),
        allow_auto_topic_creation=False,
    )


def _produce_request(number: int) -> Any:
    batch = build_batch([RecordInput(key=b"%d" % number, value=b"v" * 100)])
    partition = kafka.ProduceRequest.PartitionProduceData(
        index=number % TOPIC_PARTITIONS, records=batch
    )
    return kafka.ProduceRequest(
        transactional_id=None,
        acks=1,
        timeout_ms=30_000,
        topic_data=(
            kafka.ProduceRequest.TopicProduceData(name=TOPIC, partition_data=(partition,)),
        ),
    )


class _Refusals:
    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def add(self, what: str, error: BaseException) -> None:
        self.count += 1
        self.first = self.first or f"{what}: {type(error).__name__}: {error}"


async def _probe(host: str, port: int) -> list[float]:
    """Milliseconds of PROBES sequential Metadata requests on one fresh connection."""
    connection = KafkaConnection(host, port, client_id="scale-probe", rng=random.Random(1))
    try:
        await connection.request(_metadata_request(), timeout_s=REQUEST_TIMEOUT_S)
        times = []
        for _ in range(PROBES):
            began = time.perf_counter()
            await connection.request(_metadata_request(), timeout_s=REQUEST_TIMEOUT_S)
            times.append((time.perf_counter() - began) * 1000)
        return times
    finally:
        await connection.aclose()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)


async def _create_topic(host: str, port: int) -> None:
    connection = KafkaConnection(host, port, client_id="scale-admin", rng=random.Random(2))
    try:
        topic = kafka.CreateTopicsRequest.CreatableTopic(
            name=TOPIC, num_partitions=TOPIC_PARTITIONS, replication_factor=1
        )
        await connection.request(
            kafka.CreateTopicsRequest(topics=(topic,), timeout_ms=30_000),
            timeout_s=REQUEST_TIMEOUT_S,
        )
        with trio.fail_after(REQUEST_TIMEOUT_S):
            while True:
                answer = await connection.request(_metadata_request(), timeout_s=REQUEST_TIMEOUT_S)
                parts = answer.topics[0].partitions if answer.topics else ()
                if len(parts) == TOPIC_PARTITIONS and all(p.leader_id >= 0 for p in parts):
                    return
                await trio.sleep(0.1)
    finally:
        await connection.aclose()


async def _connections_point(host: str, port: int, broker_pid: int, count: int) -> dict[str, Any]:
    await _create_topic(host, port)
    point: dict[str, Any] = {"connections": count}
    idle = await _probe(host, port)
    point["idle_probe_metadata_ms_p50"] = round(statistics.median(idle), 2)
    point["idle_probe_metadata_ms_p99"] = _percentile(idle, 0.99)
    point["broker_rss_mb_before"] = rss_mb(broker_pid)
    point["broker_fds_before"] = open_fds(broker_pid)
    refused = _Refusals()
    connections = [
        KafkaConnection(host, port, client_id=f"scale-{i}", rng=random.Random(i))
        for i in range(count)
    ]
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    opened = 0

    async def connect(number: int) -> None:
        nonlocal opened
        async with limiter:
            try:
                answer = await connections[number].request(
                    _metadata_request(), timeout_s=REQUEST_TIMEOUT_S
                )
                if answer.topics[0].error_code != ErrorCode.NONE:
                    raise RuntimeError(f"Metadata error {answer.topics[0].error_code}")
                opened += 1
            except Exception as error:  # counted: the line says how many were refused
                refused.add("connect", error)

    async def produce(number: int) -> None:
        try:
            answer = await connections[number].request(
                _produce_request(number), timeout_s=REQUEST_TIMEOUT_S
            )
            code = answer.responses[0].partition_responses[0].error_code
            if code != ErrorCode.NONE:
                raise RuntimeError(f"Produce error {code}")
        except Exception as error:  # counted, as above
            refused.add("produce", error)

    try:
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for number in range(count):
                nursery.start_soon(connect, number)
        point["connect_all_s"] = round(time.perf_counter() - began, 2)
        point["opened"] = opened
        await trio.sleep(1.0)  # the broker's per-connection tasks settle
        point["broker_rss_mb_open"] = rss_mb(broker_pid)
        point["broker_fds_open"] = open_fds(broker_pid)
        grown = point["broker_rss_mb_open"] - point["broker_rss_mb_before"]
        point["kib_per_connection"] = round(KIB * grown / max(1, opened), 1)
        busy = await _probe(host, port)
        point["probe_metadata_ms_p50"] = round(statistics.median(busy), 2)
        point["probe_metadata_ms_p99"] = _percentile(busy, 0.99)
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for number in range(count):
                nursery.start_soon(produce, number)
        point["produce_all_s"] = round(time.perf_counter() - began, 2)
        point["broker_rss_mb_produced"] = rss_mb(broker_pid)
    finally:
        with trio.CancelScope(shield=True):
            for connection in connections:
                await connection.aclose()
    point["refused"] = refused.count
    if refused.first:
        point["first_refusal"] = refused.first
    return point


def connection_series(root: str, counts: list[int]) -> dict[str, Any]:
    client_limit = raise_own_fd_limit()
    points = []
    for count in counts:
        try:
            with one_broker(f"{root}/connections-{count}") as cluster:
                (broker,) = cluster.broker_ids
                host, port = cluster.bootstrap_servers().split(",")[0].rsplit(":", 1)
                pid = cluster.pid(broker)
                point = trio.run(_connections_point, host, int(port), pid, count)
                limit = fd_limit(pid)
                point["broker_fd_limit"] = limit
                point["broker_log_file_budget"] = int(limit * LOG_FILES_SHARE)
                points.append(point)
        except Exception as error:  # reported in the line; the next point still runs
            points.append({"connections": count, "error": f"{type(error).__name__}: {error}"})
    return {"client_fd_limit": client_limit, "probes": PROBES, "points": points}
