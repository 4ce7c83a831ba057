"""Controllers and brokers as `Server`s in one trio process, over real loopback TCP."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from broker.cluster_plan import plan_cluster
from broker.config import NodeConfig
from broker.meta_properties import format_directory
from broker.server import Server
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode
from client.protocol.rpc import RpcClient

CLUSTER_ID = "test-cluster"
FAST = {
    "election_timeout_ms": 300,
    "fetch_timeout_ms": 600,
    "request_timeout_ms": 600,
    "broker_session_timeout_ms": 1500,
    "broker_heartbeat_interval_ms": 200,
}


class InProcessCluster:
    def __init__(self, nursery: trio.Nursery, configs: list[NodeConfig]) -> None:
        self.nursery = nursery
        self.configs = {config.node_id: config for config in configs}
        self.servers: dict[int, Server] = {}
        self._clients: dict[tuple[str, int], RpcClient] = {}
        for config in configs:
            format_directory(config.data_dir, cluster_id=CLUSTER_ID, node_id=config.node_id)

    async def start(self, node_id: int) -> Server:
        server = Server(self.configs[node_id], cluster_id=CLUSTER_ID, seed=node_id)
        await self.nursery.start(server.run)
        self.servers[node_id] = server
        return server

    async def start_all(self) -> None:
        for node_id in self.configs:
            await self.start(node_id)

    def active_controller(self) -> Server | None:
        for server in self.servers.values():
            controller, node = server.controller, server.node
            if (
                controller is not None
                and controller.is_active
                and node is not None
                and node.running
            ):
                return server
        return None

    async def wait_active_controller(self, *, excluding: int | None = None) -> Server:
        while True:
            server = self.active_controller()
            if server is not None and server.config.node_id != excluding:
                return server
            await trio.sleep(0.01)

    async def call(self, node_id: int, api_key: int, body: Any, listener: str = "") -> Any:
        config = self.configs[node_id]
        name = listener or ("PLAINTEXT" if config.is_broker else "CONTROLLER")
        address = config.listeners[name]
        client = self._clients.get(address)
        if client is None:
            import random

            client = RpcClient(*address, client_id="test", rng=random.Random(0))
            self._clients[address] = client
        return await client.request(api_key, API_VERSION, body, timeout_s=10)

    async def wait_brokers_unfenced(self, count: int) -> None:
        while True:
            server = self.active_controller()
            loader = server.loader if server is not None else None
            if loader is not None and len(loader.image.unfenced_brokers()) >= count:
                return
            await trio.sleep(0.02)

    async def images_agree(self) -> str:
        """Wait until every running node's image is at the same offset; the digest."""
        while True:
            running = [s for s in self.servers.values() if s.node is not None and s.node.running]
            views = {(s.loader.next_offset, s.loader.image.digest()) for s in running}  # type: ignore[union-attr]
            if len(views) == 1:
                return views.pop()[1]
            await trio.sleep(0.05)


def create_topics_body(name: str, partitions: int, factor: int, **extra: Any) -> dict[str, Any]:
    return {
        "topics": [{"name": name, "partitions": partitions, "replication_factor": factor, **extra}]
    }


@pytest.mark.slow
async def test_combined_nodes_elect_a_controller_register_and_create_topics(
    nursery, tmp_path
) -> None:
    cluster = InProcessCluster(nursery, plan_cluster(str(tmp_path), combined=3, **FAST))
    with trio.fail_after(30):
        await cluster.start_all()
        await cluster.wait_brokers_unfenced(3)
        published: list[tuple[bool, int]] = []
        cluster.servers[3].loader.subscribe(
            lambda delta, image: published.append((delta is None, image.offset))
        )
        # Sent to a broker listener of any node: forwarded to the active controller.
        answer = await cluster.call(2, ApiKey.CREATE_TOPICS, create_topics_body("orders", 6, 3))
        assert answer["topics"][0]["error_code"] == ErrorCode.NONE
        again = await cluster.call(3, ApiKey.CREATE_TOPICS, create_topics_body("orders", 6, 3))
        assert again["topics"][0]["error_code"] == ErrorCode.TOPIC_ALREADY_EXISTS
        # Brokers learn of the topic when they replay its records: a moment later.
        while True:
            metadata = await cluster.call(1, ApiKey.METADATA, {"topics": ["orders", "nope"]})
            orders, nope = metadata["topics"]
            if orders["partitions"]:
                break
            await trio.sleep(0.01)
        assert nope["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        assert len(orders["partitions"]) == 6
        assert sorted(p["leader"] for p in orders["partitions"]) == [1, 1, 2, 2, 3, 3]
        digest = await cluster.images_agree()
        assert len(digest) == 64
        # Subscribers see the image now (no delta), then every change in log order.
        assert published[0][0] and not any(whole for whole, _ in published[1:])
        offsets = [offset for _, offset in published]
        assert offsets == sorted(offsets) and offsets[-1] == cluster.servers[3].loader.image.offset


async def started_with_topic(
    cluster: InProcessCluster, name: str, partitions: int, factor: int
) -> Server:
    """Start every node, wait for the brokers, create a topic; the active controller."""
    await cluster.start_all()
    await cluster.wait_brokers_unfenced(len([c for c in cluster.configs.values() if c.is_broker]))
    answer = await cluster.call(
        max(cluster.configs), ApiKey.CREATE_TOPICS, create_topics_body(name, partitions, factor)
    )
    assert answer["topics"][0]["error_code"] == ErrorCode.NONE
    return await cluster.wait_active_controller()


def leaders(image, name: str) -> dict[int, int]:
    topic = image.topic(name)
    return {index: part.leader for index, part in topic.partitions.items()}


def fenced_ever(server: Server) -> bool:
    return server.lifecycle is not None and server.lifecycle.registrations != 1


@pytest.mark.slow
async def test_controller_failover_keeps_brokers_unfenced_and_images_equal(
    nursery, tmp_path
) -> None:
    configs = plan_cluster(str(tmp_path), controllers=3, brokers=3, **FAST)
    cluster = InProcessCluster(nursery, configs)
    with trio.fail_after(60):
        await cluster.start_all()
        await cluster.wait_brokers_unfenced(3)
        answer = await cluster.call(4, ApiKey.CREATE_TOPICS, create_topics_body("t", 6, 3))
        assert answer["topics"][0]["error_code"] == ErrorCode.NONE

        old = await cluster.wait_active_controller()
        old_id = old.config.node_id
        # A controller that is not active says so, and names the one that is.
        standby = next(i for i in (1, 2, 3) if i != old_id)
        refused = await cluster.call(standby, ApiKey.CREATE_TOPICS, create_topics_body("x", 1, 1))
        assert refused["error_code"] == ErrorCode.NOT_CONTROLLER
        assert refused["controller_id"] == old_id

        old.kill()
        new = await cluster.wait_active_controller(excluding=old_id)
        answer = await cluster.call(5, ApiKey.CREATE_TOPICS, create_topics_body("after", 3, 3))
        assert answer["topics"][0]["error_code"] == ErrorCode.NONE
        image = new.loader.image
        assert image.unfenced_brokers() == [4, 5, 6]
        assert not any(fenced_ever(cluster.servers[b]) for b in (4, 5, 6))
        before_restart = await cluster.images_agree()

        await cluster.start(old_id)  # restarts on its old directory and catches up
        assert await cluster.images_agree() == before_restart


@pytest.mark.slow
async def test_a_dead_broker_loses_its_leaderships_and_rejoins_with_a_new_epoch(
    nursery, tmp_path
) -> None:
    configs = plan_cluster(str(tmp_path), controllers=1, brokers=3, **FAST)
    cluster = InProcessCluster(nursery, configs)
    with trio.fail_after(60):
        controller = await started_with_topic(cluster, "t", 6, 3)
        await controller.loader.wait_applied(controller.node.high_watermark - 1)
        victim = 3
        led = [i for i, leader in leaders(controller.loader.image, "t").items() if leader == victim]
        assert led
        old_epoch = controller.loader.image.brokers[victim].broker_epoch

        cluster.servers[victim].kill()
        killed_at = trio.current_time()
        while victim in leaders(controller.loader.image, "t").values():
            await trio.sleep(0.01)
        moved_after_ms = (trio.current_time() - killed_at) * 1000
        session_ms = FAST["broker_session_timeout_ms"]
        assert moved_after_ms < session_ms + 1000
        image = controller.loader.image
        assert image.brokers[victim].fenced
        for index in led:
            part = image.topic("t").partitions[index]
            assert part.leader in (1, 2, 4) or part.leader in part.isr
            assert victim not in part.isr

        await cluster.start(victim)
        while not (
            victim in controller.loader.image.brokers
            and not controller.loader.image.brokers[victim].fenced
        ):
            await trio.sleep(0.01)
        assert controller.loader.image.brokers[victim].broker_epoch > old_epoch
        await cluster.images_agree()


@pytest.mark.slow
async def test_bad_requests_get_error_codes_and_change_nothing(nursery, tmp_path) -> None:
    cluster = InProcessCluster(nursery, plan_cluster(str(tmp_path), combined=1, **FAST))
    with trio.fail_after(30):
        await cluster.start_all()
        await cluster.wait_brokers_unfenced(1)
        before = await cluster.images_agree()
        cases = [
            (create_topics_body("bad/name", 1, 1), ErrorCode.INVALID_TOPIC_EXCEPTION),
            (create_topics_body("a" * 250, 1, 1), ErrorCode.INVALID_TOPIC_EXCEPTION),
            (create_topics_body("wide", 1, 2), ErrorCode.INVALID_REPLICATION_FACTOR),
            (create_topics_body("none", 0, 1), ErrorCode.INVALID_PARTITIONS),
            (
                create_topics_body("cfg", 1, 1, configs=[["retention.ms", "soon"]]),
                ErrorCode.INVALID_CONFIG,
            ),
        ]
        for body, code in cases:
            answer = await cluster.call(1, ApiKey.CREATE_TOPICS, body)
            assert answer["topics"][0]["error_code"] == code, body
        deleted = await cluster.call(1, ApiKey.DELETE_TOPICS, {"names": ["ghost"]})
        assert deleted["topics"][0]["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        malformed = await cluster.call(1, ApiKey.CREATE_TOPICS, {"topics": [{"name": 5}]})
        assert malformed["error_code"] == ErrorCode.INVALID_REQUEST
        stale = await cluster.call(
            1,
            ApiKey.BROKER_HEARTBEAT,
            {"broker_id": 1, "broker_epoch": 12345, "current_metadata_offset": 0},
            listener="CONTROLLER",
        )
        assert stale["error_code"] == ErrorCode.STALE_BROKER_EPOCH
        unknown_api = await cluster.call(1, 999, {})
        assert unknown_api["error_code"] == ErrorCode.INVALID_REQUEST
        assert await cluster.images_agree() == before


@pytest.mark.slow
async def test_describe_quorum_and_cluster(nursery, tmp_path) -> None:
    cluster = InProcessCluster(
        nursery, plan_cluster(str(tmp_path), controllers=3, brokers=1, **FAST)
    )
    with trio.fail_after(30):
        await cluster.start_all()
        await cluster.wait_brokers_unfenced(1)
        quorum = await cluster.call(4, ApiKey.DESCRIBE_QUORUM, {})
        active = await cluster.wait_active_controller()
        assert quorum["leader_id"] == active.config.node_id
        assert sorted(v["replica_id"] for v in quorum["voters"]) == [1, 2, 3]
        assert [o["replica_id"] for o in quorum["observers"]] == [4]
        assert all(v["log_end_offset"] > 0 for v in quorum["voters"])
        described = await cluster.call(4, ApiKey.DESCRIBE_CLUSTER, {})
        assert described["cluster_id"] == CLUSTER_ID
        assert [b["broker_id"] for b in described["brokers"]] == [4]


@pytest.mark.slow
async def test_metadata_snapshots_are_taken_and_loaded_on_restart(nursery, tmp_path) -> None:
    configs = plan_cluster(str(tmp_path), combined=3, metadata_snapshot_min_bytes=2_000, **FAST)
    cluster = InProcessCluster(nursery, configs)
    with trio.fail_after(60):
        await cluster.start_all()
        await cluster.wait_brokers_unfenced(3)
        for n in range(8):
            await cluster.call(1, ApiKey.CREATE_TOPICS, create_topics_body(f"t{n}", 4, 2))
        digest = await cluster.images_agree()
        assert all(s.loader.snapshots_written > 0 for s in cluster.servers.values())
        cluster.servers[2].kill()
        await trio.sleep(0.1)
        restarted = await cluster.start(2)
        assert await cluster.images_agree() == digest
        assert restarted.loader.snapshots_loaded == 1


@pytest.mark.slow
async def test_controlled_shutdown_moves_leadership_before_the_broker_stops(
    nursery, tmp_path
) -> None:
    configs = plan_cluster(str(tmp_path), controllers=1, brokers=3, **FAST)
    cluster = InProcessCluster(nursery, configs)
    with trio.fail_after(30):
        controller = await started_with_topic(cluster, "t", 6, 3)
        while 4 not in leaders(controller.loader.image, "t").values():
            await trio.sleep(0.01)
        await cluster.servers[4].stop()
        # Moved while it was still alive: no partition waited for a session timeout.
        assert 4 not in leaders(controller.loader.image, "t").values()
        assert controller.loader.image.brokers[4].in_controlled_shutdown
