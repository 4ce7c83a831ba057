"""Acknowledged writes survive SIGKILLs of partition leaders (separate OS processes)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from broker.local_cluster import LocalCluster
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from storage.log import SegmentedLog
from storage.records import RecordInput, build_batch, iter_records

SETTINGS = {
    "election_timeout_ms": 500,
    "fetch_timeout_ms": 1000,
    "request_timeout_ms": 1000,
    "broker_session_timeout_ms": 2000,
    "broker_heartbeat_interval_ms": 250,
}
PARTITIONS = 3
TOTAL = 100_000
BATCH = 500
BROKERS = (2, 3, 4)


class Workload:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.acked: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        self.retries = 0

    async def partitions(self) -> list[dict[str, Any]]:
        """The topic's partitions as some running broker sees them now."""
        while True:
            for via in BROKERS:
                if not self.cluster.is_running(via):
                    continue
                try:
                    meta = await self.cluster.request(
                        via, ApiKey.METADATA, {"topics": ["t"]}, timeout_s=2
                    )
                except KafkaError:
                    continue
                parts: list[dict[str, Any]] = meta["topics"][0]["partitions"]
                if len(parts) == PARTITIONS:
                    return parts
            await trio.sleep(0.05)

    async def leader_of(self, partition: int) -> int:
        while True:
            leader = (await self.partitions())[partition]["leader"]
            if leader in BROKERS and self.cluster.is_running(leader):
                return leader
            await trio.sleep(0.05)

    async def produce_partition(self, partition: int) -> None:
        per_partition = TOTAL // PARTITIONS + (1 if partition < TOTAL % PARTITIONS else 0)
        for start in range(0, per_partition, BATCH):
            seqs = list(range(start, min(start + BATCH, per_partition)))
            records = build_batch(
                [RecordInput(timestamp=1, value=b"%d-%d" % (partition, s)) for s in seqs]
            )
            while True:
                leader = await self.leader_of(partition)
                body = {
                    "acks": -1,
                    "timeout_ms": 5_000,
                    "topics": [
                        {"name": "t", "partitions": [{"partition": partition, "records": records}]}
                    ],
                }
                try:
                    answer = await self.cluster.request(leader, ApiKey.PRODUCE, body, timeout_s=6)
                    code = answer["topics"][0]["partitions"][0]["error_code"]
                except KafkaError:
                    code = ErrorCode.NETWORK_EXCEPTION
                if code == ErrorCode.NONE:
                    self.acked[partition] += seqs
                    break
                self.retries += 1  # the batch may or may not be in the log: send it again
                await trio.sleep(0.05)

    def acked_count(self) -> int:
        return sum(len(v) for v in self.acked.values())


async def read_partition(cluster: LocalCluster, leader: int, partition: int) -> list[bytes]:
    return await read_partition_of(cluster, leader, "t", partition)


async def read_partition_of(
    cluster: LocalCluster, leader: int, topic: str, partition: int = 0
) -> list[bytes]:
    found: list[bytes] = []
    offset = 0
    while True:
        body = {
            "max_wait_ms": 0,
            "topics": [
                {"name": topic, "partitions": [{"partition": partition, "fetch_offset": offset}]}
            ],
        }
        part = (await cluster.request(leader, ApiKey.FETCH, body))["topics"][0]["partitions"][0]
        assert part["error_code"] == ErrorCode.NONE, part
        if not part["records"]:
            return found
        for record in iter_records(part["records"]):
            found.append(record.value or b"")
            offset = record.offset + 1


@pytest.mark.lab  # a CI step of its own: the default suite's budget
async def test_acked_records_survive_two_leader_kills(tmp_path) -> None:
    with LocalCluster(str(tmp_path), controllers=1, brokers=3, **SETTINGS) as cluster:
        cluster.start_all()
        workload = Workload(cluster)
        with trio.fail_after(180):
            body = {"topics": [{"name": "t", "partitions": PARTITIONS, "replication_factor": 3}]}
            created = await cluster.request(2, ApiKey.CREATE_TOPICS, body)
            assert created["topics"][0]["error_code"] == ErrorCode.NONE
            kills: list[int] = []
            async with trio.open_nursery() as nursery:
                for partition in range(PARTITIONS):
                    nursery.start_soon(workload.produce_partition, partition)
                for threshold in (TOTAL // 3, 2 * TOTAL // 3):
                    while workload.acked_count() < threshold:
                        await trio.sleep(0.01)
                    victim = await workload.leader_of(0)
                    cluster.kill(victim)
                    kills.append(victim)
                    await trio.sleep(3)  # fenced and replaced meanwhile, under load
                    cluster.start(victim)
            assert workload.acked_count() == TOTAL and len(kills) == 2

            # Let the restarted brokers catch up and rejoin every ISR.
            while True:
                parts = await workload.partitions()
                if all(len(p["isr"]) == 3 for p in parts):
                    break
                await trio.sleep(0.1)
            duplicates = 0
            for p in parts:
                values = await read_partition(cluster, p["leader"], p["partition"])
                seqs = [int(v.split(b"-")[1]) for v in values]
                assert set(workload.acked[p["partition"]]) <= set(seqs), (
                    "an acked record is missing"
                )
                duplicates += len(seqs) - len(set(seqs))
                firsts = list(dict.fromkeys(seqs))
                assert firsts == sorted(firsts), "records out of order"
        for node in (*BROKERS, 1):
            assert cluster.is_running(node), f"node {node} died"
        cluster.stop_many(list(BROKERS))
    # Every replica holds the same log, byte for byte.
    for partition in range(PARTITIONS):
        logs = [
            SegmentedLog.open(os.path.join(str(tmp_path), f"node-{b}", f"t-{partition}"))
            for b in BROKERS
        ]
        end = min(log.log_end_offset for log in logs)
        contents = {bytes(log.read(0, 1 << 30, max_offset=end)) for log in logs}
        assert len(contents) == 1
        assert end >= len(workload.acked[partition])
        for log in logs:
            log.close()
    print(f"retries={workload.retries} duplicates={duplicates}")


async def produce_one(cluster: LocalCluster, node: int, value: bytes, acks: int) -> dict[str, Any]:
    body = {
        "acks": acks,
        "timeout_ms": 5_000,
        "topics": [
            {
                "name": "d",
                "partitions": [
                    {
                        "partition": 0,
                        "records": build_batch([RecordInput(timestamp=1, value=value)]),
                    }
                ],
            }
        ],
    }
    answer = await cluster.request(node, ApiKey.PRODUCE, body, timeout_s=6)
    return answer["topics"][0]["partitions"][0]


@pytest.mark.slow
async def test_a_returning_leader_truncates_its_unreplicated_tail(tmp_path) -> None:
    with LocalCluster(str(tmp_path), controllers=1, brokers=3, **SETTINGS) as cluster:
        cluster.start_all()
        with trio.fail_after(120):
            body = {"topics": [{"name": "d", "partitions": 1, "replication_factor": 3}]}
            assert (await cluster.request(2, ApiKey.CREATE_TOPICS, body))["topics"][0][
                "error_code"
            ] == 0
            while True:
                meta = await cluster.request(2, ApiKey.METADATA, {"topics": ["d"]})
                part = meta["topics"][0]["partitions"][0]
                if len(part["isr"]) == 3:
                    break
                await trio.sleep(0.05)
            old = part["leader"]
            followers = [b for b in BROKERS if b != old]
            for n in range(5):
                assert (await produce_one(cluster, old, b"ok%d" % n, -1))["error_code"] == 0
            # The followers freeze; the leader takes acks=1 writes only it has; it dies.
            for b in followers:
                cluster.pause(b)
            # Their pending long-poll fetches run out (500 ms) and go unanswered-to:
            # from now on nothing the leader appends reaches them.
            await trio.sleep(0.8)
            for _ in range(3):
                assert (await produce_one(cluster, old, b"unreplicated", 1))["error_code"] == 0
            cluster.kill(old)
            for b in followers:
                cluster.resume(b)
            while True:
                meta = await cluster.request(followers[0], ApiKey.METADATA, {"topics": ["d"]})
                new = meta["topics"][0]["partitions"][0]["leader"]
                if new in followers:
                    break
                await trio.sleep(0.05)
            answer = await produce_one(cluster, new, b"new", -1)
            assert answer["error_code"] == 0 and answer["base_offset"] == 5
            cluster.start(old)
            while True:  # the old leader is back in the ISR: it has caught up
                meta = await cluster.request(new, ApiKey.METADATA, {"topics": ["d"]})
                if len(meta["topics"][0]["partitions"][0]["isr"]) == 3:
                    break
                await trio.sleep(0.05)
            values = await read_partition_of(cluster, new, "d")
            assert values == [b"ok0", b"ok1", b"ok2", b"ok3", b"ok4", b"new"]
        cluster.stop_many(list(BROKERS))
    logs = [SegmentedLog.open(os.path.join(str(tmp_path), f"node-{b}", "d-0")) for b in BROKERS]
    contents = {bytes(log.read(0, 1 << 20)) for log in logs}
    assert len(contents) == 1 and b"unreplicated" not in contents.pop()
    assert all(log.log_end_offset == 6 for log in logs)
    for log in logs:
        log.close()
