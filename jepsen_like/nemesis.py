"""Faults against a LocalCluster of real processes, on a schedule, recorded in the history.

Each fault has a start and a heal: kill (SIGKILL, then restart on the same data
directory), pause (SIGSTOP, then SIGCONT), targeted kills (and a pause) of the active
controller, a kill of a partition's leader, a rolling restart of every node, and network partitions
through the fault proxies (one node isolated, halves, a majorities ring, a bridge, the
active controller or a partition leader isolated). Targets are chosen with a seeded random generator, so a
schedule is repeatable. Optionally a killed node's newest segment gets its tail
truncated or a byte flipped before restart (a recovery test: the CRC must catch it).
With a consumer group (the subscribe workload): kill or pause one of its members, or
kill the broker that coordinates it. With transactional producers (the txn workload),
kill-coordinator kills the transaction coordinator of one of their transactional ids
(the leader of its `__transaction_state` partition).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from broker.group_driver import OFFSETS_TOPIC
from broker.groups.hashing import partition_for
from broker.txn_driver import TRANSACTION_STATE_TOPIC
from client.protocol.apis import ApiKey
from client.protocol.errors import KafkaError
from jepsen_like.cluster_control import ClusterControl
from jepsen_like.history import INFO, History
from jepsen_like.proxy import LinkFaults

log = logging.getLogger(__name__)

END_TXN_KEY = 26  # Kafka's api key of EndTxn


class GroupMembers(Protocol):
    """What the nemesis needs of a workload's consumer group (SubscribeWorkload)."""

    group: str

    def member_ids(self) -> list[int]: ...
    def kill_member(self, member: int) -> None: ...
    def pause_member(self, member: int) -> None: ...
    def resume_member(self, member: int) -> None: ...
    async def start_member(self, member: int) -> None: ...


KILLS = (
    "kill",
    "pause",
    "kill-controller",
    "pause-controller",
    "kill-leader",
    "kill-all",
    "rolling-restart",
)
PARTITIONS = ("isolate", "halves", "ring", "bridge", "isolate-controller", "isolate-leader")
# Only the simulator can lose unsynced writes: one node's machine ("crash") or
# every node's at once ("power-loss"). Two sequences of them are targeted at KIP-966
# and KIP-903 (see `_crash_lone_leader` and `_crash_follower_cut_off`). With
# transactional producers, "stall-coordinator" holds the clients' open connections to
# a transaction coordinator: the requests on them arrive late, after the client asked
# again on new connections (KIP-890's late EndTxn); "stall-clients" every node's;
# "stall-end-txn" the connection that carries a client's next EndTxn to one.
SIMULATED = (
    "crash",
    "power-loss",
    "crash-lone-leader",
    "crash-follower-cut-off",
    "stall-coordinator",
    "stall-clients",
    "stall-end-txn",
)
# The subscribe workload's: its group's members (OS processes of their own), and the
# broker that coordinates the group (the leader of its `__consumer_offsets` partition).
MEMBER_FAULTS = ("kill-member", "pause-member")
GROUP_FAULTS = ("kill-coordinator", *MEMBER_FAULTS)
FAULTS = KILLS + PARTITIONS + GROUP_FAULTS


class Nemesis:
    def __init__(
        self,
        cluster: ClusterControl,
        history: History,
        *,
        faults: Sequence[str],
        rng: random.Random,
        topic: str,
        corrupt_on_restart: bool = False,
        network: LinkFaults | None = None,
        members: GroupMembers | None = None,
        transactional_ids: Sequence[str] = (),
    ) -> None:
        unknown = (
            set(faults) - set(FAULTS) - set(SIMULATED if hasattr(cluster, "power_loss") else ())
        )
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
        self.cluster = cluster
        self.history = history
        self.faults = list(faults)
        self.rng = rng
        self.topic = topic
        self.corrupt_on_restart = corrupt_on_restart
        self.network = network
        if network is None and set(faults) & set(PARTITIONS):
            raise ValueError("partition faults need the cluster routed through proxies")
        needs_group = set(faults) & set(MEMBER_FAULTS if transactional_ids else GROUP_FAULTS)
        if members is None and needs_group:
            raise ValueError("group faults need a consumer group (--workload subscribe)")
        self.members = members
        self.transactional_ids = list(transactional_ids)
        if {"stall-coordinator", "stall-end-txn"} & set(faults) and not transactional_ids:
            raise ValueError("stall faults of a coordinator need transactional producers")
        if "ring" in faults and len(cluster.configs) < 4:
            raise ValueError("the ring partition needs at least 4 nodes (use --nodes 5)")
        self.windows: list[tuple[int, str]] = []  # (start time ns, fault) for the checkers
        self.intervals: list[tuple[int, int, str]] = []  # (start, end, fault) for the plots

    async def run(self, *, interval_s: float, duration_s: float, until_s: float) -> None:
        """Alternate: quiet for `interval_s`, a fault for `duration_s`, heal; until `until_s`."""
        deadline = trio.current_time() + until_s
        while trio.current_time() + interval_s + duration_s < deadline:
            await trio.sleep(interval_s)
            fault = self.rng.choice(self.faults)
            await self.inject(fault, duration_s)

    async def inject(self, fault: str, duration_s: float) -> None:
        node = await self._target(fault)
        if node is None:
            return
        start = self.history.now()
        self.history.add("nemesis", INFO, fault, {"node": node, "phase": "start"})
        label = fault if fault in ("rolling-restart", "kill-all") else f"{fault} {node}"
        self.windows.append((start, label))
        if fault in PARTITIONS:
            await self._partition(fault, node, duration_s)
        elif fault in MEMBER_FAULTS:
            await self._member_fault(fault, node, duration_s)
        elif fault == "rolling-restart":
            await self._rolling_restart(duration_s)
        elif fault == "kill-all":
            # Every node at once (SIGKILL: what was written stays), then all restart:
            # every voter must come back with the election state it had.
            for each in sorted(self.cluster.configs):
                if self.cluster.is_running(each):
                    self.cluster.kill(each)
            await trio.sleep(duration_s)
            await self.cluster.start_all()
        elif fault == "crash":
            self.cluster.crash(node)  # type: ignore[attr-defined]
            await trio.sleep(duration_s)
            await self.cluster.start(node)
        elif fault == "crash-lone-leader":
            await self._crash_lone_leader(node, duration_s)
        elif fault == "crash-follower-cut-off":
            await self._crash_follower_cut_off(node, duration_s)
        elif fault == "stall-coordinator":
            stalled = self.cluster.stall_clients(node)  # type: ignore[attr-defined]
            self.history.add("nemesis", INFO, "stall", {"node": node, "connections": stalled})
            await trio.sleep(duration_s)
            self.cluster.release_stalls()  # type: ignore[attr-defined]
        elif fault == "stall-end-txn":
            self.cluster.stall_clients_at(node, END_TXN_KEY)  # type: ignore[attr-defined]
            await trio.sleep(duration_s)
            self.cluster.release_stalls()  # type: ignore[attr-defined]
        elif fault == "stall-clients":
            stalled = sum(
                self.cluster.stall_clients(each)  # type: ignore[attr-defined]
                for each in sorted(self.cluster.configs)
            )
            self.history.add("nemesis", INFO, "stall", {"node": "all", "connections": stalled})
            await trio.sleep(duration_s)
            self.cluster.release_stalls()  # type: ignore[attr-defined]
        elif fault == "power-loss":
            self.cluster.power_loss()  # type: ignore[attr-defined]
            await trio.sleep(duration_s)
            await self.cluster.start_all()
        elif fault in ("pause", "pause-controller"):
            self.cluster.pause(node)
            await trio.sleep(duration_s)
            self.cluster.resume(node)
        else:
            self.cluster.kill(node)
            await trio.sleep(duration_s)
            if self.corrupt_on_restart:
                damage = self.cluster.damage_segment(node, self.rng, self.topic)
                if damage is not None:
                    self.history.add("nemesis", INFO, "corrupt", damage)
            await self.cluster.start(node)
        self.history.add("nemesis", INFO, fault, {"node": node, "phase": "heal"})
        self.intervals.append((start, self.history.now(), label))

    async def _member_fault(self, fault: str, member: int, duration_s: float) -> None:
        assert self.members is not None
        if fault == "pause-member":
            self.members.pause_member(member)
            await trio.sleep(duration_s)
            self.members.resume_member(member)
        else:
            self.members.kill_member(member)
            await trio.sleep(duration_s)
            await self.members.start_member(member)

    async def _crash_lone_leader(self, leader: int, duration_s: float) -> None:
        """KIP-966's case: the followers of `leader` die one after another (the ISR shrinks
        below its minimum: the last to leave is an eligible leader replica, holding what
        was acknowledged), then the lone leader crashes, losing its unsynced tail, and
        comes back before them. It must not lead again with its shortened log."""
        followers = [n for n in sorted(self.cluster.configs) if n != leader]
        session_s = self._session_timeout_s()
        for follower in followers:
            self.cluster.kill(follower)
            await trio.sleep(session_s * 1.5)  # fenced: out of the ISR
        self.cluster.crash(leader)  # type: ignore[attr-defined]
        await trio.sleep(duration_s)
        await self.cluster.start(leader)
        await trio.sleep(duration_s)
        for follower in followers:
            await self.cluster.start(follower)

    async def _crash_follower_cut_off(self, leader: int, duration_s: float) -> None:
        """KIP-903's case: one follower of `leader` is killed (the ISR is at its
        minimum), then the other crashes, losing its unsynced tail, and comes back cut
        off from the leader. Its removal leaves the ISR below the minimum, so the
        high-water mark stands at what the leader last saw it fetch: the leader's view
        of the old incarnation says "caught up", and it asks to add the new one (with
        its shortened log) back. That AlterPartition names the old broker epoch and must
        be refused; the leader is then killed, and a replica that lost acknowledged
        records must not take over."""
        assert self.network is not None
        controller = await self._active_controller()
        replicas = await self._replicas_of(0)
        if controller is None or controller in replicas or len(replicas) != 3:
            return  # the returning follower must reach a controller none of this disturbs
        session_s = self._session_timeout_s()
        first, second = [n for n in replicas if n != leader]
        self.cluster.kill(first)
        await trio.sleep(session_s * 1.5)  # fenced: the ISR is the leader and `second`
        self.network.cut_links({(second, leader), (leader, second)})
        self.cluster.crash(second)  # type: ignore[attr-defined]
        await self.cluster.start(second)  # a new incarnation, unclean: out of the ISR
        await trio.sleep(duration_s)  # the leader's view of it is the old one
        self.cluster.kill(leader)
        await trio.sleep(session_s * 1.5)  # fenced: who leads now?
        self.network.heal()
        await self.cluster.start(first)
        await self.cluster.start(leader)

    def _session_timeout_s(self) -> float:
        config = next(iter(self.cluster.configs.values()))
        return config.broker_session_timeout_ms / 1000

    async def _partition(self, fault: str, node: int, duration_s: float) -> None:
        assert self.network is not None
        nodes = sorted(self.cluster.configs)
        others = [n for n in nodes if n != node]
        if fault == "halves":
            shuffled = list(nodes)
            self.rng.shuffle(shuffled)
            half = shuffled[: len(shuffled) // 2]
            rest = [n for n in nodes if n not in half]
            self.network.split(half, rest)
            detail = {"sides": [sorted(half), sorted(rest)]}
        elif fault == "ring":
            self.network.ring(nodes)
            detail = {"ring": nodes}
        elif fault == "bridge":
            shuffled = list(nodes)
            self.rng.shuffle(shuffled)
            self.network.bridge(shuffled)
            middle = len(shuffled) // 2
            detail = {
                "sides": [sorted(shuffled[:middle]), sorted(shuffled[middle + 1 :])],
                "bridge": shuffled[middle],
            }
        else:
            self.network.isolate(node, others)
            detail = {"isolated": node}
        self.history.add("nemesis", INFO, "partition", detail)
        await trio.sleep(duration_s)
        self.network.heal()

    async def _rolling_restart(self, pause_s: float) -> None:
        """Each node in turn: a graceful stop (SIGTERM), a restart, ready again; as an
        operator upgrading the cluster would, with `pause_s` spread between nodes."""
        nodes = sorted(self.cluster.configs)
        for node in nodes:
            self.history.add("nemesis", INFO, "restart", {"node": node})
            await self.cluster.stop(node)
            await self.cluster.start(node)
            await trio.sleep(pause_s / len(nodes))

    async def _target(self, fault: str) -> int | None:
        if fault in MEMBER_FAULTS:
            assert self.members is not None
            return self.rng.choice(self.members.member_ids())
        if fault in ("kill-coordinator", "stall-coordinator", "stall-end-txn"):
            return await self._coordinator()
        running = [n for n in sorted(self.cluster.configs) if self.cluster.is_running(n)]
        if fault in ("kill-controller", "pause-controller", "isolate-controller"):
            return await self._active_controller()
        if fault in (
            "kill-leader",
            "isolate-leader",
            "crash-lone-leader",
            "crash-follower-cut-off",
        ):
            return await self._leader_of(0)
        # Otherwise one node (kill-all takes the others with it).
        return self.rng.choice(running) if running else None

    async def _ask_any(self, api_key: ApiKey, body: Any) -> Any:
        for node in self.cluster.broker_ids:
            if self.cluster.is_running(node):
                try:
                    return await self.cluster.request(node, api_key, body, timeout_s=2)
                except KafkaError:
                    continue
        return None

    async def _active_controller(self) -> int | None:
        answer = await self._ask_any(ApiKey.DESCRIBE_QUORUM, {})
        leader = answer.get("leader_id", -1) if answer else -1
        return leader if leader in self.cluster.configs else None

    async def _coordinator(self) -> int | None:
        """The broker leading the group's `__consumer_offsets` partition, or a random
        transactional id's `__transaction_state` partition (Kafka's rule)."""
        if self.members is not None:
            topic, key = OFFSETS_TOPIC, self.members.group
        else:
            assert self.transactional_ids
            topic, key = TRANSACTION_STATE_TOPIC, self.rng.choice(self.transactional_ids)
        answer = await self._ask_any(ApiKey.METADATA, {"topics": [topic]})
        parts = answer["topics"][0]["partitions"] if answer and answer["topics"] else []
        if not parts:
            return None
        wanted = partition_for(key, len(parts))
        for part in parts:
            if part["partition"] == wanted and part["leader"] in self.cluster.configs:
                return int(part["leader"])
        return None

    async def _replicas_of(self, partition: int) -> list[int]:
        answer = await self._ask_any(ApiKey.METADATA, {"topics": [self.topic]})
        for part in answer["topics"][0]["partitions"] if answer else ():
            if part["partition"] == partition:
                return [int(r) for r in part["replicas"]]
        return []

    async def _leader_of(self, partition: int) -> int | None:
        answer = await self._ask_any(ApiKey.METADATA, {"topics": [self.topic]})
        if not answer:
            return None
        for part in answer["topics"][0]["partitions"]:
            if part["partition"] == partition and part["leader"] in self.cluster.configs:
                return int(part["leader"])
        return None
