"""Named fault schedules for the simulator: the default mix, and targeted ones.

A targeted scenario picks faults, their timing and cluster settings that provoke one
kind of failure often, so that a planted bug of that kind is found within a few seeds
(`jepsen_like/sim/planted.py` names each bug's scenario) and the real code is shown
to pass the same schedule. `jepsen-like sim --scenario NAME` runs one.
"""

from __future__ import annotations

from typing import Any

import attrs

from jepsen_like.sim.runner import LOSSY_FAULTS, SIM_FAULTS, TXN_FAULTS, SimConfig


@attrs.frozen(kw_only=True)
class Scenario:
    name: str
    about: str
    faults: tuple[str, ...]
    time_s: float = 10.0
    interval_s: float = 2.0
    fault_duration_s: float = 2.0
    rate: float = 100.0
    nodes: int = 3
    settings: tuple[tuple[str, int], ...] = ()  # over run.CLUSTER_SETTINGS
    topic_configs: tuple[tuple[str, str], ...] = ()  # of the workload's topic
    workload: str = "queue"  # or "txn": pykraft's transactional producers
    partitions: int = 2
    producers: int = 3

    def config(self, seed: int, **more: Any) -> SimConfig:
        """The SimConfig of one seed of this scenario (`more` overrides any field)."""
        fields: dict[str, Any] = {
            "faults": self.faults,
            "time_s": self.time_s,
            "interval_s": self.interval_s,
            "fault_duration_s": self.fault_duration_s,
            "rate": self.rate,
            "settings": self.settings,
            "topic_configs": self.topic_configs,
            "nodes": self.nodes,
            "workload": self.workload,
            "partitions": self.partitions,
            "producers": self.producers,
        }
        fields.update(more)
        return SimConfig(seed=seed, **fields)


# Kafka's 50 partitions of __consumer_offsets and __transaction_state, replicated on
# three simulated nodes, would cost more than the workload.
FEW_INTERNAL_PARTITIONS = (
    ("offsets_topic_num_partitions", 5),
    ("transaction_state_num_partitions", 5),
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="mixed",
            about="the default: one fault of the mix every 2 s, for 2 s",
            faults=SIM_FAULTS,
        ),
        Scenario(
            name="leader-isolations",
            about="partition leaders cut off from their followers (clients still reach "
            "them: every write they take is a tail the next leader's log diverges "
            "from) for longer than a broker session, or killed",
            faults=("isolate-leader", "kill-leader"),
            time_s=12.0,
            interval_s=1.0,
            fault_duration_s=3.0,
        ),
        Scenario(
            name="election-kills",
            about="the active controller, or every node at once, killed and restarted "
            "every second, with short election timeouts: elections follow restarts "
            "closely, and a voter that forgot an epoch it voted in meets it again",
            faults=("kill-all", "kill-controller"),
            interval_s=1.0,
            fault_duration_s=0.5,
            settings=(("election_timeout_ms", 150),),
        ),
        Scenario(
            name="controller-cut-off",
            about="the active controller paused or isolated for twice the check-quorum "
            "bound (1.5 fetch timeouts): it must resign in time",
            faults=("isolate-controller", "pause-controller"),
            interval_s=1.5,
            fault_duration_s=3.0,
        ),
        Scenario(
            name="crashes",
            about="one machine at a time loses its unsynced writes (and maybe tears its "
            "last one), or a partition leader is killed, every second: crashed replicas "
            "come back with shorter logs while the others still count on theirs",
            faults=("crash", "kill-leader"),
            interval_s=1.0,
            fault_duration_s=1.0,
        ),
        Scenario(
            name="lone-leader-crashes",
            about="KIP-966's case, on purpose: partition 0's followers die one by one "
            "(the last is an eligible leader replica), then its lone leader crashes and "
            "returns first, with a shorter log",
            faults=("crash-lone-leader",),
            time_s=12.0,
            interval_s=0.5,
            fault_duration_s=1.0,
        ),
        Scenario(
            name="cut-off-follower-crashes",
            about="KIP-903's case, on purpose: a follower of partition 0 crashes and "
            "comes back cut off from its leader, which is then killed",
            faults=("crash-follower-cut-off",),
            nodes=5,  # a controller outside partition 0's three replicas
            time_s=20.0,
            interval_s=0.5,
            fault_duration_s=1.0,
        ),
        Scenario(
            name="transactions",
            about="pykraft's transactional producers (consume-transform-produce offsets, "
            "commits and aborts over 2-3 partitions) and a read_committed reader, while "
            "transaction coordinators and partition leaders are killed, nodes paused, and "
            "the clients' connections to a coordinator stall longer than a request "
            "timeout: the requests on them arrive after the client asked again, and "
            "after the next transaction began (KIP-890's late EndTxn)",
            faults=TXN_FAULTS,
            workload="txn",
            partitions=3,
            time_s=16.0,
            interval_s=1.5,
            fault_duration_s=2.5,
            rate=30.0,
            settings=FEW_INTERNAL_PARTITIONS,
        ),
        Scenario(
            name="late-end-txn",
            about="KIP-890 part 2's case, on purpose: transactions back to back while "
            "the connection that carries a client's next EndTxn to a coordinator stalls "
            "for 1.5 request timeouts, again and again. The client asks again on a new "
            "connection, succeeds, and begins its next transaction; the held EndTxn "
            "arrives in the middle of it",
            faults=("stall-end-txn",),
            workload="txn",
            partitions=3,
            time_s=12.0,
            interval_s=0.3,
            fault_duration_s=1.5,
            rate=90.0,
            settings=FEW_INTERNAL_PARTITIONS,
        ),
        Scenario(
            name="power-losses",
            about="every machine loses its unsynced writes at once, or one does (lossy "
            "by design without flush.messages: it shows that risk)",
            faults=(*LOSSY_FAULTS, "crash"),
        ),
        Scenario(
            name="power-losses-flushed",
            about="power-losses, with the topic's flush.messages=1: every acknowledged "
            "write is on the disk of every ISR member, so nothing acknowledged is lost",
            faults=(*LOSSY_FAULTS, "crash"),
            topic_configs=(("flush.messages", "1"),),
        ),
    )
}
