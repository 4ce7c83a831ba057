"""Issue 14: hostile values from the network are refused with an error code, never acted on.

One test per finding, on the pure core (the in-process harness), on the wire codec and
on the quorum-state file. What a refused message must leave behind: the same epoch
state, nothing to persist, nothing sent to a node that is not a voter.
"""

from __future__ import annotations

import pytest

from client.protocol.errors import KafkaError
from kraft.quorum_state_file import QuorumStateError, QuorumStateFile
from kraft.raft import wire
from kraft.raft.messages import (
    EPOCH_MAX,
    INT32_MAX,
    INT64_MAX,
    BeginQuorumEpochRequest,
    EndQuorumEpochRequest,
    ErrorCode,
    FetchRequest,
    FetchSnapshotRequest,
    OffsetAndEpoch,
    VoteRequest,
)
from kraft.raft.state import ElectionState, Follower, Leader
from storage.checkpoint import write_atomically
from storage.fs import MemoryFileSystem
from tests.kraft.harness import CLUSTER_ID, Cluster

NON_VOTER = 99


def elected() -> tuple[Cluster, int, int]:
    cluster = Cluster(voters=3)
    cluster.run_until(lambda: cluster.leader() is not None)
    cluster.run(steps=200)
    leader = cluster.leader()
    assert leader is not None
    follower = next(i for i in cluster.nodes if i != leader)
    return cluster, leader, follower


def assert_untouched(cluster: Cluster, node_id: int, before: object) -> None:
    """The refused message changed nothing the node would persist or act on."""
    core = cluster.nodes[node_id].core
    ready = core.ready()
    assert core.state == before
    assert ready.election_state is None
    assert all(outbound.destination in core.config.voters for outbound in ready.messages)


# ----------------------------------------------------------- finding 1: non-voter leader


def test_begin_quorum_epoch_naming_a_non_voter_leader_is_refused() -> None:
    cluster, _, follower = elected()
    core = cluster.nodes[follower].core
    before = core.state
    answer = core.handle_request(
        cluster.now_ms,
        NON_VOTER,
        BeginQuorumEpochRequest(
            cluster_id=CLUSTER_ID, leader_epoch=core.epoch + 1, leader_id=NON_VOTER
        ),
    )
    assert answer.error_code == ErrorCode.INCONSISTENT_VOTER_SET
    assert_untouched(cluster, follower, before)


def test_end_quorum_epoch_from_a_non_voter_is_refused() -> None:
    cluster, _, follower = elected()
    core = cluster.nodes[follower].core
    before = core.state
    answer = core.handle_request(
        cluster.now_ms,
        NON_VOTER,
        EndQuorumEpochRequest(
            cluster_id=CLUSTER_ID,
            leader_epoch=core.epoch + 1,
            leader_id=NON_VOTER,
            preferred_successors=(NON_VOTER,),
        ),
    )
    assert answer.error_code == ErrorCode.INCONSISTENT_VOTER_SET
    assert_untouched(cluster, follower, before)


def test_a_second_leader_claimed_for_a_known_epoch_is_refused_not_an_assertion() -> None:
    """Another voter's id, our epoch, while we lead it or follow someone else in it."""
    cluster, leader, follower = elected()
    impostor = next(i for i in cluster.nodes if i not in (leader, follower))
    for node_id in (leader, follower):
        core = cluster.nodes[node_id].core
        before = core.state
        assert isinstance(before, (Leader, Follower))
        answer = core.handle_request(
            cluster.now_ms,
            impostor,
            BeginQuorumEpochRequest(
                cluster_id=CLUSTER_ID, leader_epoch=core.epoch, leader_id=impostor
            ),
        )
        assert answer.error_code == ErrorCode.INVALID_REQUEST
        assert_untouched(cluster, node_id, before)


# ----------------------------------------------------------- finding 2: epoch 2^31 - 1


@pytest.mark.parametrize("epoch", [INT32_MAX, 0, -1])
def test_a_vote_with_an_epoch_no_node_can_act_on_is_refused(epoch: int) -> None:
    cluster, leader, follower = elected()
    core = cluster.nodes[follower].core
    before = core.state
    answer = core.handle_request(
        cluster.now_ms,
        leader,
        VoteRequest(
            cluster_id=CLUSTER_ID,
            candidate_epoch=epoch,
            candidate_id=leader,
            last_offset_epoch=0,
            last_offset=0,
        ),
    )
    assert answer.error_code == ErrorCode.INVALID_REQUEST and not answer.vote_granted
    assert_untouched(cluster, follower, before)


def test_begin_and_end_quorum_epoch_beyond_the_last_epoch_are_refused() -> None:
    cluster, leader, follower = elected()
    core = cluster.nodes[follower].core
    before = core.state
    begin = BeginQuorumEpochRequest(cluster_id=CLUSTER_ID, leader_epoch=INT32_MAX, leader_id=leader)
    end = EndQuorumEpochRequest(
        cluster_id=CLUSTER_ID, leader_epoch=INT32_MAX, leader_id=leader, preferred_successors=()
    )
    for request in (begin, end):
        answer = core.handle_request(cluster.now_ms, leader, request)
        assert answer.error_code == ErrorCode.INVALID_REQUEST
        assert_untouched(cluster, follower, before)


def test_a_vote_with_a_last_offset_epoch_above_its_own_epoch_is_refused() -> None:
    cluster, leader, follower = elected()
    core = cluster.nodes[follower].core
    before = core.state
    answer = core.handle_request(
        cluster.now_ms,
        leader,
        VoteRequest(
            cluster_id=CLUSTER_ID,
            candidate_epoch=core.epoch + 1,
            candidate_id=leader,
            last_offset_epoch=INT32_MAX,
            last_offset=INT64_MAX,
        ),
    )
    assert answer.error_code == ErrorCode.INVALID_REQUEST and not answer.vote_granted
    assert_untouched(cluster, follower, before)


def test_a_jump_to_the_last_epoch_is_taken_but_never_passed() -> None:
    """Raft must follow a higher epoch; at the last one a node stays alive and waits."""
    cluster, leader, _ = elected()
    for node_id in cluster.nodes:
        if node_id == leader:
            continue
        answer = cluster.nodes[node_id].core.handle_request(
            cluster.now_ms,
            leader,
            VoteRequest(
                cluster_id=CLUSTER_ID,
                candidate_epoch=EPOCH_MAX,
                candidate_id=leader,
                last_offset_epoch=0,
                last_offset=0,
            ),
        )
        assert answer.error_code == ErrorCode.NONE
        cluster._carry_out(node_id, None)
    cluster.run(steps=3_000, tick_ms=100)
    for node in cluster.nodes.values():
        assert node.core.epoch <= EPOCH_MAX
        assert node.persisted.epoch <= EPOCH_MAX
    for node_id in cluster.nodes:
        cluster.crash(node_id)  # every persisted state can be started from
    cluster.run(steps=500, tick_ms=100)


# ----------------------------------------------------------- Fetch and FetchSnapshot ranges


def fetch(cluster: Cluster, leader: int, **fields: int) -> FetchRequest:
    core = cluster.nodes[leader].core
    values = {
        "cluster_id": CLUSTER_ID,
        "current_leader_epoch": core.epoch,
        "fetch_offset": core.log.log_end_offset,
        "last_fetched_epoch": core.log.last_fetched_epoch(),
        "max_bytes": 1024,
    }
    values.update(fields)
    return FetchRequest(**values)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_bytes": -1}, ErrorCode.INVALID_REQUEST),
        ({"max_wait_ms": -1}, ErrorCode.INVALID_REQUEST),
        ({"replica_id": -5}, ErrorCode.INVALID_REQUEST),
        ({"last_fetched_epoch": INT32_MAX}, ErrorCode.INVALID_REQUEST),
        ({"last_fetched_epoch": -1}, ErrorCode.INVALID_REQUEST),
        ({"current_leader_epoch": INT32_MAX}, ErrorCode.INVALID_REQUEST),
        ({"current_leader_epoch": -1}, ErrorCode.INVALID_REQUEST),
        ({"fetch_offset": -1}, ErrorCode.OFFSET_OUT_OF_RANGE),
    ],
)
def test_fetch_values_out_of_range_get_an_error_code(fields: dict[str, int], error: int) -> None:
    cluster, leader, follower = elected()
    core = cluster.nodes[leader].core
    before = core.state
    hwm = core.high_watermark
    request = fetch(cluster, leader, **{"replica_id": follower, **fields})
    answer = core.handle_request(cluster.now_ms, follower, request)
    assert answer.error_code == error
    assert core.high_watermark == hwm
    assert_untouched(cluster, leader, before)


@pytest.mark.parametrize("replica_id", [2, NON_VOTER])
def test_a_fetch_beyond_the_log_end_is_told_where_the_log_diverges(replica_id: int) -> None:
    cluster, leader, _ = elected()
    core = cluster.nodes[leader].core
    hwm = core.high_watermark
    for offset in (core.log.log_end_offset + 1, INT64_MAX):
        answer = core.handle_request(
            cluster.now_ms,
            replica_id,
            fetch(cluster, leader, replica_id=replica_id, fetch_offset=offset),
        )
        assert answer.error_code == ErrorCode.NONE and answer.diverging_epoch is not None
        assert answer.diverging_epoch.offset <= core.log.log_end_offset
    assert core.high_watermark == hwm


def test_fetch_snapshot_positions_and_sizes_out_of_range_get_an_error_code() -> None:
    cluster, leader, follower = elected()
    for n in range(5):
        cluster.propose(leader, f"v{n}".encode())
    cluster.run(steps=300)
    assert cluster.snapshot(leader)
    core = cluster.nodes[leader].core
    snapshot_id = core.log.latest_snapshot_id()
    assert snapshot_id is not None

    def fetch_snapshot(**fields: int) -> FetchSnapshotRequest:
        values = {
            "cluster_id": CLUSTER_ID,
            "replica_id": follower,
            "current_leader_epoch": core.epoch,
            "position": 0,
            "max_bytes": 1024,
        }
        values.update(fields)
        return FetchSnapshotRequest(snapshot_id=snapshot_id, **values)

    cases = [
        ({"position": -1}, ErrorCode.POSITION_OUT_OF_RANGE),
        ({"position": INT64_MAX}, ErrorCode.POSITION_OUT_OF_RANGE),
        ({"max_bytes": -1}, ErrorCode.INVALID_REQUEST),
        ({"current_leader_epoch": INT32_MAX}, ErrorCode.INVALID_REQUEST),
        ({"replica_id": -5}, ErrorCode.INVALID_REQUEST),
    ]
    for fields, error in cases:
        answer = core.handle_request(cluster.now_ms, follower, fetch_snapshot(**fields))
        assert answer.error_code == error, fields
        assert answer.unaligned_records == b""
    hostile_id = FetchSnapshotRequest(
        cluster_id=CLUSTER_ID,
        replica_id=follower,
        current_leader_epoch=core.epoch,
        snapshot_id=OffsetAndEpoch(offset=-1, epoch=INT32_MAX),
        position=0,
        max_bytes=1024,
    )
    answer = core.handle_request(cluster.now_ms, follower, hostile_id)
    assert answer.error_code == ErrorCode.SNAPSHOT_NOT_FOUND


# ----------------------------------------------------------- the wire: Kafka's int ranges


def vote_body(**fields: object) -> list[object]:
    values: dict[str, object] = {
        "cluster_id": CLUSTER_ID,
        "candidate_epoch": 1,
        "candidate_id": 1,
        "last_offset_epoch": 0,
        "last_offset": 0,
        "pre_vote": False,
    }
    values.update(fields)
    return list(values.values())


@pytest.mark.parametrize(
    "fields",
    [
        {"candidate_epoch": INT32_MAX + 1},
        {"candidate_epoch": -(2**31) - 1},
        {"candidate_id": 2**40},
        {"last_offset": INT64_MAX + 1},
        {"last_offset": -(2**63) - 1},
        {"last_offset": 1 << 8_000_000},  # a 1 MB bignum
        {"last_offset": True},
    ],
)
def test_the_wire_refuses_values_outside_their_kafka_type(fields: dict[str, object]) -> None:
    with pytest.raises(KafkaError) as raised:
        wire.decode_request(wire.API_VOTE, wire.API_VERSION, vote_body(**fields))
    assert raised.value.code == ErrorCode.INVALID_REQUEST
    assert len(raised.value.message) < 300  # a bignum is not spelled out


def test_the_wire_refuses_out_of_range_offsets_in_fetch_and_nested_ids() -> None:
    fetch_body = [CLUSTER_ID, 1, 1, INT64_MAX + 1, 0, 1024, 0]
    snapshot_body = [CLUSTER_ID, 1, 1, [INT64_MAX + 1, 0], 0, 1024]
    for api_key, body in ((wire.API_FETCH, fetch_body), (wire.API_FETCH_SNAPSHOT, snapshot_body)):
        with pytest.raises(KafkaError) as raised:
            wire.decode_request(api_key, wire.API_VERSION, body)
        assert raised.value.code == ErrorCode.INVALID_REQUEST
    assert wire.decode_request(wire.API_VOTE, wire.API_VERSION, vote_body()) == VoteRequest(
        cluster_id=CLUSTER_ID, candidate_epoch=1, candidate_id=1, last_offset_epoch=0, last_offset=0
    )


# ----------------------------------------------------------- quorum-state on disk


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"leader_epoch": 4, "voted_id": -1, "leader_id": NON_VOTER}, "leader 99 is not a voter"),
        ({"leader_epoch": 4, "voted_id": NON_VOTER, "leader_id": -1}, "vote for 99, not a voter"),
        ({"leader_epoch": INT32_MAX, "voted_id": -1, "leader_id": -1}, "epoch 2147483647"),
    ],
)
def test_a_quorum_state_no_node_can_act_on_is_refused_in_one_line(
    state: dict[str, int], reason: str
) -> None:
    import json

    fs = MemoryFileSystem()
    fs.makedirs("/meta")
    store = QuorumStateFile(fs, "/meta", cluster_id="c1", node_id=2, voters=frozenset({1, 2, 3}))
    content = {"data_version": 0, "cluster_id": "c1", "node_id": 2, **state}
    write_atomically(fs, store.path, json.dumps(content).encode())
    with pytest.raises(QuorumStateError) as raised:
        store.read()
    message = str(raised.value)
    assert "\n" not in message and store.path in message and reason in message


def test_a_state_no_node_can_act_on_is_never_written() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/meta")
    store = QuorumStateFile(fs, "/meta", cluster_id="c1", node_id=2, voters=frozenset({1, 2, 3}))
    with pytest.raises(AssertionError):
        store.write(ElectionState(epoch=3, leader_id=NON_VOTER))
    with pytest.raises(AssertionError):
        store.write(ElectionState(epoch=INT32_MAX))
    assert store.read() == ElectionState(epoch=0)


def test_a_request_in_the_receivers_own_name_is_refused() -> None:
    """No member asks itself anything; a Fetch in the leader's name would move its hwm."""
    cluster, leader, _ = elected()
    core = cluster.nodes[leader].core
    cluster.propose(leader, b"not yet on a majority")
    before, hwm = core.state, core.high_watermark
    in_its_name = [
        fetch(cluster, leader, replica_id=leader),
        VoteRequest(
            cluster_id=CLUSTER_ID,
            candidate_epoch=core.epoch + 1,
            candidate_id=leader,
            last_offset_epoch=core.epoch,
            last_offset=INT64_MAX,
        ),
        BeginQuorumEpochRequest(
            cluster_id=CLUSTER_ID, leader_epoch=core.epoch + 1, leader_id=leader
        ),
    ]
    for request in in_its_name:
        answer = core.handle_request(cluster.now_ms, leader, request)
        assert answer.error_code == ErrorCode.INVALID_REQUEST, request
        assert_untouched(cluster, leader, before)
    assert core.high_watermark == hwm
