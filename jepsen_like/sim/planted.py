"""The planted-bug library: known failures re-created on purpose, to show the simulator
finds them (test-only switches, `jepsen-like sim --planted NAME`).

Each bug swaps production functions for wrong ones, only inside the block that asks
for it; the production code carries no flag. Each names the failure it re-creates,
the finding that shows it, and its targeted schedule: a scenario
(`jepsen_like/sim/scenarios.py`) whose faults and settings provoke it, so it is found
within a few seeds. `PLANTED_BUGS` lists those built; an entry without patches is a
hook for a bug whose production code is still being written (`pending` says what it
waits for): listed, refused when asked for.

    jepsen-like sim --planted list
    jepsen-like sim --planted unpersisted-vote --seeds 20
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import attrs

# (owner, attribute, wrong value): setattr(owner, attribute, wrong) plants it.
Patch = tuple[Any, str, Any]


@attrs.frozen(kw_only=True)
class PlantedBug:
    name: str
    recreates: str  # the known failure (issue, KIP) it re-creates
    wrong: str  # what the planted code does
    scenario: str  # the targeted schedule that finds it (scenarios.SCENARIOS)
    found_as: tuple[str, ...]  # the findings that show it
    patches: Callable[[], list[Patch]] | None = None  # None: a hook, not built yet
    pending: str = ""  # for a hook: what it waits for
    # Found by the simulator (`scenario` names one of its scenarios), or only by a run
    # of real processes (`scenario` is that run's command line).
    simulated: bool = True

    @property
    def built(self) -> bool:
        return self.patches is not None


def _hwm_ignores_followers() -> list[Patch]:
    import broker.partition

    def wrong(current: int, leader_end: int, *_: Any, **__: Any) -> int:
        return max(current, leader_end)

    return [(broker.partition, "high_watermark", wrong)]


def _unpersisted_vote() -> list[Patch]:
    import kraft.quorum_state_file

    def forget(self: Any, *_: Any, **__: Any) -> None:
        return None

    return [(kraft.quorum_state_file.QuorumStateFile, "write", forget)]


def _no_check_quorum() -> list[Patch]:
    import kraft.raft.core
    import kraft.raft.progress

    def always_heard(self: Any, now_ms: int, timeout_ms: int) -> bool:
        return True

    def never(self: Any) -> int:
        return 2**62  # no check-quorum deadline (a passed one would wake the driver forever)

    return [
        (kraft.raft.progress.LeaderProgress, "quorum_heard_within", always_heard),
        (kraft.raft.core.RaftCore, "_next_check_quorum_ms", never),
    ]


def _follower_skips_truncation() -> list[Patch]:
    import broker.partition

    def keep_log(self: Any, target: int) -> None:
        return None  # the diverging suffix stays; the next fetch asks past it again

    return [(broker.partition.Partition, "truncate_as_follower", keep_log)]


def _no_unclean_shutdown_detection() -> list[Patch]:
    import kraft.controller.cluster

    def every_restart_is_clean(image: Any, broker_id: int) -> tuple[()]:
        return ()

    return [(kraft.controller.cluster, "remove_unclean_replica", every_restart_is_clean)]


def _stale_alter_partition() -> list[Patch]:
    import kraft.controller.replication

    def only_fencing(image: Any, request: Any, joining: list[int]) -> str | None:
        # Before KIP-903: a fenced joiner is refused, its incarnation is not looked at.
        fenced = [b for b in joining if b not in image.brokers or image.brokers[b].fenced]
        return f"brokers {fenced} are fenced" if fenced else None

    return [(kraft.controller.replication, "ineligible_joiners", only_fencing)]


def _commit_ignores_generation() -> list[Patch]:
    from broker.groups.coordinator import GroupCoordinator

    def trusts_the_member(group: Any, request: Any) -> None:
        return None

    return [(GroupCoordinator, "_commit_error", staticmethod(trusts_the_member))]


def _no_epoch_bump() -> list[Patch]:
    import attrs

    from broker.transactions.coordinator import TransactionCoordinator

    real = TransactionCoordinator.end_txn

    def end_as_version_1(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        # EndTxn v5 decided as v4 was: the epoch stays, the markers carry it.
        return real(self, attrs.evolve(request, transaction_version_2=False), *args, **kwargs)

    return [(TransactionCoordinator, "end_txn", end_as_version_1)]


REGISTRY: dict[str, PlantedBug] = {
    bug.name: bug
    for bug in (
        PlantedBug(
            name="hwm-ignores-followers",
            recreates="acks=all acknowledged by the leader alone (the high-water mark rule of "
            "KIP-101/KIP-279 ignored; what Jepsen found in Redpanda 21.10.1)",
            wrong="a partition leader's high-water mark jumps to its own log end without "
            "waiting for the ISR",
            scenario="leader-isolations",
            found_as=("lost", "inconsistent-offsets", "hwm-regression"),
            patches=_hwm_ignores_followers,
        ),
        PlantedBug(
            name="unpersisted-vote",
            recreates="a voter that forgets its vote on restart votes twice in one epoch "
            "(Raft's persistent state, section 5.2; KIP-595's quorum-state file)",
            wrong="quorum-state is never written: a restarted voter starts at epoch 0 "
            "with no vote. pykraft's core will not stand in an epoch below its log's, so "
            "once every voter has forgotten, none can be elected",
            scenario="election-kills",
            found_as=("quorum-leaderless", "two-leaders-in-an-epoch", "metadata-divergence"),
            patches=_unpersisted_vote,
        ),
        PlantedBug(
            name="no-check-quorum",
            recreates="KAFKA-15489: a KRaft leader cut off from the majority keeps acting "
            "as leader (check-quorum, KIP-595: resign within 1.5 fetch timeouts)",
            wrong="the leader believes a majority fetched recently, always",
            scenario="controller-cut-off",
            found_as=("leader-without-quorum",),
            patches=_no_check_quorum,
        ),
        PlantedBug(
            name="follower-skips-truncation",
            recreates="a follower that does not truncate to the leader's divergence point "
            "(KIP-101/KIP-279; KIP-595's diverging-epoch answer)",
            wrong="a follower ignores the diverging-epoch answer and never truncates: "
            "pykraft's leader will not count a diverging fetch, so that follower never "
            "catches up and the ISR is never whole again",
            scenario="leader-isolations",
            found_as=("no-convergence",),
            patches=_follower_skips_truncation,
        ),
        PlantedBug(
            name="no-unclean-shutdown-detection",
            recreates="KIP-966: a broker that lost its unflushed tail in an unclean "
            "shutdown rejoins as an eligible leader",
            wrong="the controller treats every registration as a clean restart: a "
            "crashed replica keeps its ISR place and may lead with its shortened log",
            scenario="lone-leader-crashes",
            found_as=("lost", "inconsistent-offsets", "hwm-regression", "node-died"),
            patches=_no_unclean_shutdown_detection,
        ),
        PlantedBug(
            name="stale-alter-partition",
            recreates="KIP-903: an AlterPartition naming a replica's older broker epoch "
            "puts a restarted, emptied replica back in the ISR",
            wrong="the controller does not compare the broker epochs in AlterPartition: "
            "a leader's view of a follower from before its crash puts it back in the ISR",
            scenario="cut-off-follower-crashes",
            found_as=("lost", "inconsistent-offsets", "hwm-regression", "node-died"),
            patches=_stale_alter_partition,
        ),
        PlantedBug(
            name="no-epoch-bump",
            recreates="KAFKA-17754, what Jepsen found in Kafka and Bufstream: without "
            "KIP-890 part 2, a transaction's late EndTxn (or write) carries the same "
            "producer epoch as the next transaction, and ends or joins it",
            wrong="the coordinator ends a version-2 transaction without bumping the producer epoch",
            scenario="late-end-txn",
            found_as=("aborted-read", "torn-transaction", "lost-committed", "precommitted-read"),
            patches=_no_epoch_bump,
        ),
        PlantedBug(
            name="commit-ignores-generation",
            recreates="a group coordinator that takes an offset commit from a member it "
            "no longer counts (Kafka's generation and member checks, GroupCoordinator's "
            "doCommitOffsets): a paused member wakes up a zombie and moves the group back",
            wrong="OffsetCommit is accepted whatever the member id and generation it names",
            scenario="jepsen-like run --workload subscribe --nemesis pause-member "
            "--fault-duration 9 --planted commit-ignores-generation",
            found_as=("commit-regression",),
            patches=_commit_ignores_generation,
            simulated=False,
        ),
    )
}
# The simulator's (`jepsen-like sim --planted`), and those only real processes find
# (`jepsen-like run --planted`: the subscribe workload's group members are OS processes).
PLANTED_BUGS = tuple(name for name, bug in REGISTRY.items() if bug.built and bug.simulated)
REAL_PROCESS_BUGS = tuple(name for name, bug in REGISTRY.items() if bug.built and not bug.simulated)


def describe() -> str:
    """`jepsen-like sim --planted list`: each bug, what it re-creates, how it is found."""
    lines = []
    for bug in REGISTRY.values():
        state = "" if bug.built else f"  [not built yet: waits for {bug.pending}]"
        lines += [
            f"{bug.name}{state}",
            f"    re-creates: {bug.recreates}",
            f"    planted:    {bug.wrong}",
            f"    found by:   {'--scenario ' if bug.simulated else ''}{bug.scenario}, "
            f"as {' or '.join(bug.found_as)}",
        ]
    return "\n".join(lines)


def get(name: str) -> PlantedBug:
    bug = REGISTRY.get(name)
    if bug is None:
        raise ValueError(f"unknown planted bug {name!r}; choose from {', '.join(PLANTED_BUGS)}")
    if not bug.built:
        raise ValueError(f"planted bug {name!r} is not built yet: it waits for {bug.pending}")
    return bug


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    patches = get(name).patches
    assert patches is not None
    planted_now = patches()
    originals = [
        (owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in planted_now
    ]
    for owner, attribute, wrong in planted_now:
        setattr(owner, attribute, wrong)
    try:
        yield
    finally:
        for owner, attribute, right in reversed(originals):
            setattr(owner, attribute, right)
