"""Safety properties checked from inside the simulation, while it runs.

Only the simulator can look into every node at any instant, so these need no
history: the checker reads the nodes' own state every few simulated milliseconds and
on every metadata image a node publishes.

| property | definition |
|---|---|
| two-leaders-in-an-epoch | two nodes have led the metadata quorum in one epoch |
| metadata-divergence | two nodes built different metadata images at one log offset (state-machine safety: committed metadata is never lost or rewritten) |
| hwm-regression | a node's metadata high-water mark, or a replica's partition high-water mark, moved back within one incarnation of the node |
| node-died | a node's tasks raised an exception (it must only ever stop when told to) |
"""

from __future__ import annotations

from typing import Any

import trio

from broker.server import Server
from jepsen_like.checkers import Finding, Verdict
from jepsen_like.sim.cluster import SimCluster
from kraft.metadata.image import MetadataImage

CHECK_INTERVAL_S = 0.005
INVARIANTS = ("two-leaders-in-an-epoch", "metadata-divergence", "hwm-regression", "node-died")


class InvariantChecker:
    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.findings = {name: Finding(name) for name in INVARIANTS}
        self.leaders: dict[int, int] = {}  # epoch -> node
        self.images: dict[int, tuple[str, int]] = {}  # image offset -> (digest, first node)
        self.marks: dict[tuple[Any, ...], int] = {}  # (node, incarnation, what) -> hwm
        self.checks = 0
        cluster.on_start.append(self.attach)

    def attach(self, node: int, server: Server) -> None:
        if server.loader is not None:
            server.loader.subscribe(lambda _delta, image: self._on_image(node, image))

    def _on_image(self, node: int, image: MetadataImage) -> None:
        if image.offset < 0:
            return
        digest = image.digest()
        first = self.images.setdefault(image.offset, (digest, node))
        if first[0] != digest:
            self.findings["metadata-divergence"].add(
                {"offset": image.offset, "nodes": [first[1], node]}
            )

    async def run(self) -> None:
        while True:
            self.check_now()
            await trio.sleep(CHECK_INTERVAL_S)

    def check_now(self) -> None:
        self.checks += 1
        for node, server in sorted(self.cluster.servers.items()):
            raft = server.node
            if raft is None or not raft.running:
                continue
            incarnation = self.cluster.incarnations[node]
            leader = raft.leader()
            if leader.leader_id == node:
                known = self.leaders.setdefault(leader.epoch, node)
                if known != node:
                    self.findings["two-leaders-in-an-epoch"].add(
                        {"epoch": leader.epoch, "nodes": sorted([known, node])}
                    )
            self._monotonic((node, incarnation, "metadata"), raft.high_watermark)
            if server.replicas is not None:
                for (topic, index), partition in sorted(server.replicas.partitions.items()):
                    self._monotonic((node, incarnation, topic, index), partition.high_watermark)
        for death in self.cluster.deaths[self.findings["node-died"].count :]:
            self.findings["node-died"].add(death)

    def _monotonic(self, key: tuple[Any, ...], value: int) -> None:
        previous = self.marks.get(key)
        if previous is not None and value < previous:
            self.findings["hwm-regression"].add({"where": list(key), "from": previous, "to": value})
        self.marks[key] = value if previous is None else max(previous, value)

    def verdict(self) -> Verdict:
        self.check_now()
        return Verdict(
            findings=dict(self.findings),
            stats={
                "invariant-checks": self.checks,
                "metadata-epochs-led": len(self.leaders),
                "images-compared": len(self.images),
            },
        )
