"""One simulated run: a seed in, a history and a verdict out.

The whole cluster (`SimCluster`), the workload, the nemesis and the checkers of a
real run (`jepsen_like.run.drive`, the same code) run in one trio run under a
simulated clock (`JumpingClock`, trio's autojumping `MockClock` made cheaper):
simulated time passes only when every task waits, jumping to the next deadline. Every random choice comes
from generators seeded from the one seed: the network's latencies, each node's
timeouts and ids, the workload, the fault schedule. trio's own scheduler shuffles
runnable tasks with a module-level generator; the runner seeds it and turns on its
deterministic mode (the one its Hypothesis integration uses), so a seed replays
the same history, byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from broker.cluster_plan import plan_cluster
from client.protocol import environment
from jepsen_like.checkers import Finding
from jepsen_like.history import History
from jepsen_like.run import CLUSTER_SETTINGS, TOPIC, RunConfig, RunResult, drive
from jepsen_like.sim import hostile
from jepsen_like.sim.cluster import HARNESS, SimCluster
from jepsen_like.sim.hostile import HostileRequest
from jepsen_like.sim.invariants import CHECK_INTERVAL_S, InvariantChecker, InvariantVerdict
from jepsen_like.sim.network import SimNetwork
from jepsen_like.sim.planted import planted

FIRST_PORT = 19_000
HOSTILE_START_S = 2.0
SIM_FAULTS = (
    "kill",
    "crash",
    "pause",
    "kill-controller",
    "pause-controller",
    "kill-leader",
    "isolate",
    "halves",
    "isolate-controller",
    "isolate-leader",
)
# A fault that loses every machine's unsynced writes at once: pykraft, like Kafka by
# default, does not fsync data batches (durability comes from replication), so it may
# lose acknowledged writes unless the topic has flush.messages=1 (scenario
# power-losses-flushed). Not in the default mix. One machine's crash is (`crash`): a
# replica that lost its tail stays out of ISRs and ELRs until it caught up (KIP-966).
LOSSY_FAULTS = ("power-loss",)
# The transactional workload's mix (scenario "transactions"): stall-coordinator needs
# its transactional ids. stall-end-txn is the targeted scenario late-end-txn's.
TXN_FAULTS = (
    "stall-coordinator",
    "stall-clients",
    "kill-coordinator",
    "kill-leader",
    "pause",
    "kill",
)
# Sequences for targeted scenarios (jepsen_like/sim/scenarios.py), not the default mix.
TARGETED_FAULTS = ("kill-all", "crash-lone-leader", "crash-follower-cut-off")
# Nothing in a simulation waits on a file descriptor, yet trio polls epoll (a system
# call) on every pass of its run loop, a fifth of a run's time. The run's own I/O
# manager really polls once in this many passes: often enough for Ctrl-C (trio
# delivers it through its wake-up socket), never for anything the run depends on.
REAL_POLL_EVERY_PASSES = 64
DEADLOCK_POLL_S = 0.05
# The real code's ISRs are whole again within ~1 simulated s of the heal (seeds 0-5 of
# every scenario); ten is a bug, and a failing seed need not wait out thirty.
SETTLE_TIMEOUT_S = 10.0


@attrs.frozen(kw_only=True)
class SimConfig:
    seed: int
    nodes: int = 3
    faults: tuple[str, ...] = SIM_FAULTS
    time_s: float = 20.0  # simulated seconds of workload
    rate: float = 100.0
    producers: int = 3
    partitions: int = 2
    interval_s: float = 2.0
    fault_duration_s: float = 2.0
    workload: str = "queue"
    scripted: tuple[str, ...] = ()
    out: str | None = None  # a directory: the history and the full report go there
    planted_bug: str | None = None  # see jepsen_like/sim/planted.py
    # Cluster settings over run.CLUSTER_SETTINGS, e.g. (("election_timeout_ms", 150),).
    settings: tuple[tuple[str, int], ...] = ()
    # More settings of the workload's topic, e.g. (("flush.messages", "1"),).
    topic_configs: tuple[tuple[str, str], ...] = ()
    # Sent to the nodes' listeners while the workload runs (jepsen_like/sim/hostile.py).
    hostile: tuple[HostileRequest, ...] = ()


@attrs.frozen(kw_only=True)
class SimResult:
    seed: int
    valid: bool
    first_violation: str | None
    digest: str  # of the history: equal seeds, equal digests
    simulated_s: float
    ops: int
    summary: str


def simulate(config: SimConfig) -> SimResult:
    """Run one seed (synchronously: it owns its trio run)."""
    scheduler: Any = trio._core._run  # the hook its Hypothesis plugin uses
    scheduler._ALLOW_DETERMINISTIC_SCHEDULING = True
    scheduler._r.seed(config.seed)
    clock = JumpingClock()
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with planted(config.planted_bug), _rare_idle_polls():
            return trio.run(_simulate, config, clock=clock)
    finally:
        quiet.setLevel(level)


class JumpingClock(trio.abc.Clock):
    """Simulated time, as `MockClock(autojump_threshold=0)` keeps it, for one pass of
    trio's run loop less per wake-up.

    trio asks its clock how long to sleep only when no task can run. The autojump
    clock answers "forever", trio polls, finds nothing, jumps the clock to the next
    deadline and wakes that deadline's tasks on the next pass. This clock jumps as it
    is asked: nothing can happen before the next deadline, so time goes there and its
    tasks run in the same pass. The same times, half the passes. Time moves only by
    these jumps. (It would skip `trio.testing.wait_all_tasks_blocked`, which nothing
    in a simulation uses.)
    """

    def __init__(self) -> None:
        self.now_s = 0.0
        self._watcher: Callable[[], None] | None = None
        self._watch_every_s = math.inf
        self._watch_due_s = math.inf

    def watch(self, every_s: float, callback: Callable[[], None]) -> None:
        """Call `callback` between events (no task runs) before time moves past each
        point `every_s` after the previous call: it sees every state that lasts that
        long, without a task of its own to wake up."""
        self._watcher, self._watch_every_s = callback, every_s
        self._watch_due_s = self.now_s

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.now_s

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if deadline == math.inf:
            # Every task waits, and on nothing with a deadline: a deadlock, unless
            # something arrives from outside (Ctrl-C). Poll for it, politely.
            return DEADLOCK_POLL_S
        if deadline >= self._watch_due_s and self._watcher is not None:
            self._watch_due_s = self.now_s + self._watch_every_s
            self._watcher()
        self.now_s = max(self.now_s, deadline)
        return 0.0


_polling: dict[str, Any] = {"manager": None}  # the simulation's trio I/O manager


@contextlib.contextmanager
def _rare_idle_polls() -> Iterator[None]:
    """While a simulation runs, its I/O manager skips most zero-timeout polls (with a
    JumpingClock every poll has timeout 0); any other trio run in the process is
    untouched."""
    manager_class: Any = trio._core._run.TheIOManager
    real = manager_class.get_events
    skipped = 0

    def get_events(self: Any, timeout: float) -> Any:
        nonlocal skipped
        if self is _polling["manager"] and timeout <= 0 and skipped < REAL_POLL_EVERY_PASSES:
            skipped += 1
            return []  # "nothing happened", as a poll that timed out says
        skipped = 0
        return real(self, timeout)

    manager_class.get_events = get_events
    try:
        yield
    finally:
        manager_class.get_events = real
        _polling["manager"] = None


async def _simulate(config: SimConfig) -> SimResult:
    _polling["manager"] = trio._core._run.GLOBAL_RUN_CONTEXT.runner.io_manager
    rng = random.Random(config.seed)
    started = trio.current_time()
    sink = None
    if config.out:
        os.makedirs(config.out, exist_ok=True)
        sink = open(os.path.join(config.out, "history.jsonl"), "w", encoding="utf-8")  # noqa: SIM115
    history = History(sink, clock=lambda: int(trio.current_time() * 1e9))
    network = SimNetwork(random.Random(rng.getrandbits(64)))
    settings = {**CLUSTER_SETTINGS, **dict(config.settings)}
    configs = plan_cluster("/sim", combined=config.nodes, first_port=FIRST_PORT, **settings)
    run_config = RunConfig(
        out=config.out or "",
        nodes=config.nodes,
        faults=config.faults,
        time_s=config.time_s,
        rate=config.rate,
        producers=config.producers,
        partitions=config.partitions,
        seed=config.seed,
        interval_s=config.interval_s,
        fault_duration_s=config.fault_duration_s,
        workload=config.workload,
        scripted=config.scripted,
        topic_configs=config.topic_configs,
        report=config.out is not None,
        convergence_required=True,  # simulated time is exact: not converging is a bug
        settle_timeout_s=SETTLE_TIMEOUT_S,
    )
    try:
        async with trio.open_nursery() as nursery:
            harness = network.environment(HARNESS, random.Random(rng.getrandbits(64)))
            cluster = SimCluster(
                configs,
                network=network,
                rng=random.Random(rng.getrandbits(64)),
                cluster_id=f"sim{config.seed:019d}"[-22:],
                nursery=nursery,
                harness=harness,
            )
            checker = InvariantChecker(cluster)
            clock = trio.lowlevel.current_clock()
            assert isinstance(clock, JumpingClock)
            clock.watch(CHECK_INTERVAL_S, checker.check_now)
            with environment.using(harness):
                if config.hostile:
                    nursery.start_soon(_hostile_peer, cluster, config.hostile)
                try:
                    result = await drive(
                        run_config,
                        random.Random(rng.getrandbits(64)),
                        history,
                        cluster,
                        network,
                        more_checks=checker.verdict,
                    )
                except Exception as error:  # the run could not finish: that is a finding
                    result = _failed_run(error, checker, config)
                    if config.out:  # drive wrote no report: at least the verdict
                        with open(
                            os.path.join(config.out, "summary.txt"), "w", encoding="utf-8"
                        ) as file:
                            file.write(result.summary + "\n")
            nursery.cancel_scope.cancel()
    finally:
        if sink is not None:
            sink.close()
    encoded = "\n".join(json.dumps(op, sort_keys=True) for op in history.ops)
    return SimResult(
        seed=config.seed,
        valid=result.valid,
        first_violation=result.first_violation,
        digest=hashlib.sha256(encoded.encode()).hexdigest(),
        simulated_s=trio.current_time() - started,
        ops=len(history.ops),
        summary=result.summary,
    )


async def _hostile_peer(cluster: SimCluster, requests: tuple[HostileRequest, ...]) -> None:
    # After the cluster is up and the workload's topic exists.
    await trio.sleep(HOSTILE_START_S)
    await hostile.send_all(cluster, requests, topic=TOPIC)


def _failed_run(error: Exception, checker: InvariantChecker, config: SimConfig) -> RunResult:
    failed = Finding("run-failed")
    for leaf in _leaves(error):
        failed.add(f"{type(leaf).__name__}: {leaf} ({_where(leaf)})")
    invariants = checker.verdict()
    verdict = InvariantVerdict(
        findings={**invariants.findings, "run-failed": failed}, stats=invariants.stats
    )
    first = next(
        (f"{name}: {f.examples[0]}" for name, f in verdict.findings.items() if f.count), None
    )
    return RunResult(
        valid=False,
        summary=f"verdict: INVALID (the run did not finish)\n{verdict.summary()}",
        stats={},
        windows=[],
        out=config.out or "",
        first_violation=first,
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in frames[-3:][::-1])
