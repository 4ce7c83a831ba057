"""Three voters over real TCP on loopback, with real files: commit, kill, elect, catch up."""

from __future__ import annotations

import random

import pytest
import trio

from kraft.local_quorum import LocalQuorum
from kraft.raft.log import SegmentedRaftLog
from kraft.runtime import RaftNode
from storage.records import iter_batches, iter_records

CLUSTER_ID = "it-cluster"
VOTERS = frozenset({1, 2, 3})


def Quorum(nursery: trio.Nursery, root) -> LocalQuorum:
    # Faster than Kafka's defaults so the tests run in seconds; same ratios.
    timeouts = {
        "election_timeout_ms": 300,
        "fetch_timeout_ms": 600,
        "election_backoff_max_ms": 300,
        "request_timeout_ms": 600,
    }
    return LocalQuorum(
        nursery, str(root), voters=VOTERS, cluster_id=CLUSTER_ID, config_overrides=timeouts, seed=1
    )


def values_in(log: SegmentedRaftLog, end: int) -> list[bytes]:
    found = []
    for batch in log.batches(log.log_start_offset, end):
        header = next(iter_batches(batch))[1]
        if not header.is_control:
            found += [record.value or b"" for record in iter_records(batch)]
    return found


def state_of(node: RaftNode, end: int) -> list[bytes]:
    snapshot_id, snapshot_values = node.snapshot()
    return snapshot_values + values_in(node.log, end) if snapshot_id else values_in(node.log, end)


async def commit_all(quorum: LocalQuorum, values: list[bytes], batch: int = 100) -> None:
    for start in range(0, len(values), batch):
        await quorum.commit(values[start : start + batch])


@pytest.mark.slow
async def test_commit_kill_the_leader_elect_and_catch_up(nursery, tmp_path) -> None:
    quorum = Quorum(nursery, tmp_path)
    with trio.fail_after(60):
        await quorum.start_all()
        first = [f"r{n}".encode() for n in range(10_000)]
        await commit_all(quorum, first)
        old_leader = await quorum.leader()
        old_id = old_leader.config.local_id
        committed = values_in(old_leader.log, old_leader.high_watermark)
        assert committed[-10_000:] == first

        old_leader.kill()
        new_leader = await quorum.leader(excluding=old_id)
        assert new_leader.core.epoch > old_leader.core.epoch
        second = [f"s{n}".encode() for n in range(1_000)]
        await commit_all(quorum, second)

        # Nothing committed before the kill is lost; the survivors agree.
        new_leader = await quorum.leader(excluding=old_id)  # it may have moved meanwhile
        survivors = [n for i, n in quorum.nodes.items() if i != old_id]
        leader_values = values_in(new_leader.log, new_leader.high_watermark)
        assert set(first) <= set(leader_values)
        assert leader_values[-1_000:] == second

        # Snapshot everything committed and drop that log prefix, so the killed node,
        # now behind the log start, can only catch up through the snapshot (KIP-630).
        snapshot_id = new_leader.write_snapshot(new_leader.high_watermark, leader_values)
        assert new_leader.log.log_start_offset == snapshot_id.offset

        restarted = await quorum.start(old_id)
        target = new_leader.log.log_end_offset
        while (
            restarted.log.log_end_offset < target
            or restarted.high_watermark < new_leader.high_watermark
        ):
            await trio.sleep(0.02)
        assert restarted.snapshots_installed == 1
        _, snapshot_values = restarted.snapshot()
        assert snapshot_values == leader_values
        # Same state everywhere: snapshot (if any) plus the log after it.
        expected = state_of(new_leader, target)
        for node in [*survivors, restarted]:
            assert state_of(node, target) == expected
        quorum.kill_all()


async def test_graceful_shutdown_hands_leadership_over_quickly(nursery, tmp_path) -> None:
    quorum = Quorum(nursery, tmp_path)
    with trio.fail_after(30):
        await quorum.start_all()
        leader = await quorum.leader()
        await commit_all(quorum, [b"x"])
        started = trio.current_time()
        await leader.shutdown()
        await quorum.leader(excluding=leader.config.local_id)
        # Without EndQuorumEpoch the others would wait out the fetch timeout (600 ms).
        assert trio.current_time() - started < 0.6
        quorum.kill_all()


async def test_follow_delivers_committed_entries_then_snapshots_in_order(nursery, tmp_path) -> None:
    from kraft.runtime import CommittedBatch, SnapshotLoaded
    from storage.records import iter_records

    quorum = Quorum(nursery, tmp_path)
    with trio.fail_after(30):
        await quorum.start_all()
        await commit_all(quorum, [b"a", b"b", b"c"], batch=1)
        leader = await quorum.leader()
        seen: list[bytes] = []
        async for item in leader.follow(0):
            assert isinstance(item, CommittedBatch)
            seen += [r.value or b"" for r in iter_records(item.data) if r.value != b""]
            if len(seen) >= 4:  # the leader-change record has a value too
                break
        assert seen[-3:] == [b"a", b"b", b"c"]
        leader.write_snapshot(leader.high_watermark, [b"state"])
        async for item in leader.follow(0):
            assert isinstance(item, SnapshotLoaded) and item.values == [b"state"]
            break
        changed = trio.Event()

        async def watch() -> None:
            await quorum.nodes[2].wait_leader_change(quorum.nodes[2].leader())
            changed.set()

        nursery.start_soon(watch)
        await leader.shutdown()
        await changed.wait()
        quorum.kill_all()


async def test_bad_raft_bodies_get_error_codes_and_the_node_keeps_serving(
    nursery, tmp_path
) -> None:
    from client.protocol.errors import ErrorCode
    from client.protocol.rpc import RpcClient
    from kraft.raft.messages import VoteRequest
    from kraft.raft.wire import API_VOTE, encode

    quorum = Quorum(nursery, tmp_path)
    with trio.fail_after(30):
        await quorum.start_all()
        await commit_all(quorum, [b"x"])
        host, port = quorum.addresses[1]
        peer = RpcClient(host, port, client_id="probe", rng=random.Random(0))
        wrong_shape = await peer.request(API_VOTE, 0, ["not", "a", "vote"], timeout_s=5)
        assert wrong_shape["error_code"] == ErrorCode.INVALID_REQUEST
        wrong_type = await peer.request(API_VOTE, 0, ["c", "1", 2, 3, 4, False], timeout_s=5)
        assert wrong_type["error_code"] == ErrorCode.INVALID_REQUEST
        wrong_version = await peer.request(API_VOTE, 9, [], timeout_s=5)
        assert wrong_version["error_code"] == ErrorCode.UNSUPPORTED_VERSION
        foreign = VoteRequest(
            cluster_id="elsewhere",
            candidate_epoch=99,
            candidate_id=2,
            last_offset_epoch=9,
            last_offset=9,
        )
        answer = await peer.request(API_VOTE, 0, encode(foreign), timeout_s=5)
        assert answer[0] == ErrorCode.INCONSISTENT_CLUSTER_ID
        await commit_all(quorum, [b"still serving"])
        await peer.aclose()
        quorum.kill_all()
