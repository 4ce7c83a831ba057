"""3 controllers + 3 brokers as separate OS processes: SIGKILL a controller, then a broker."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from broker.local_cluster import LocalCluster
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode

SETTINGS = {
    "election_timeout_ms": 500,
    "fetch_timeout_ms": 1000,
    "request_timeout_ms": 1000,
    "broker_session_timeout_ms": 3000,
    "broker_heartbeat_interval_ms": 300,
}


def topic_body(name: str, partitions: int, factor: int) -> dict[str, Any]:
    return {"topics": [{"name": name, "partitions": partitions, "replication_factor": factor}]}


async def brokers(cluster: LocalCluster, via: int) -> dict[int, dict[str, Any]]:
    answer = await cluster.request(via, ApiKey.DESCRIBE_CLUSTER, {})
    return {b["broker_id"]: b for b in answer["brokers"]}


async def leaders(cluster: LocalCluster, via: int, topic: str) -> dict[int, int]:
    answer = await cluster.request(via, ApiKey.METADATA, {"topics": [topic]})
    return {p["partition"]: p["leader"] for p in answer["topics"][0]["partitions"]}


@pytest.mark.lab  # a CI step of its own: the default suite's budget
async def test_sigkill_the_active_controller_then_a_broker(tmp_path) -> None:
    with LocalCluster(str(tmp_path), controllers=3, brokers=3, **SETTINGS) as cluster:
        cluster.start_all()
        everyone = sorted(cluster.configs)
        with trio.fail_after(90):
            while len([b for b in (await brokers(cluster, 4)).values() if not b["fenced"]]) < 3:
                await trio.sleep(0.1)
            created = await cluster.request(4, ApiKey.CREATE_TOPICS, topic_body("t", 6, 3))
            assert created["topics"][0]["error_code"] == ErrorCode.NONE
            epochs = {b: d["broker_epoch"] for b, d in (await brokers(cluster, 4)).items()}

            quorum = await cluster.request(5, ApiKey.DESCRIBE_QUORUM, {})
            active = quorum["leader_id"]
            assert active in (1, 2, 3)
            cluster.kill(active)
            # Forwarded by a broker, which finds the new controller by itself.
            answer = await cluster.request(
                6, ApiKey.CREATE_TOPICS, topic_body("after-failover", 3, 3), timeout_s=30
            )
            assert answer["topics"][0]["error_code"] == ErrorCode.NONE
            quorum = await cluster.request(5, ApiKey.DESCRIBE_QUORUM, {})
            assert quorum["leader_id"] not in (active, -1)
            assert quorum["leader_epoch"] > 1
            after = await brokers(cluster, 5)
            assert all(not d["fenced"] for d in after.values())
            assert {b: d["broker_epoch"] for b, d in after.items()} == epochs  # no re-registering
            running = [n for n in everyone if n != active]
            digest = await cluster.wait_images_agree(running)

            cluster.start(active)
            assert await cluster.wait_images_agree(everyone) == digest

            current = await leaders(cluster, 5, "t")
            victim = next(b for b in (4, 5, 6) if b in current.values())
            witness = next(b for b in (4, 5, 6) if b != victim)
            cluster.kill(victim)
            killed_at = trio.current_time()
            while victim in (await leaders(cluster, witness, "t")).values():
                await trio.sleep(0.05)
            failover_ms = (trio.current_time() - killed_at) * 1000
            assert failover_ms < SETTINGS["broker_session_timeout_ms"] + 2000
            assert (await brokers(cluster, witness))[victim]["fenced"]

            cluster.start(victim)
            while (await brokers(cluster, witness))[victim]["fenced"]:
                await trio.sleep(0.1)
            assert (await brokers(cluster, witness))[victim]["broker_epoch"] > epochs[victim]
            await cluster.wait_images_agree(everyone)
        for node_id in everyone:
            assert cluster.is_running(node_id), f"node {node_id} died; see its log"
