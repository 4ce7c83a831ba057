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
