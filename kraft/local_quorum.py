"""A metadata quorum of RaftNodes in this process, on loopback: for demos, benches, tests.

Every voter is a real `RaftNode` (real TCP on 127.0.0.1, real files under `root`);
only the process is shared. `kill` stops a voter like SIGKILL (no resignation, no
final flush) and `start` brings it back on the same port and data directory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import trio

from kraft.raft.core import NotLeaderError, RaftConfig
from kraft.runtime import RaftNode
from storage.fs import FileSystem

# How often to look again while waiting for a leader: elections take hundreds of ms.
POLL_SECONDS = 0.005


class LocalQuorum:
    def __init__(
        self,
        nursery: trio.Nursery,
        root: str,
        *,
        voters: frozenset[int] = frozenset({1, 2, 3}),
        cluster_id: str = "local",
        config_overrides: dict[str, int] | None = None,
        fs: FileSystem | None = None,
        seed: int | None = None,
    ) -> None:
        self.nursery = nursery
        self.root = root
        self.voters = voters
        self.cluster_id = cluster_id
        self.config_overrides = config_overrides or {}
        self.fs = fs
        self.rng = random.Random(seed)
        self.addresses: dict[int, tuple[str, int]] = {}
        self.nodes: dict[int, RaftNode] = {}

    async def start(self, node_id: int) -> RaftNode:
        """Start (or restart) a voter on its old port and data directory."""
        config = RaftConfig(
            local_id=node_id,
            voters=self.voters,
            cluster_id=self.cluster_id,
            **self.config_overrides,
        )
        node = RaftNode(
            config=config,
            directory=f"{self.root}/node-{node_id}",
            voter_addresses=self.addresses,
            rng=random.Random(self.rng.random()),
            fs=self.fs,
            port=self.addresses.get(node_id, ("127.0.0.1", 0))[1],
        )
        self.addresses[node_id] = ("127.0.0.1", await self.nursery.start(node.run))
        self.nodes[node_id] = node
        return node

    async def start_all(self) -> None:
        for node_id in sorted(self.voters):
            await self.start(node_id)

    def leader_now(self, *, excluding: int | None = None) -> RaftNode | None:
        for node_id, node in self.nodes.items():
            if node_id == excluding or not node.running or node.core is None:
                continue
            if node.core.is_leader():
                return node
        return None

    async def leader(self, *, excluding: int | None = None) -> RaftNode:
        """The running leader (other than `excluding`), once there is one."""
        while (node := self.leader_now(excluding=excluding)) is None:
            await trio.sleep(POLL_SECONDS)
        return node

    async def commit(self, values: Sequence[bytes], *, excluding: int | None = None) -> int:
        """Propose on whoever leads and wait for the commit; re-propose if leadership moves.

        A batch whose leader is deposed before it commits may or may not survive; like a
        client retrying, this proposes it again (so it may appear twice).
        """
        while True:
            leader = await self.leader(excluding=excluding)
            try:
                offset = leader.propose(values)
                await leader.wait_committed(offset)
                return offset
            except NotLeaderError:
                await trio.sleep(POLL_SECONDS)

    def kill_all(self) -> None:
        for node in self.nodes.values():
            if node.running:
                node.kill()
