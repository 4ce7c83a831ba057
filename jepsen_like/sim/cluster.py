"""A cluster of `broker.server.Server`s inside one trio run, on simulated network and disks.

The production `Server` runs unchanged; each node gets its own `SimEnvironment`
(through the context variable that `client.protocol.environment` reads) and its own
`MemoryFileSystem`. A kill cancels the node after its file system has crashed:
only what was synced survives, and the last unsynced write may be torn. It offers
the interface of `jepsen_like.cluster_control.ClusterControl`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from broker.config import BROKER_LISTENER, CONTROLLER_LISTENER, NodeConfig
from broker.server import Server
from client.protocol import environment
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import KafkaError
from client.protocol.rpc import RpcClient
from jepsen_like.sim.network import SimEnvironment, SimNetwork
from storage.fs import MemoryFileSystem

log = logging.getLogger(__name__)

HARNESS = 0  # the node id the harness's own requests come from
READY_TIMEOUT_S = 60.0


class NodeDied(Exception):
    """A node's tasks raised: a bug in the node, reported as a violation."""


class SimCluster:
    def __init__(
        self,
        configs: list[NodeConfig],
        *,
        network: SimNetwork,
        rng: random.Random,
        cluster_id: str,
        nursery: trio.Nursery,
        harness: SimEnvironment,
    ) -> None:
        self.configs = {c.node_id: c for c in configs}
        self.network = network
        self.rng = rng
        self.cluster_id = cluster_id
        self.nursery = nursery
        self.harness = harness
        self.fs = {node: MemoryFileSystem() for node in self.configs}
        self.servers: dict[int, Server] = {}
        self.incarnations: dict[int, int] = dict.fromkeys(self.configs, 0)
        self.environments: dict[int, SimEnvironment] = {}
        self.deaths: list[str] = []  # nodes whose tasks raised
        self.on_start: list[Any] = []  # callbacks(node, server), e.g. the invariant checker
        # The harness keeps one connection per node and listener, as a real client
        # would; a fresh one per request cost more than the request (observer polls).
        self._clients: dict[tuple[str, int], RpcClient] = {}

    @property
    def controller_ids(self) -> list[int]:
        return sorted(n for n, c in self.configs.items() if c.is_controller)

    @property
    def broker_ids(self) -> list[int]:
        return sorted(n for n, c in self.configs.items() if c.is_broker)

    def bootstrap_servers(self) -> str:
        return ",".join(
            "{}:{}".format(*self.configs[n].listeners[BROKER_LISTENER]) for n in self.broker_ids
        )

    def is_running(self, node: int) -> bool:
        return node in self.servers

    async def request(
        self, node: int, api_key: int, body: Any, *, listener: str = "", timeout_s: float = 10
    ) -> Any:
        config = self.configs[node]
        name = listener or (BROKER_LISTENER if config.is_broker else CONTROLLER_LISTENER)
        host, port = config.listeners[name]
        with environment.using(self.harness):
            client = self._clients.get((host, port))
            if client is None:
                client = RpcClient(host, port, client_id="sim-harness", rng=self.harness.new_rng())
                self._clients[(host, port)] = client
            return await client.request(api_key, API_VERSION, body, timeout_s=timeout_s)

    async def wait_images_agree(self) -> str:
        while True:
            views = set()
            for node in sorted(self.servers):
                try:
                    answer = await self.request(node, ApiKey.DESCRIBE_IMAGE, {}, timeout_s=2)
                except KafkaError:
                    views.add(("?", node))
                    continue
                views.add((answer["next_offset"], answer["digest"]))
            if len(views) == 1:
                return str(views.pop()[1])
            await trio.sleep(0.05)

    # ------------------------------------------------------------ life cycle

    async def start_all(self) -> None:
        async with trio.open_nursery() as starting:
            for node in sorted(self.configs):
                if node not in self.servers:
                    starting.start_soon(self.start, node)

    async def start(self, node: int) -> None:
        if node in self.servers:
            raise RuntimeError(f"node {node} is already running")
        self.incarnations[node] += 1
        env = self.network.environment(node, random.Random(self.rng.getrandbits(64)))
        env.clock_skew_ms = (
            self.environments[node].clock_skew_ms if node in self.environments else 0
        )
        self.environments[node] = env
        server = Server(
            self.configs[node],
            cluster_id=self.cluster_id,
            seed=self.rng.getrandbits(64),
            fs=self.fs[node],
        )
        self.servers[node] = server
        with environment.using(env):
            await self.nursery.start(self._run, node, server)
        for callback in self.on_start:
            callback(node, server)
        if server.lifecycle is not None:
            with trio.move_on_after(READY_TIMEOUT_S):
                await server.lifecycle.unfenced.wait()

    async def _run(self, node: int, server: Server, *, task_status: Any) -> None:
        try:
            await server.run(task_status=task_status)
        except Exception as error:  # a node must never die of its own accord
            if self.servers.get(node) is server:
                self.deaths.append(f"node {node}: {type(error).__name__}: {error}")
                log.exception("node %d died", node)
                del self.servers[node]
                self.network.crash(node)

    def kill(self, node: int, *, lose_unsynced: bool = False) -> None:
        """SIGKILL: the process is gone, what it wrote stays (the OS page cache keeps
        it). With `lose_unsynced`, a power loss of the node's machine: unsynced data is
        lost and the last unsynced write may be torn."""
        server = self.servers.pop(node, None)
        if server is None:
            return
        if lose_unsynced:
            self.fs[node].crash(self.rng)
        else:
            self.fs[node].close_handles()
        self.network.crash(node)
        server.kill()

    def crash(self, node: int) -> None:
        self.kill(node, lose_unsynced=True)

    def power_loss(self) -> None:
        """Every node at once (correlated failure)."""
        for node in sorted(self.servers):
            self.kill(node, lose_unsynced=True)

    async def stop(self, node: int) -> None:
        server = self.servers.get(node)
        if server is None:
            return
        with environment.using(self.environments[node]):
            with trio.move_on_after(15):
                await server.stop()
        self.servers.pop(node, None)
        self.network.crash(node)  # the process exits: its sockets close

    def pause(self, node: int) -> None:
        self.network.pause(node)

    def resume(self, node: int) -> None:
        self.network.resume(node)

    def stall_clients(self, node: int) -> int:
        """The clients' connections to `node` open now stall (see SimNetwork.stall)."""
        return self.network.stall(HARNESS, node)

    def stall_clients_at(self, node: int, api_key: int) -> None:
        """A client's next request of `api_key` to `node` stalls its connection."""
        self.network.stall_at_request(HARNESS, node, api_key)

    def release_stalls(self) -> None:
        self.network.release_stalls()

    def damage_segment(self, node: int, rng: random.Random, topic: str) -> dict[str, Any] | None:
        """Flip a byte near the end of the newest segment of one of the node's partitions."""
        fs = self.fs[node]
        data_dir = self.configs[node].data_dir
        if not fs.exists(data_dir):
            return None
        partitions = sorted(d for d in fs.listdir(data_dir) if d.startswith(f"{topic}-"))
        if not partitions:
            return None
        directory = f"{data_dir}/{rng.choice(partitions)}"
        segments = sorted(f for f in fs.listdir(directory) if f.endswith(".log"))
        if not segments:
            return None
        path = f"{directory}/{segments[-1]}"
        size = fs.file_size(path)
        if size < 100:
            return None
        position = size - rng.randrange(1, 60)
        fs.corrupt(path, position, xor_mask=0xFF)
        return {"node": node, "file": path, "what": "flipped a byte of"}
