"""Safety properties checked from inside the simulation, while it runs.

Only the simulator can look into every node at any instant, so these need no
history: the checker reads the nodes' own state every few simulated milliseconds (the
simulated clock calls it between events, when no task is running, at least every
`CHECK_INTERVAL_S` of simulated time) and on every metadata image a node publishes.

| property | definition |
|---|---|
| two-leaders-in-an-epoch | two nodes have led the metadata quorum in one epoch |
| metadata-divergence | two nodes built different metadata images at one log offset (state-machine safety: committed metadata is never lost or rewritten) |
| hwm-regression | a node's metadata high-water mark, or a replica's partition high-water mark, moved back within one incarnation of the node |
| node-died | a node's tasks raised an exception (it must only ever stop when told to) |
| quorum-leaderless | a majority of the voters ran and reached each other for 10 s, and none led (liveness: a quorum that cannot elect) |
| leader-without-quorum | a metadata quorum leader still leads though, for longer than 1.5 fetch timeouts, no majority of the voters could reach it (paused, cut off, or the others dead): KIP-595's check-quorum makes it resign by then (KAFKA-15489) |
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from broker.server import Server
from jepsen_like.checkers import Finding
from jepsen_like.run import ListedVerdict
from jepsen_like.sim.cluster import SimCluster
from kraft.metadata.image import MetadataImage

CHECK_INTERVAL_S = 0.005
# The check-quorum bound is 1.5 fetch timeouts (KIP-595); on top, the checker's own
# sampling interval and the Raft driver's timer granularity.
QUORUM_LOSS_SLACK_MS = 50
# A connected majority of voters elects within a few election timeouts (0.5-1 s in the
# simulator's settings); ten seconds without a leader is a quorum that cannot elect.
LEADERLESS_MAX_S = 10.0
INVARIANTS = (
    "two-leaders-in-an-epoch",
    "metadata-divergence",
    "hwm-regression",
    "node-died",
    "leader-without-quorum",
    "quorum-leaderless",
)


@attrs.define
class InvariantVerdict(ListedVerdict):
    """Every property checked here is a safety property: any finding is an anomaly."""

    anomalies: tuple[str, ...] = INVARIANTS


class InvariantChecker:
    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.findings = {name: Finding(name) for name in INVARIANTS}
        self.leaders: dict[int, int] = {}  # epoch -> node
        self.images: dict[int, tuple[str, int]] = {}  # image offset -> (digest, first node)
        self.marks: dict[tuple[Any, ...], int] = {}  # (node, incarnation, what) -> hwm
        self.cut_off_since_s: dict[int, float] = {}  # voter -> when a majority lost it
        self._episodes: set[tuple[int, float]] = set()  # (voter, since): reported once
        self.leaderless_since_s: float | None = None  # a connected majority, no leader
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

    def check_now(self) -> None:
        """Synchronous: the simulated clock calls it outside any task."""
        self.checks += 1
        now_s = trio.current_time()
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
            self._check_quorum(node, leader.leader_id == node, leader.epoch, now_s)
            self._monotonic((node, incarnation, "metadata"), raft.high_watermark)
            if server.replicas is not None:
                for (topic, index), partition in sorted(server.replicas.partitions.items()):
                    self._monotonic((node, incarnation, topic, index), partition.high_watermark)
        for death in self.cluster.deaths[self.findings["node-died"].count :]:
            self.findings["node-died"].add(death)
        self._check_quorum_has_leader(now_s)

    def _check_quorum_has_leader(self, now_s: float) -> None:
        """Liveness: a majority of voters that run and reach each other elects a leader."""
        network = self.cluster.network
        voters = self.cluster.controller_ids
        up = [v for v in voters if v in self.cluster.servers and v not in network.paused]
        connected = not any(a in up and b in up for a, b in network.cut)
        led = any(
            s.node is not None and s.node.running and s.node.leader().leader_id == n
            for n, s in self.cluster.servers.items()
        )
        if led or not connected or len(up) <= len(voters) // 2:
            self.leaderless_since_s = None
            return
        if self.leaderless_since_s is None:
            self.leaderless_since_s = now_s
        elif now_s - self.leaderless_since_s > LEADERLESS_MAX_S:
            self.findings["quorum-leaderless"].add(
                {"since_s": round(self.leaderless_since_s, 3), "voters_up": up}
            )
            self.leaderless_since_s = math.inf  # one finding per episode

    def _check_quorum(self, node: int, leads: bool, epoch: int, now_s: float) -> None:
        voters = self.cluster.controller_ids
        heard_by = [v for v in voters if v == node or self._can_fetch_from(v, node)]
        if len(heard_by) > len(voters) // 2:
            self.cut_off_since_s.pop(node, None)
            return
        since_s = self.cut_off_since_s.setdefault(node, now_s)
        limit_ms = self.cluster.configs[node].fetch_timeout_ms * 3 // 2 + QUORUM_LOSS_SLACK_MS
        if leads and (now_s - since_s) * 1000 > limit_ms and (node, since_s) not in self._episodes:
            self._episodes.add((node, since_s))
            self.findings["leader-without-quorum"].add(
                {"node": node, "epoch": epoch, "cut_off_for_ms": int((now_s - since_s) * 1000)}
            )

    def _can_fetch_from(self, voter: int, leader: int) -> bool:
        """Whether `voter` runs and its fetches reach `leader` (a pause holds them)."""
        network = self.cluster.network
        return (
            voter in self.cluster.servers
            and voter not in network.paused
            and leader not in network.paused
            and (voter, leader) not in network.cut
        )

    def _monotonic(self, key: tuple[Any, ...], value: int) -> None:
        previous = self.marks.get(key)
        if previous is not None and value < previous:
            self.findings["hwm-regression"].add({"where": list(key), "from": previous, "to": value})
        self.marks[key] = value if previous is None else max(previous, value)

    def verdict(self) -> InvariantVerdict:
        self.check_now()
        return InvariantVerdict(
            findings=dict(self.findings),
            stats={
                "invariant-checks": self.checks,
                "metadata-epochs-led": len(self.leaders),
                "images-compared": len(self.images),
            },
        )
