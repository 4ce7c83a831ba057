"""One run: cluster up, workload + nemesis + observer for a while, heal, final read, check.

Everything a person needs to study the run lands in its directory:

    <out>/history.jsonl   every operation and cluster event
    <out>/summary.txt     the verdict, counts, examples, unavailability windows
    <out>/timeline.png    throughput, latency and the controller timeline (with matplotlib)
    <out>/cluster/        each node's data directory, config and log (node-N.log)
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from typing import Any

import attrs
import trio

from broker.cluster_plan import plan_cluster
from client.admin import Admin, NewTopic
from client.protocol.errors import KafkaError
from jepsen_like.checkers import (
    ANOMALIES,
    Finding,
    Verdict,
    availability,
    check_cluster,
    check_metadata,
    check_queue,
)
from jepsen_like.cluster_control import ClusterControl
from jepsen_like.confluent_workload import ConfluentQueueWorkload
from jepsen_like.group_checkers import check_subscribe, rebalance_windows
from jepsen_like.history import History
from jepsen_like.metadata_workload import MetadataWorkload
from jepsen_like.nemesis import Nemesis
from jepsen_like.processes import ProcessCluster
from jepsen_like.proxy import LinkFaults, Network, route_through_proxies
from jepsen_like.pykraft_txn_workload import PykraftTxnWorkload
from jepsen_like.report import REBALANCE_LABEL, write_report
from jepsen_like.subscribe_workload import SubscribeWorkload
from jepsen_like.txn_checkers import TXN_EXTRA_ANOMALIES, check_txn
from jepsen_like.txn_workload import TxnWorkload
from jepsen_like.workload import ClusterObserver, QueueWorkload

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 30.0  # after the heal: every partition's ISR whole again, with a leader

TOPIC = "jepsen"
# Faster than Kafka's defaults so a short run sees several faults heal.
CLUSTER_SETTINGS = {
    "election_timeout_ms": 500,
    "fetch_timeout_ms": 1000,
    "request_timeout_ms": 1000,
    "broker_session_timeout_ms": 2000,
    "broker_heartbeat_interval_ms": 250,
    "replica_lag_time_max_ms": 5000,
}


@attrs.frozen(kw_only=True)
class RunConfig:
    out: str
    nodes: int = 3  # combined controller+broker nodes
    controllers: int = 0  # or, with brokers, separate roles
    brokers: int = 0
    # or "metadata", or "subscribe" (a consumer group reads), or "txn" (transactions
    # and read_committed readers, through `client`'s client)
    workload: str = "queue"
    faults: tuple[str, ...] = ("kill",)
    time_s: float = 20.0
    rate: float = 200.0
    producers: int = 4
    partitions: int = 3
    seed: int = 0
    interval_s: float = 3.0
    fault_duration_s: float = 3.0
    acks: int = -1
    min_insync_replicas: int = 2
    unclean_leader_election: bool = False
    # More settings of the workload's topic, e.g. (("flush.messages", "1"),).
    topic_configs: tuple[tuple[str, str], ...] = ()
    # Whose client the queue and txn workloads use: "pykraft" (its own) or
    # "confluent-kafka" (librdkafka; real runs only).
    client: str = "pykraft"
    # The confluent-kafka queue's producers idempotent (5 in flight, retries): then a
    # duplicate is an anomaly.
    idempotent: bool = False
    txn_abort_probability: float = 0.2  # the txn workload's share of transactions aborted
    members: int = 3  # the subscribe workload's group members (OS processes)
    # A bug from the planted-bug library, planted in every node (real processes only).
    planted_bug: str | None = None
    corrupt_on_restart: bool = False
    scripted: tuple[str, ...] = ()  # run these faults in order instead of a random schedule
    report: bool = True  # summary.txt, stats.json and the plot in `out`
    # Whether a cluster that does not converge after the heal (an ISR still short, a
    # partition leaderless, SETTLE_TIMEOUT_S on) fails the run. The simulator says yes:
    # its time is exact. Real processes on a slow machine may just be slow.
    convergence_required: bool = False
    settle_timeout_s: float = SETTLE_TIMEOUT_S


@attrs.define
class ListedVerdict(Verdict):
    """A verdict that names its own anomalies: properties `checkers.ANOMALIES` does
    not list (checked only here, or only in the simulator)."""

    anomalies: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        mine = all(f.count == 0 for name, f in self.findings.items() if name in self.anomalies)
        return mine and super().valid

    def summary(self) -> str:
        text = super().summary()
        for name in self.anomalies:
            text = text.replace(f"{name} (not an anomaly):", f"{name}:")
        return text


@attrs.frozen(kw_only=True)
class RunResult:
    valid: bool
    summary: str
    stats: dict[str, Any]
    windows: list[dict[str, Any]]
    out: str
    first_violation: str | None = None  # "<anomaly>: <an example>"


async def run(config: RunConfig) -> RunResult:
    os.makedirs(config.out, exist_ok=True)
    rng = random.Random(config.seed)
    with open(os.path.join(config.out, "history.jsonl"), "w", encoding="utf-8") as sink:
        history = History(sink)
        root = os.path.join(config.out, "cluster")
        shutil.rmtree(root, ignore_errors=True)  # a run always starts from empty disks
        if config.controllers and config.brokers:
            plan = plan_cluster(
                root, controllers=config.controllers, brokers=config.brokers, **CLUSTER_SETTINGS
            )
        else:
            plan = plan_cluster(root, combined=config.nodes, **CLUSTER_SETTINGS)
        configs, links = route_through_proxies(plan)
        network = Network(links)
        async with trio.open_nursery() as proxies:
            await network.start(proxies)
            with ProcessCluster(root, configs, planted_bug=config.planted_bug) as cluster:
                result = await drive(config, rng, history, cluster, network)
            proxies.cancel_scope.cancel()
    return result


async def drive(
    config: RunConfig,
    rng: random.Random,
    history: History,
    cluster: ClusterControl,
    network: LinkFaults,
    *,
    more_checks: Callable[[], Verdict] | None = None,
) -> RunResult:
    """Start the cluster; workload, nemesis and observer; heal; final read; check; report.
    Shared by real runs and the simulator."""
    await cluster.start_all()
    bootstrap = cluster.bootstrap_servers()
    settings = {"min.insync.replicas": str(config.min_insync_replicas)}
    if config.unclean_leader_election:
        settings["unclean.leader.election.enable"] = "true"
    settings.update(config.topic_configs)
    replication_factor = min(3, len(cluster.broker_ids))
    async with Admin(bootstrap) as admin:
        await admin.create_topics(
            [NewTopic(TOPIC, config.partitions, replication_factor, settings)]
        )
    workload: QueueWorkload | MetadataWorkload | TxnWorkload | PykraftTxnWorkload
    members: SubscribeWorkload | None = None
    transactions: TxnWorkload | PykraftTxnWorkload | None = None
    if config.workload == "txn":
        txn_workload = TxnWorkload if config.client == "confluent-kafka" else PykraftTxnWorkload
        workload = transactions = txn_workload(
            bootstrap,
            history,
            topic=TOPIC,
            partitions=config.partitions,
            producers=config.producers,
            rate=config.rate,
            rng=random.Random(rng.random()),
            abort_probability=config.txn_abort_probability,
        )
    elif config.workload == "subscribe":
        workload = members = SubscribeWorkload(
            bootstrap,
            history,
            members=config.members,
            topic=TOPIC,
            partitions=config.partitions,
            producers=config.producers,
            rate=config.rate,
            rng=random.Random(rng.random()),
            acks=config.acks,
        )
    elif config.workload == "metadata":
        workload = MetadataWorkload(
            cluster,
            history,
            processes=2,
            rate=min(config.rate, 10.0),
            rng=random.Random(rng.random()),
            replication_factor=replication_factor,
        )
    elif config.client == "confluent-kafka":
        workload = ConfluentQueueWorkload(
            bootstrap,
            history,
            topic=TOPIC,
            partitions=config.partitions,
            producers=config.producers,
            rate=config.rate,
            rng=random.Random(rng.random()),
            acks=config.acks,
            idempotent=config.idempotent,
        )
    else:
        assert not config.idempotent, "--idempotent is the confluent-kafka queue's"
        workload = QueueWorkload(
            bootstrap,
            history,
            topic=TOPIC,
            partitions=config.partitions,
            producers=config.producers,
            rate=config.rate,
            rng=random.Random(rng.random()),
            acks=config.acks,
        )
    nemesis = Nemesis(
        cluster,
        history,
        faults=config.faults or ("kill",),
        rng=random.Random(rng.random()),
        topic=TOPIC,
        corrupt_on_restart=config.corrupt_on_restart,
        network=network,
        members=members,
        transactional_ids=transactions.transactional_ids() if transactions else (),
    )
    observer = ClusterObserver(cluster, history, topic=TOPIC)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(observer.run)
        if members is not None:
            await nursery.start(members.run_members)
        async with trio.open_nursery() as active:
            active.start_soon(workload.run, config.time_s)
            if config.scripted:
                active.start_soon(_scripted, nemesis, config)
            elif config.faults:
                active.start_soon(
                    lambda: nemesis.run(
                        interval_s=config.interval_s,
                        duration_s=config.fault_duration_s,
                        until_s=config.time_s,
                    )
                )
        settle_s = await _heal_and_settle(cluster, bootstrap, config.settle_timeout_s)
        await workload.final_read()
        await observer.observe()
        nursery.cancel_scope.cancel()
    ops = history.ops
    queue = _workload_verdict(config, ops)
    cluster_verdict = check_cluster(ops)
    verdicts = {
        config.workload: queue,
        **({"group": check_subscribe(ops, partitions=config.partitions)} if members else {}),
        "cluster": cluster_verdict,
        "recovery": _recovery_verdict(settle_s, config),
    }
    if more_checks is not None:
        verdicts["invariants"] = more_checks()
    avail = availability(ops, nemesis.windows)
    valid = all(v.valid for v in verdicts.values())
    summary = "\n".join(
        [
            f"verdict: {'VALID' if valid else 'INVALID'}",
            f"faults: {', '.join(config.scripted or config.faults) or 'none'}; seed {config.seed}",
            "",
            *[f"{name}:\n{verdict.summary()}\n" for name, verdict in verdicts.items()],
            "unavailability after each fault (fault start to the first acknowledged send begun after it):",
            *[_window_line(w) for w in avail["windows"]],
        ]
    )
    findings = {name: f for verdict in verdicts.values() for name, f in verdict.findings.items()}
    if config.report:
        intervals = list(nemesis.intervals)
        if members is not None:
            intervals += [
                (w["start"], w["end"], f"{REBALANCE_LABEL} to g{w['to_generation']}")
                for w in rebalance_windows(ops, config.partitions)
            ]
        write_report(config.out, ops, intervals, summary, avail)
        with open(os.path.join(config.out, "stats.json"), "w", encoding="utf-8") as file:
            json.dump(
                {
                    "valid": valid,
                    **queue.stats,
                    "windows": avail["windows"],
                    **{name: f.count for name, f in findings.items()},
                },
                file,
                indent=2,
            )
    first = next(
        (
            f"{name}: {f.examples[0] if f.examples else ''}"
            for verdict in verdicts.values()
            for name, f in verdict.findings.items()
            if f.count and (name in ANOMALIES or name in getattr(verdict, "anomalies", ()))
        ),
        None,
    )
    return RunResult(
        valid=valid,
        summary=summary,
        stats={**queue.stats, **{n: f.count for n, f in findings.items()}},
        windows=avail["windows"],
        out=config.out,
        first_violation=first,
    )


def _workload_verdict(config: RunConfig, ops: list[Any]) -> Verdict:
    if config.workload == "metadata":
        return check_metadata(ops)
    if config.workload == "txn":
        txn = check_txn(ops)
        return ListedVerdict(findings=txn.findings, stats=txn.stats, anomalies=TXN_EXTRA_ANOMALIES)
    queue = check_queue(ops)
    if config.idempotent:  # every retry is the producer's own: none may write twice
        return ListedVerdict(findings=queue.findings, stats=queue.stats, anomalies=("duplicated",))
    return queue


def _window_line(window: dict[str, Any]) -> str:
    head = f"  {window['at_s']:>6.1f}s  {window['fault']:<22} "
    if window["window_ms"] is None:
        return head + "no send after it"
    partitions = ", ".join(f"p{p} {ms}" for p, ms in window["per_partition_ms"].items())
    return head + f"{window['window_ms']} ms (per partition, ms: {partitions})"


async def _scripted(nemesis: Nemesis, config: RunConfig) -> None:
    for fault in config.scripted:
        await trio.sleep(config.interval_s)
        await nemesis.inject(fault, config.fault_duration_s)


def _recovery_verdict(settle_s: float | None, config: RunConfig) -> ListedVerdict:
    finding = Finding("no-convergence")
    if settle_s is None:
        finding.add(
            f"an ISR still short or a partition leaderless {config.settle_timeout_s:g} s "
            "after the heal"
        )
    return ListedVerdict(
        findings={finding.name: finding},
        stats={"settle-s": None if settle_s is None else round(settle_s, 3)},
        anomalies=(finding.name,) if config.convergence_required else (),
    )


async def _heal_and_settle(
    cluster: ClusterControl, bootstrap: str, timeout_s: float
) -> float | None:
    """Every node back, every partition's ISR full again: how long it took (None: not
    within `timeout_s`)."""
    for node in sorted(cluster.configs):
        if not cluster.is_running(node):
            await cluster.start(node)
    started = trio.current_time()
    with trio.move_on_after(timeout_s):
        async with Admin(bootstrap) as admin:
            while True:
                try:
                    topic = (await admin.describe_topics([TOPIC]))[0]
                    if all(
                        len(p.isr) == len(p.replicas) and p.leader >= 0 for p in topic.partitions
                    ):
                        return trio.current_time() - started
                except KafkaError:
                    pass
                await trio.sleep(0.2)
    return None
