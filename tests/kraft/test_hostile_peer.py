"""Issue 14: a hostile peer among a working quorum; after every step all live and stay safe.

Hypothesis writes the hostile peer's script: which node it writes to, when, which
request, and which values (epochs at the int32 limits, offsets at the int64 limits
and beyond the log, ids of non-voters). A seeded scheduler runs 3 voters and an
observer of pure cores with message loss, reordering, crashes and snapshots in
between, as `test_raft_safety` does. After every step the harness checks election
safety, leader append-only, log matching, leader completeness and state-machine
safety; this test adds that every node is alive, that no epoch passes `EPOCH_MAX`,
that every answer is encodable, and that every persisted quorum-state is one a node
can start from (each node restarts from it at the end, and the cluster still elects).

The hostile peer does not impersonate voters: with an unauthenticated protocol, a
voter's id with plausible values is that voter as far as Raft can tell (a forged
Fetch moves the high-water mark; a forged Vote is a real vote), and no check can
tell them apart. It uses voters' ids only with values that no voter sends: epochs
outside [0, EPOCH_MAX], fetch offsets beyond the log, a second leader for the epoch
the receiver is in, or the receiver's own id.
"""

from __future__ import annotations

import random

import attrs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kraft.raft import wire
from kraft.raft.messages import (
    EPOCH_MAX,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    BeginQuorumEpochRequest,
    EndQuorumEpochRequest,
    FetchRequest,
    FetchSnapshotRequest,
    OffsetAndEpoch,
    Request,
    VoteRequest,
)
from kraft.raft.state import NO_ID
from tests.kraft.harness import CLUSTER_ID, Cluster

VOTERS = frozenset({1, 2, 3})
OBSERVER = 4
NODES = (1, 2, 3, OBSERVER)
HOSTILE_SOURCE = 99
STEPS = 1_500

# Symbolic values are resolved against the receiver's state when the request is sent.
EPOCHS = ["current", "current+1", "current-1", 0, -1, EPOCH_MAX, INT32_MAX, INT32_MIN]
OFFSETS = ["log_end", "log_end+1", "log_start", "hwm", -1, 0, INT64_MAX]
IDS = [1, 2, 3, OBSERVER, 0, -1, HOSTILE_SOURCE, INT32_MAX, INT32_MIN]
KINDS = ["vote", "pre_vote", "begin", "end", "fetch", "fetch_snapshot"]


@attrs.frozen
class Hostile:
    step: int
    target: int
    kind: str
    claimant: int
    epoch: int | str
    other_epoch: int | str
    offset: int | str
    max_bytes: int


hostile_strategy = st.builds(
    Hostile,
    step=st.integers(0, STEPS - 1),
    target=st.sampled_from(NODES),
    kind=st.sampled_from(KINDS),
    claimant=st.sampled_from(IDS),
    epoch=st.sampled_from(EPOCHS),
    other_epoch=st.sampled_from(EPOCHS),
    offset=st.sampled_from(OFFSETS),
    max_bytes=st.sampled_from([-1, 0, 1024, INT32_MAX]),
)


def resolve_epoch(value: int | str, current: int) -> int:
    if isinstance(value, int):
        return value
    return {"current": current, "current+1": current + 1, "current-1": current - 1}[value]


def resolve_offset(value: int | str, cluster: Cluster, node_id: int) -> int:
    if isinstance(value, int):
        return value
    node = cluster.nodes[node_id]
    return {
        "log_end": node.log.log_end_offset,
        "log_end+1": node.log.log_end_offset + 1,
        "log_start": node.log.log_start_offset,
        "hwm": node.core.high_watermark,
    }[value]


def build(hostile: Hostile, cluster: Cluster) -> Request:
    core = cluster.nodes[hostile.target].core
    epoch = resolve_epoch(hostile.epoch, core.epoch)
    other_epoch = resolve_epoch(hostile.other_epoch, core.epoch)
    offset = resolve_offset(hostile.offset, cluster, hostile.target)
    claimant = hostile.claimant
    if claimant in VOTERS and not _no_voter_would_send(hostile, epoch, offset, cluster):
        claimant = HOSTILE_SOURCE  # see the module docstring: no impersonation
    kind = hostile.kind
    if kind in ("vote", "pre_vote"):
        return VoteRequest(
            cluster_id=CLUSTER_ID,
            candidate_epoch=epoch,
            candidate_id=claimant,
            last_offset_epoch=other_epoch,
            last_offset=offset,
            pre_vote=kind == "pre_vote",
        )
    if kind == "begin":
        return BeginQuorumEpochRequest(
            cluster_id=CLUSTER_ID, leader_epoch=epoch, leader_id=claimant
        )
    if kind == "end":
        return EndQuorumEpochRequest(
            cluster_id=CLUSTER_ID,
            leader_epoch=epoch,
            leader_id=claimant,
            preferred_successors=(hostile.target, HOSTILE_SOURCE, INT32_MIN),
        )
    if kind == "fetch":
        return FetchRequest(
            cluster_id=CLUSTER_ID,
            replica_id=claimant,
            current_leader_epoch=epoch,
            fetch_offset=offset,
            last_fetched_epoch=other_epoch,
            max_bytes=hostile.max_bytes,
            max_wait_ms=hostile.max_bytes,
        )
    snapshot = cluster.nodes[hostile.target].log.latest_snapshot_id()
    snapshot_id = (
        snapshot
        if snapshot is not None and hostile.other_epoch == "current"
        else OffsetAndEpoch(offset=offset, epoch=other_epoch)
    )
    return FetchSnapshotRequest(
        cluster_id=CLUSTER_ID,
        replica_id=claimant,
        current_leader_epoch=epoch,
        snapshot_id=snapshot_id,
        position=offset,
        max_bytes=hostile.max_bytes,
    )


def _no_voter_would_send(hostile: Hostile, epoch: int, offset: int, cluster: Cluster) -> bool:
    if not 0 <= epoch <= EPOCH_MAX or hostile.claimant == hostile.target:
        return True
    node = cluster.nodes[hostile.target]
    if hostile.kind == "fetch":
        return offset < 0 or offset > node.log.log_end_offset
    if hostile.kind == "begin":
        known = node.core.quorum.leader_id()
        return epoch == node.core.epoch and known not in (NO_ID, hostile.claimant)
    return False


def send(cluster: Cluster, hostile: Hostile) -> None:
    request = build(hostile, cluster)
    core = cluster.nodes[hostile.target].core
    response = core.handle_request(cluster.now_ms, HOSTILE_SOURCE, request)
    # Whatever the answer, it must be one the wire can carry back.
    assert wire.decode_response(request, wire.encode(response)) == response
    cluster._carry_out(hostile.target, None)  # persist, send, check safety


def check_alive_and_bounded(cluster: Cluster) -> None:
    for node_id, node in cluster.nodes.items():
        assert node.core.epoch <= EPOCH_MAX, f"node {node_id} in epoch {node.core.epoch}"
        problem = node.persisted.problem(VOTERS)
        assert problem is None, f"node {node_id} persisted {node.persisted}: {problem}"
    for envelope in cluster.network:
        if envelope.request is not None:
            assert envelope.destination in VOTERS, f"request to {envelope.destination}"


def run(seed: int, script: list[Hostile]) -> Cluster:
    rng = random.Random(seed)
    cluster = Cluster(voters=3, observers=1, seed=seed)
    by_step: dict[int, list[Hostile]] = {}
    for hostile in script:
        by_step.setdefault(hostile.step, []).append(hostile)
    for number in range(STEPS):
        for hostile in by_step.get(number, []):
            send(cluster, hostile)
            check_alive_and_bounded(cluster)
        roll = rng.random()
        if cluster.network and roll < 0.75:
            index = rng.randrange(len(cluster.network))
            if rng.random() < 0.03:
                cluster.drop(index)
            else:
                cluster.deliver(index)
        elif roll < 0.90:
            cluster.advance(rng.choice([1, 5, 20, 100, 400]))
        elif roll < 0.995:
            leader = cluster.leader()
            if leader is not None:
                cluster.propose(leader, f"v{number}".encode())
        else:
            cluster.snapshot(rng.choice(NODES))
        if rng.random() < 0.002:
            cluster.crash(rng.choice(NODES), rng=rng)
        check_alive_and_bounded(cluster)
    return cluster


def restart_all_and_elect(cluster: Cluster) -> None:
    """Every persisted state can be started from, and unless the hostile peer moved
    the quorum to the last epoch (a liveness loss Raft cannot refuse), it elects again."""
    for node_id in NODES:
        cluster.crash(node_id)
    if max(node.core.epoch for node in cluster.nodes.values()) >= EPOCH_MAX - 1:
        cluster.run(steps=500)
        return
    cluster.run_until(lambda: cluster.leader() is not None, steps=30_000)


def script_of(*hostiles: Hostile) -> list[Hostile]:
    return list(hostiles)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), script=st.lists(hostile_strategy, min_size=1, max_size=40))
# The two findings of the probe, as scripts: a non-voter leader, the last int32 epoch.
@example(
    seed=14,
    script=script_of(
        Hostile(600, 2, "begin", HOSTILE_SOURCE, "current+1", 0, 0, 1024),
        Hostile(700, 3, "vote", 1, INT32_MAX, 0, 0, 1024),
        Hostile(700, 2, "vote", 1, INT32_MAX, 0, 0, 1024),
    ),
)
def test_a_hostile_peer_kills_no_node_and_breaks_no_safety_property(
    seed: int, script: list[Hostile]
) -> None:
    cluster = run(seed, script)
    assert cluster.leaders_by_epoch, "no leader was ever elected: the run proved nothing"
    restart_all_and_elect(cluster)
