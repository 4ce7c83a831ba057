"""Issue 14 over real sockets: a hostile frame to a running quorum kills nobody, now or on restart.

Three `RaftNode`s on loopback with real files (`LocalQuorum`). A hostile peer writes
well-framed Raft requests with values no node may act on; every node must answer
with an error code, keep serving, and start again from its data directory.
"""

from __future__ import annotations

import json
import random

import pytest
import trio

from client.protocol.framing import FrameDecoder, encode_frame
from kraft.local_quorum import LocalQuorum
from kraft.quorum_state_file import QuorumStateError
from kraft.raft import wire
from kraft.raft.core import RaftConfig
from kraft.raft.messages import INT32_MAX, ErrorCode
from kraft.raft.state import ElectionState
from kraft.runtime import RaftNode

CLUSTER_ID = "hostile-cluster"
VOTERS = frozenset({1, 2, 3})
NON_VOTER = 99


def quorum(nursery: trio.Nursery, root: object) -> LocalQuorum:
    timeouts = {
        "election_timeout_ms": 300,
        "fetch_timeout_ms": 600,
        "election_backoff_max_ms": 300,
        "request_timeout_ms": 600,
    }
    return LocalQuorum(
        nursery, str(root), voters=VOTERS, cluster_id=CLUSTER_ID, config_overrides=timeouts, seed=3
    )


async def hostile_request(port: int, api_key: int, body: list[object]) -> object:
    """One well-framed request from a peer that is not in the quorum; its answer's body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(encode_frame([api_key, wire.API_VERSION, 7, "hostile", body]))
        decoder = FrameDecoder()
        while True:
            data = await stream.receive_some(65536)
            assert data, "the node closed the connection instead of answering"
            frames = decoder.feed(data)
            if frames:
                correlation_id, answer = frames[0]
                assert correlation_id == 7
                return answer


async def committed_everywhere(quorum: LocalQuorum, value: bytes) -> None:
    """Commit `value` and wait until every voter's high-water mark covers it."""
    offset = await quorum.commit([value])
    for node in quorum.nodes.values():
        while node.high_watermark <= offset:
            await node.wait_for_change()


async def restart(quorum: LocalQuorum, node_id: int) -> None:
    quorum.nodes[node_id].kill()
    await trio.sleep(0)
    await quorum.start(node_id)


@pytest.mark.parametrize("target", ["follower", "leader"])
async def test_begin_quorum_epoch_naming_a_non_voter_kills_no_node(
    nursery, tmp_path, target: str
) -> None:
    """Finding 1: `KeyError: 99` in the client lookup, then the same on every restart."""
    cluster = quorum(nursery, tmp_path)
    with trio.fail_after(60):
        await cluster.start_all()
        await committed_everywhere(cluster, b"before")
        leader = await cluster.leader()
        victim = (
            leader
            if target == "leader"
            else next(n for n in cluster.nodes.values() if n is not leader)
        )
        victim_id = victim.config.local_id
        epoch = victim.core.epoch
        answer = await hostile_request(
            cluster.addresses[victim_id][1],
            wire.API_BEGIN_QUORUM_EPOCH,
            [CLUSTER_ID, epoch + 1, NON_VOTER],
        )
        assert answer[0] == ErrorCode.INCONSISTENT_VOTER_SET
        assert victim.running and victim.core.leader().leader_id != NON_VOTER
        await committed_everywhere(cluster, b"after")
        await restart(cluster, victim_id)
        await committed_everywhere(cluster, b"after restart")
        assert all(node.running for node in cluster.nodes.values())
    cluster.kill_all()


async def test_a_vote_with_the_last_int32_epoch_kills_no_node(nursery, tmp_path) -> None:
    """Finding 2: followers adopted 2^31-1, then died with struct.error, now and on restart."""
    cluster = quorum(nursery, tmp_path)
    with trio.fail_after(60):
        await cluster.start_all()
        await committed_everywhere(cluster, b"before")
        leader = await cluster.leader()
        leader_id = leader.config.local_id
        followers = [i for i in cluster.nodes if i != leader_id]
        for follower in followers:
            answer = await hostile_request(
                cluster.addresses[follower][1],
                wire.API_VOTE,
                [CLUSTER_ID, INT32_MAX, leader_id, INT32_MAX, 2**63 - 1, False],
            )
            assert answer[0] == ErrorCode.INVALID_REQUEST and answer[3] is False
        await committed_everywhere(cluster, b"after")
        for node in cluster.nodes.values():
            assert node.running and node.core.epoch < 1000
        for follower in followers:
            await restart(cluster, follower)
        await committed_everywhere(cluster, b"after restart")
        assert all(node.running for node in cluster.nodes.values())
    cluster.kill_all()


async def test_out_of_range_fetches_get_error_codes_over_the_wire(nursery, tmp_path) -> None:
    cluster = quorum(nursery, tmp_path)
    with trio.fail_after(60):
        await cluster.start_all()
        await committed_everywhere(cluster, b"before")
        leader = await cluster.leader()
        port, epoch = cluster.addresses[leader.config.local_id][1], leader.core.epoch
        for body, error in [
            ([CLUSTER_ID, 5, epoch, 2**63, 0, 1024, 0], ErrorCode.INVALID_REQUEST),
            ([CLUSTER_ID, 5, 2**31, 0, 0, 1024, 0], ErrorCode.INVALID_REQUEST),
            ([CLUSTER_ID, 5, epoch, 0, 0, -1, 0], ErrorCode.INVALID_REQUEST),
            ([CLUSTER_ID, 5, epoch, -7, 0, 1024, 0], ErrorCode.OFFSET_OUT_OF_RANGE),
        ]:
            answer = await hostile_request(port, wire.API_FETCH, body)
            code = answer["error_code"] if isinstance(answer, dict) else answer[0]
            assert code == error, body
        snapshot = [CLUSTER_ID, 5, epoch, [0, 0], -1, 1024]
        answer = await hostile_request(port, wire.API_FETCH_SNAPSHOT, snapshot)
        assert answer[0] in (ErrorCode.SNAPSHOT_NOT_FOUND, ErrorCode.POSITION_OUT_OF_RANGE)
        await committed_everywhere(cluster, b"after")
    cluster.kill_all()


@pytest.mark.parametrize(
    "state", [ElectionState(epoch=4, leader_id=NON_VOTER), ElectionState(epoch=INT32_MAX)]
)
async def test_a_node_refuses_to_start_from_a_quorum_state_it_cannot_act_on(
    tmp_path, state: ElectionState
) -> None:
    """A file written by an older version: one clear error at start, not a crash loop."""
    directory = tmp_path / "node-1"
    directory.mkdir()
    path = directory / "quorum-state"
    content = {
        "data_version": 0,
        "cluster_id": CLUSTER_ID,
        "node_id": 1,
        "leader_epoch": state.epoch,
        "voted_id": state.voted_id,
        "leader_id": state.leader_id,
    }
    path.write_text(json.dumps(content))
    node = RaftNode(
        config=RaftConfig(local_id=1, voters=VOTERS, cluster_id=CLUSTER_ID),
        directory=str(directory),
        voter_addresses={1: ("127.0.0.1", 1), 2: ("127.0.0.1", 1), 3: ("127.0.0.1", 1)},
        rng=random.Random(1),
    )
    with trio.fail_after(10), pytest.raises(QuorumStateError) as raised:
        await node.run()
    message = str(raised.value)
    assert str(path) in message and "\n" not in message
    assert json.loads(path.read_text()) == content  # left as found, for the operator
