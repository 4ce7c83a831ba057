"""Raft core behaviour, one rule per test (etcd-io/raft style), on the in-process harness."""

from __future__ import annotations

import pytest

from kraft.raft.core import NotLeaderError
from kraft.raft.messages import ErrorCode, FetchRequest, VoteRequest
from kraft.raft.state import Follower, Leader, Prospective, Resigned, Unattached, Voted
from tests.kraft.harness import CLUSTER_ID, Cluster


def elect(cluster: Cluster) -> int:
    cluster.run_until(lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None
    cluster.run(steps=200)
    return leader


def test_single_voter_elects_itself_and_commits_on_flush() -> None:
    cluster = Cluster(voters=1)
    leader = elect(cluster)
    assert leader == 1 and cluster.nodes[1].core.epoch == 1
    assert cluster.propose(1, b"x")
    assert cluster.nodes[1].core.high_watermark == 2  # leader-change record + x


def test_three_voters_elect_one_leader_and_replicate() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    followers = [i for i in cluster.nodes if i != leader]
    for i in followers:
        state = cluster.nodes[i].core.state
        assert isinstance(state, Follower) and state.leader_id == leader
    for n in range(20):
        cluster.propose(leader, f"v{n}".encode())
    cluster.run(steps=300)
    hwm = cluster.nodes[leader].core.high_watermark
    assert hwm == 21
    for i in followers:
        assert cluster.nodes[i].entries() == cluster.nodes[leader].entries()
        assert cluster.nodes[i].core.high_watermark == hwm


def test_propose_on_a_follower_names_the_leader() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    follower = next(i for i in cluster.nodes if i != leader)
    with pytest.raises(NotLeaderError) as raised:
        cluster.nodes[follower].core.propose(cluster.now_ms, [b"x"])
    assert raised.value.leader.leader_id == leader


def test_votes_are_refused_to_a_stale_log_to_non_voters_and_to_other_clusters() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    cluster.propose(leader, b"x")
    cluster.run(steps=200)
    voter = cluster.nodes[next(i for i in cluster.nodes if i != leader)].core
    epoch = voter.epoch
    stale = VoteRequest(
        cluster_id=CLUSTER_ID,
        candidate_epoch=epoch + 1,
        candidate_id=leader,
        last_offset_epoch=0,
        last_offset=0,
    )
    answer = voter.handle_request(cluster.now_ms, leader, stale)
    assert not answer.vote_granted and voter.epoch == epoch + 1  # epoch learned, vote refused
    stranger = VoteRequest(
        cluster_id=CLUSTER_ID,
        candidate_epoch=epoch + 5,
        candidate_id=99,
        last_offset_epoch=9,
        last_offset=99,
    )
    assert (
        voter.handle_request(cluster.now_ms, 99, stranger).error_code
        == ErrorCode.INCONSISTENT_VOTER_SET
    )
    foreign = VoteRequest(
        cluster_id="other",
        candidate_epoch=epoch + 5,
        candidate_id=leader,
        last_offset_epoch=9,
        last_offset=99,
    )
    assert (
        voter.handle_request(cluster.now_ms, leader, foreign).error_code
        == ErrorCode.INCONSISTENT_CLUSTER_ID
    )
    assert voter.epoch == epoch + 1


def test_a_vote_is_given_once_per_epoch_and_persisted_before_the_answer() -> None:
    cluster = Cluster(voters=3)
    core = cluster.nodes[3].core
    request = VoteRequest(
        cluster_id=CLUSTER_ID, candidate_epoch=4, candidate_id=1, last_offset_epoch=0, last_offset=0
    )
    assert core.handle_request(0, 1, request).vote_granted
    assert core.ready().election_state.voted_id == 1  # the runtime writes this before replying
    rival = VoteRequest(
        cluster_id=CLUSTER_ID, candidate_epoch=4, candidate_id=2, last_offset_epoch=0, last_offset=0
    )
    assert not core.handle_request(0, 2, rival).vote_granted
    assert core.handle_request(0, 1, request).vote_granted  # a retry from the same candidate
    assert isinstance(core.state, Voted) and core.state.voted_id == 1


def test_pre_vote_changes_nothing_and_is_refused_while_the_leader_is_alive() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    follower_id = next(i for i in cluster.nodes if i != leader)
    follower = cluster.nodes[follower_id].core
    epoch = follower.epoch
    pre = VoteRequest(
        cluster_id=CLUSTER_ID,
        candidate_epoch=epoch + 1,
        candidate_id=leader,
        last_offset_epoch=epoch,
        last_offset=999,
        pre_vote=True,
    )
    assert not follower.handle_request(cluster.now_ms, leader, pre).vote_granted
    assert follower.epoch == epoch and follower.ready().election_state is None
    cluster.now_ms += 10_000  # the leader has been silent for longer than the fetch timeout
    assert follower.handle_request(cluster.now_ms, leader, pre).vote_granted
    assert follower.epoch == epoch


def test_an_isolated_voter_does_not_disrupt_the_quorum_when_it_returns() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    loner = next(i for i in cluster.nodes if i != leader)
    cluster.isolated.add(loner)
    cluster.run(steps=400, tick_ms=100)  # it times out and keeps asking for pre-votes
    assert cluster.nodes[loner].core.epoch == cluster.nodes[leader].core.epoch
    epoch = cluster.nodes[leader].core.epoch
    cluster.isolated.clear()
    cluster.run(steps=400)
    assert cluster.leader() == leader and cluster.nodes[leader].core.epoch == epoch


def test_fetch_epoch_fencing_and_redirect() -> None:
    cluster = Cluster(voters=3)
    leader_id = elect(cluster)
    leader = cluster.nodes[leader_id].core
    follower_id = next(i for i in cluster.nodes if i != leader_id)
    follower = cluster.nodes[follower_id].core

    def fetch(epoch: int, replica_id: int = follower_id) -> FetchRequest:
        return FetchRequest(
            cluster_id=CLUSTER_ID,
            replica_id=replica_id,
            current_leader_epoch=epoch,
            fetch_offset=0,
            last_fetched_epoch=0,
            max_bytes=1024,
        )

    assert (
        leader.handle_request(cluster.now_ms, follower_id, fetch(leader.epoch - 1)).error_code
        == ErrorCode.FENCED_LEADER_EPOCH
    )
    assert (
        leader.handle_request(cluster.now_ms, follower_id, fetch(leader.epoch + 1)).error_code
        == ErrorCode.UNKNOWN_LEADER_EPOCH
    )
    # From an observer (9): a fetch in the follower's own name would be refused.
    redirected = follower.handle_request(cluster.now_ms, 9, fetch(follower.epoch, 9))
    assert (
        redirected.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER
        and redirected.leader_id == leader_id
    )


def test_follower_truncates_a_divergent_tail_to_the_leader_epoch_boundary() -> None:
    cluster = Cluster(voters=3)
    old_leader = elect(cluster)
    cluster.propose(old_leader, b"committed")
    cluster.run(steps=300)
    committed_hwm = cluster.nodes[old_leader].core.high_watermark
    # The old leader appends entries nobody else sees, then is cut off.
    cluster.isolated.add(old_leader)
    for n in range(3):
        cluster.propose(old_leader, f"lost{n}".encode())
    cluster.run_until(lambda: cluster.leader() not in (None, old_leader))
    new_leader = cluster.leader()
    cluster.propose(new_leader, b"new")
    cluster.run(steps=300)
    cluster.isolated.clear()
    cluster.run_until(lambda: isinstance(cluster.nodes[old_leader].core.state, Follower))
    cluster.run(steps=500)
    values = [e.value for e in cluster.nodes[old_leader].entries()]
    assert b"committed" in values and b"new" in values
    assert not any(v.startswith(b"lost") for v in values)
    assert cluster.nodes[old_leader].entries() == cluster.nodes[new_leader].entries()
    assert cluster.nodes[new_leader].core.high_watermark > committed_hwm


def test_check_quorum_makes_an_isolated_leader_resign() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    cluster.isolated.add(leader)
    cluster.advance(2000)
    assert isinstance(cluster.nodes[leader].core.state, Leader)
    cluster.advance(1100)  # past 1.5 x fetch timeout without a majority fetching
    assert isinstance(cluster.nodes[leader].core.state, (Resigned, Prospective))


def test_graceful_resign_hands_over_without_waiting_for_timeouts() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    cluster.propose(leader, b"x")
    cluster.run(steps=200)
    started = cluster.now_ms
    cluster.nodes[leader].core.resign(cluster.now_ms)
    cluster._carry_out(leader, None)
    cluster.run_until(lambda: cluster.leader() not in (None, leader), tick_ms=10)
    assert cluster.now_ms - started < 1000  # below one election timeout


def test_restart_as_leader_resigns_and_a_restart_keeps_its_vote() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    cluster.crash(leader)
    assert isinstance(cluster.nodes[leader].core.state, Resigned)
    voter = cluster.nodes[3]
    request = VoteRequest(
        cluster_id=CLUSTER_ID,
        candidate_epoch=50,
        candidate_id=1,
        last_offset_epoch=49,
        last_offset=99,
    )
    assert voter.core.handle_request(cluster.now_ms, 1, request).vote_granted
    cluster._carry_out(3, None)
    cluster.crash(3)
    rival = VoteRequest(
        cluster_id=CLUSTER_ID,
        candidate_epoch=50,
        candidate_id=2,
        last_offset_epoch=49,
        last_offset=99,
    )
    assert not cluster.nodes[3].core.handle_request(cluster.now_ms, 2, rival).vote_granted


def test_observer_finds_the_leader_and_replicates_without_voting() -> None:
    cluster = Cluster(voters=3, observers=1)
    leader = elect(cluster)
    cluster.propose(leader, b"x")
    cluster.run_until(lambda: cluster.nodes[4].core.high_watermark == 2)
    observer = cluster.nodes[4]
    assert isinstance(observer.core.state, Follower)
    assert observer.entries() == cluster.nodes[leader].entries()
    assert 4 not in cluster.nodes[leader].core.progress.voters
    request = VoteRequest(
        cluster_id=CLUSTER_ID,
        candidate_epoch=99,
        candidate_id=1,
        last_offset_epoch=99,
        last_offset=99,
    )
    assert (
        observer.core.handle_request(cluster.now_ms, 1, request).error_code
        == ErrorCode.INCONSISTENT_VOTER_SET
    )


def test_unattached_start_state() -> None:
    cluster = Cluster(voters=3)
    assert all(isinstance(node.core.state, Unattached) for node in cluster.nodes.values())


def test_an_unreachable_leader_is_replaced_before_the_fetch_timeout() -> None:
    from kraft.raft.messages import FetchRequest as Fetch
    from kraft.raft.messages import Inbound

    cluster = Cluster(voters=3)
    leader = elect(cluster)
    follower_id = next(i for i in cluster.nodes if i != leader)
    core = cluster.nodes[follower_id].core
    fetch = next(
        e for e in cluster.network if e.source == follower_id and isinstance(e.request, Fetch)
    )
    cluster.network.remove(fetch)
    before = core.state.fetch_deadline_ms
    core.handle_response(
        cluster.now_ms,
        Inbound(source=leader, request_id=fetch.request_id, response=None, unreachable=True),
    )
    assert core.state.fetch_deadline_ms < before
    assert core.state.fetch_deadline_ms <= cluster.now_ms + core.config.election_timeout_ms


def test_a_follower_behind_the_log_start_catches_up_through_the_snapshot() -> None:
    cluster = Cluster(voters=3)
    leader = elect(cluster)
    laggard = next(i for i in cluster.nodes if i != leader)
    cluster.isolated.add(laggard)
    for n in range(30):
        cluster.propose(leader, f"v{n}".encode())
    cluster.run(steps=300)
    assert cluster.snapshot(leader)
    assert cluster.nodes[leader].log.log_start_offset == cluster.nodes[leader].core.high_watermark
    cluster.isolated.clear()
    cluster.run_until(lambda: cluster.nodes[laggard].log.latest_snapshot_id() is not None)
    cluster.propose(leader, b"after")
    cluster.run(steps=300)
    assert cluster.nodes[laggard].entries() == cluster.nodes[leader].entries()
    assert cluster.nodes[laggard].log.log_start_offset > 0
