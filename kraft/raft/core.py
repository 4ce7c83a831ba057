"""The Raft core: KIP-595 leader election and pull-based replication, without I/O.

The core never awaits, sleeps, reads a clock or touches a socket. Time comes in as
`now_ms`; randomness from the `random.Random` it is given; the log is written through
`RaftLog` (into the file system cache only). Everything else it wants done comes out
of `ready()`, and the runtime must carry it out in this order (etcd-io/raft's Ready):

1. persist `Ready.election_state` (quorum-state: epoch, vote, leader), if set;
2. flush the log if `Ready.log_dirty`, then call `on_flushed(end offset)`;
3. send `Ready.messages` and the response of the request being handled, if any;
4. apply entries below `Ready.high_watermark` to the state machine.

Steps 1-2 before 3 are what make a vote, a candidacy or a Fetch offset mean anything:
nothing is promised to a peer before it would survive a crash.

Election follows KIP-595 with pre-vote (KIP-996): a voter that has not heard from a
leader for the fetch timeout (or, without a leader, for a randomized election
timeout) first asks for pre-votes at its current epoch; only if a majority would
vote does it bump the epoch and stand as candidate, so a partitioned node cannot
disrupt a healthy quorum when it returns. A leader that has not been fetched from by
a majority within 1.5 fetch timeouts resigns (check-quorum).

What a peer says is checked before it changes any state (issue 14): a leader or a
candidate must be a voter, an epoch must be one a node can act on (at most
`EPOCH_MAX`, so that the next election still fits an int32), a claim must not name a
second leader for an epoch whose leader is known, and offsets, sizes and positions
must be in range. A refused request gets an error code; a refused response counts as
a failed request. Either way the node keeps running and persists nothing new.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from kraft.raft.log import RaftLog
from kraft.raft.messages import (
    EPOCH_MAX,
    NO_LEADER,
    BeginQuorumEpochRequest,
    BeginQuorumEpochResponse,
    EndQuorumEpochRequest,
    EndQuorumEpochResponse,
    ErrorCode,
    FetchRequest,
    FetchResponse,
    FetchSnapshotRequest,
    FetchSnapshotResponse,
    Inbound,
    OffsetAndEpoch,
    Outbound,
    Request,
    Response,
    VoteRequest,
    VoteResponse,
)
from kraft.raft.progress import LeaderProgress
from kraft.raft.state import (
    NO_ID,
    Candidate,
    ElectionState,
    EpochState,
    Follower,
    Leader,
    Prospective,
    QuorumState,
    Resigned,
    Unattached,
    Voted,
)


@attrs.frozen(kw_only=True)
class RaftConfig:
    """Defaults are Kafka's controller.quorum.* settings."""

    local_id: int
    voters: frozenset[int]
    cluster_id: str
    election_timeout_ms: int = 1000  # controller.quorum.election.timeout.ms
    fetch_timeout_ms: int = 2000  # controller.quorum.fetch.timeout.ms
    election_backoff_max_ms: int = 1000  # controller.quorum.election.backoff.max.ms
    request_timeout_ms: int = 2000  # controller.quorum.request.timeout.ms
    retry_backoff_ms: int = 20  # controller.quorum.retry.backoff.ms
    fetch_max_bytes: int = 8 * 1024 * 1024  # KafkaRaftClient's fetch size
    fetch_max_wait_ms: int = 500  # KafkaRaftClient's FETCH_MAX_WAIT_MS

    @property
    def check_quorum_timeout_ms(self) -> int:
        return self.fetch_timeout_ms * 3 // 2


@attrs.frozen(kw_only=True, slots=True)
class LeaderAndEpoch:
    leader_id: int
    epoch: int


@attrs.frozen(kw_only=True, slots=True)
class Ready:
    election_state: ElectionState | None
    log_dirty: bool
    messages: tuple[Outbound, ...]
    high_watermark: int
    leader: LeaderAndEpoch
    # A snapshot fetched from the leader replaced the log: reload the state machine.
    snapshot_installed: OffsetAndEpoch | None = None


class NotLeaderError(Exception):
    def __init__(self, leader: LeaderAndEpoch) -> None:
        super().__init__(f"not the leader; leader is {leader.leader_id} in epoch {leader.epoch}")
        self.leader = leader


@attrs.define(slots=True)
class _InFlight:
    destination: int
    request: Request
    sent_ms: int


def _claimant(request: Request) -> int:
    """The member a request says it comes from."""
    if isinstance(request, VoteRequest):
        return request.candidate_id
    if isinstance(request, (BeginQuorumEpochRequest, EndQuorumEpochRequest)):
        return request.leader_id
    return request.replica_id


class RaftCore:
    def __init__(
        self,
        config: RaftConfig,
        log: RaftLog,
        election: ElectionState,
        rng: random.Random,
        now_ms: int,
    ) -> None:
        self.config = config
        self.log = log
        self.rng = rng
        self.high_watermark = 0
        self._flushed_end_offset = log.log_end_offset
        self._log_dirty = False
        self._outbox: list[Outbound] = []
        self._inflight: dict[int, _InFlight] = {}
        self._next_request_id = 0
        self._fetch_backoff_until_ms = 0
        self._last_tick_ms = -1
        self._begin_quorum_resend_ms = 0
        self.progress: LeaderProgress | None = None
        # Set while this follower copies the leader's snapshot (its log start passed us).
        self._snapshot_fetch: OffsetAndEpoch | None = None
        self._snapshot_position = 0
        self._snapshot_installed: OffsetAndEpoch | None = None
        self.quorum = QuorumState(
            config.local_id, config.voters, self._initial_state(election, now_ms)
        )

    def _initial_state(self, election: ElectionState, now_ms: int) -> EpochState:
        config = self.config
        is_voter = config.local_id in config.voters
        if is_voter and election.leader_id == config.local_id:
            # We led this epoch before the restart; we cannot know whether we still
            # should, so resign and let an election decide (Kafka does the same).
            return Resigned(
                epoch=election.epoch,
                election_deadline_ms=self._election_deadline(now_ms),
                preferred_successors=(),
            )
        if election.leader_id != NO_ID and election.leader_id != config.local_id:
            return Follower(
                epoch=election.epoch,
                leader_id=election.leader_id,
                fetch_deadline_ms=now_ms + config.fetch_timeout_ms,
                voted_id=election.voted_id if is_voter else NO_ID,
            )
        if is_voter and election.voted_id != NO_ID:
            return Voted(
                epoch=election.epoch,
                voted_id=election.voted_id,
                election_deadline_ms=self._election_deadline(now_ms),
            )
        return Unattached(
            epoch=election.epoch, election_deadline_ms=self._election_deadline(now_ms)
        )

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> EpochState:
        return self.quorum.state

    @property
    def epoch(self) -> int:
        return self.quorum.epoch

    def leader(self) -> LeaderAndEpoch:
        return LeaderAndEpoch(leader_id=self.quorum.active_leader_id(), epoch=self.quorum.epoch)

    def is_leader(self) -> bool:
        return isinstance(self.quorum.state, Leader)

    # ------------------------------------------------------------------ output

    def ready(self) -> Ready:
        """Everything the runtime must do now, in the order the module docstring gives."""
        messages = tuple(self._outbox)
        self._outbox.clear()
        dirty, self._log_dirty = self._log_dirty, False
        installed, self._snapshot_installed = self._snapshot_installed, None
        return Ready(
            election_state=self.quorum.take_unpersisted(),
            log_dirty=dirty,
            messages=messages,
            high_watermark=self.high_watermark,
            leader=self.leader(),
            snapshot_installed=installed,
        )

    def on_flushed(self, now_ms: int, end_offset: int) -> None:
        """The log is durable below `end_offset` (after a flush the runtime did)."""
        assert end_offset <= self.log.log_end_offset
        self._flushed_end_offset = end_offset
        if self.progress is not None:
            self._leader_update_local(now_ms)

    def next_deadline_ms(self) -> int:
        """When `tick` next has something to do."""
        state = self.quorum.state
        deadlines = [self._oldest_inflight_expiry()]
        if isinstance(state, (Unattached, Voted, Prospective, Candidate, Resigned)):
            deadlines.append(state.election_deadline_ms)
        # A backoff only matters while it lasts: once over, the tick that saw it over
        # sent the fetch. A passed one would make this deadline always due: the driver
        # would spin (forever under a mock clock, which never moves while it does).
        backing_off = self._fetch_backoff_until_ms > self._last_tick_ms
        if isinstance(state, Unattached) and not self.quorum.is_voter and backing_off:
            deadlines.append(self._fetch_backoff_until_ms)
        if isinstance(state, Follower):
            deadlines.append(state.fetch_deadline_ms)
            if backing_off:
                deadlines.append(self._fetch_backoff_until_ms)
        if isinstance(state, Leader):
            deadlines.append(self._begin_quorum_resend_ms)
            deadlines.append(self._next_check_quorum_ms())
        return min(deadlines)

    def _oldest_inflight_expiry(self) -> int:
        if not self._inflight:
            return 2**62
        return min(f.sent_ms for f in self._inflight.values()) + self.config.request_timeout_ms

    # ------------------------------------------------------------------ timers

    def tick(self, now_ms: int) -> None:
        self._last_tick_ms = now_ms
        self._expire_requests(now_ms)
        state = self.quorum.state
        if isinstance(state, Leader):
            self._leader_tick(now_ms)
        elif isinstance(state, Follower):
            if now_ms >= state.fetch_deadline_ms:
                self._leader_lost(now_ms)
            else:
                self._maybe_send_fetch(now_ms)
        elif isinstance(state, Candidate):
            if now_ms >= state.election_deadline_ms:
                self._candidacy_failed(now_ms)
        elif isinstance(state, Prospective):
            if now_ms >= state.election_deadline_ms:
                self._prevote_failed(now_ms)
        elif isinstance(state, (Unattached, Voted, Resigned)):
            if now_ms >= state.election_deadline_ms:
                self._election_timeout(now_ms)
            elif not self.quorum.is_voter:
                self._maybe_send_fetch(now_ms)

    def _expire_requests(self, now_ms: int) -> None:
        expired = [
            request_id
            for request_id, flight in self._inflight.items()
            if now_ms - flight.sent_ms >= self.config.request_timeout_ms
        ]
        for request_id in expired:
            self._request_failed(now_ms, request_id)

    def _election_timeout(self, now_ms: int) -> None:
        if not self.quorum.is_voter:
            # An observer never stands; it looks for the leader by asking any voter.
            self._reset_election_deadline(now_ms)
            self._maybe_send_fetch(now_ms)
            return
        self._start_prevote(now_ms)

    def _leader_lost(self, now_ms: int) -> None:
        if self.quorum.is_voter:
            self._start_prevote(now_ms)
        else:
            self._transition(Unattached(epoch=self.epoch, election_deadline_ms=now_ms))
            self._maybe_send_fetch(now_ms)

    # ------------------------------------------------------------------ elections

    def _start_prevote(self, now_ms: int) -> None:
        local = self.config.local_id
        self._transition(
            Prospective(
                epoch=self.epoch,
                leader_id=self.quorum.leader_id(),
                voted_id=self.quorum.voted_id(),
                granted=frozenset({local}),
                rejected=frozenset(),
                election_deadline_ms=self._election_deadline(now_ms),
            )
        )
        if self.epoch >= EPOCH_MAX:
            # No later epoch to stand in: wait out the pre-vote and go back to what we
            # were (a leader may still appear in this epoch).
            return
        if not self._maybe_win_prevote(now_ms):
            self._send_votes(now_ms, pre_vote=True)

    def _maybe_win_prevote(self, now_ms: int) -> bool:
        state = self.quorum.state
        assert isinstance(state, Prospective)
        if not self._is_majority(state.granted) or self.epoch >= EPOCH_MAX:
            return False
        local = self.config.local_id
        self._transition(
            Candidate(
                epoch=self.epoch + 1,
                granted=frozenset({local}),
                rejected=frozenset(),
                election_deadline_ms=self._election_deadline(now_ms),
            )
        )
        if not self._maybe_win_election(now_ms):
            self._send_votes(now_ms, pre_vote=False)
        return True

    def _maybe_win_election(self, now_ms: int) -> bool:
        state = self.quorum.state
        assert isinstance(state, Candidate)
        if not self._is_majority(state.granted):
            return False
        self._become_leader(now_ms)
        return True

    def _send_votes(self, now_ms: int, *, pre_vote: bool) -> None:
        state = self.quorum.state
        assert isinstance(state, (Prospective, Candidate))
        request = VoteRequest(
            cluster_id=self.config.cluster_id,
            candidate_epoch=self.epoch + 1 if pre_vote else self.epoch,
            candidate_id=self.config.local_id,
            last_offset_epoch=self.log.last_fetched_epoch(),
            last_offset=self.log.log_end_offset,
            pre_vote=pre_vote,
        )
        for voter in sorted(self.config.voters - {self.config.local_id}):
            self._send(now_ms, voter, request)

    def _prevote_failed(self, now_ms: int) -> None:
        """No majority would vote for us: go back to waiting, at the same epoch."""
        state = self.quorum.state
        assert isinstance(state, Prospective)
        deadline = self._election_deadline(now_ms)
        if state.leader_id == self.config.local_id:
            self._transition(
                Resigned(epoch=self.epoch, election_deadline_ms=deadline, preferred_successors=())
            )
        elif state.leader_id != NO_LEADER:
            # The old leader may be back: follow it again until it proves silent.
            self._transition(
                Follower(
                    epoch=self.epoch,
                    leader_id=state.leader_id,
                    fetch_deadline_ms=now_ms + self.config.fetch_timeout_ms,
                    voted_id=state.voted_id,
                )
            )
            self._maybe_send_fetch(now_ms)
        elif state.voted_id != NO_ID:
            self._transition(
                Voted(epoch=self.epoch, voted_id=state.voted_id, election_deadline_ms=deadline)
            )
        else:
            self._transition(Unattached(epoch=self.epoch, election_deadline_ms=deadline))

    def _candidacy_failed(self, now_ms: int) -> None:
        """Lost or split: back off at random, then ask for pre-votes again."""
        backoff = self.rng.randrange(self.config.election_backoff_max_ms + 1)
        self._transition(
            Voted(
                epoch=self.epoch,
                voted_id=self.config.local_id,
                election_deadline_ms=now_ms + backoff,
            )
        )

    def _become_leader(self, now_ms: int) -> None:
        epoch_start = self.log.log_end_offset
        self._transition(Leader(epoch=self.epoch, epoch_start_offset=epoch_start))
        offset = self.log.append_leader_change(self._leader_change_value(), self.epoch, now_ms)
        assert offset == epoch_start
        self._log_dirty = True
        self.progress = LeaderProgress(
            self.config.local_id, self.config.voters, epoch_start, now_ms
        )
        self.progress.high_watermark = self.high_watermark
        self._send_begin_quorum_epoch(now_ms)

    def _leader_change_value(self) -> bytes:
        voters = ",".join(str(voter) for voter in sorted(self.config.voters))
        return f"leader={self.config.local_id};voters={voters}".encode()

    def _send_begin_quorum_epoch(self, now_ms: int) -> None:
        assert self.progress is not None
        request = BeginQuorumEpochRequest(
            cluster_id=self.config.cluster_id,
            leader_epoch=self.epoch,
            leader_id=self.config.local_id,
        )
        for voter in sorted(self.config.voters - self.progress.begin_quorum_acked):
            if not self._has_inflight(voter, BeginQuorumEpochRequest):
                self._send(now_ms, voter, request)
        self._begin_quorum_resend_ms = now_ms + self.config.request_timeout_ms

    # ------------------------------------------------------------------ leader

    def propose(self, now_ms: int, values: Sequence[bytes]) -> int:
        """Append entries as the leader; return the offset of the last one."""
        if not isinstance(self.quorum.state, Leader):
            raise NotLeaderError(self.leader())
        if not values:
            raise ValueError("propose needs at least one entry")
        offset = self.log.append_as_leader(values, self.epoch, now_ms)
        self._log_dirty = True
        return offset

    def resign(self, now_ms: int) -> None:
        """Step down (graceful shutdown): tell the voters so they elect without waiting."""
        if not isinstance(self.quorum.state, Leader):
            return
        self._resign(now_ms)

    def _resign(self, now_ms: int) -> None:
        assert self.progress is not None
        successors = self.progress.successors_by_progress()
        self._transition(
            Resigned(
                epoch=self.epoch,
                election_deadline_ms=self._election_deadline(now_ms),
                preferred_successors=successors,
            )
        )
        request = EndQuorumEpochRequest(
            cluster_id=self.config.cluster_id,
            leader_epoch=self.epoch,
            leader_id=self.config.local_id,
            preferred_successors=successors,
        )
        for voter in successors:
            self._send(now_ms, voter, request)

    def _leader_tick(self, now_ms: int) -> None:
        assert self.progress is not None
        if not self.progress.quorum_heard_within(now_ms, self.config.check_quorum_timeout_ms):
            self._resign(now_ms)
            return
        if now_ms >= self._begin_quorum_resend_ms:
            self._send_begin_quorum_epoch(now_ms)

    def _next_check_quorum_ms(self) -> int:
        assert self.progress is not None
        voters = sorted(self.config.voters - {self.config.local_id})
        if not voters:
            return 2**62
        times = sorted((self.progress.replicas[v].last_fetch_ms for v in voters), reverse=True)
        # The quorum is lost when the (majority - 1)-th most recent fetch gets too old.
        needed = len(self.config.voters) // 2  # others needed besides ourselves
        return times[needed - 1] + self.config.check_quorum_timeout_ms + 1

    def _leader_update_local(self, now_ms: int) -> None:
        assert self.progress is not None
        if self.progress.update_local(self._flushed_end_offset, now_ms):
            self._set_high_watermark(self.progress.high_watermark)

    def _set_high_watermark(self, value: int) -> None:
        assert value >= self.high_watermark, (
            f"high-water mark moved back {self.high_watermark} -> {value}"
        )
        self.high_watermark = value

    # ------------------------------------------------------------------ requests

    def handle_request(self, now_ms: int, source: int, request: Request) -> Response:
        """Answer one request; call `ready()` and carry it out before sending the answer."""
        if request.cluster_id != self.config.cluster_id:
            return self._error_response(request, ErrorCode.INCONSISTENT_CLUSTER_ID)
        refusal = self._refusal(request)
        if refusal is not None:
            return self._error_response(request, refusal)
        if isinstance(request, VoteRequest):
            return self._handle_vote(now_ms, request)
        if isinstance(request, BeginQuorumEpochRequest):
            return self._handle_begin_quorum_epoch(now_ms, request)
        if isinstance(request, EndQuorumEpochRequest):
            return self._handle_end_quorum_epoch(now_ms, request)
        if isinstance(request, FetchRequest):
            return self._handle_fetch(now_ms, request)
        return self._handle_fetch_snapshot(now_ms, request)

    def _refusal(self, request: Request) -> int | None:
        """The error for a request no node may act on, or None (before any state changes).

        The ranges follow Kafka's KafkaRaftClient where it has them (a Vote's last
        epoch below the candidate's, a Fetch's last_fetched_epoch within [0,
        current_leader_epoch], else INVALID_REQUEST). No member sends itself a request,
        so one that claims to come from us is false (a Fetch in our name would move our
        own end offset in the leader's progress, and the high-water mark with it).
        """
        if _claimant(request) == self.config.local_id:
            return ErrorCode.INVALID_REQUEST
        if isinstance(request, VoteRequest):
            if not self.quorum.is_voter or request.candidate_id not in self.config.voters:
                return ErrorCode.INCONSISTENT_VOTER_SET
            # As Kafka's handleVoteRequest: a candidate's log holds nothing of the epoch
            # it stands in (it has not won it yet).
            if not (
                1 <= request.candidate_epoch <= EPOCH_MAX
                and 0 <= request.last_offset_epoch < request.candidate_epoch
                and request.last_offset >= 0
            ):
                return ErrorCode.INVALID_REQUEST
            return None
        if isinstance(request, (BeginQuorumEpochRequest, EndQuorumEpochRequest)):
            if request.leader_id not in self.config.voters:
                return ErrorCode.INCONSISTENT_VOTER_SET
            if not 1 <= request.leader_epoch <= EPOCH_MAX:
                return ErrorCode.INVALID_REQUEST
            if isinstance(request, BeginQuorumEpochRequest) and self._names_a_second_leader(
                request.leader_epoch, request.leader_id
            ):
                return ErrorCode.INVALID_REQUEST
            return None
        # Fetch and FetchSnapshot: observers fetch too, so any broker id is welcome.
        if request.replica_id < 0 or request.max_bytes < 0:
            return ErrorCode.INVALID_REQUEST
        if not 0 <= request.current_leader_epoch <= EPOCH_MAX:
            return ErrorCode.INVALID_REQUEST
        if isinstance(request, FetchRequest) and not (
            0 <= request.last_fetched_epoch <= request.current_leader_epoch
            and request.max_wait_ms >= 0
        ):
            return ErrorCode.INVALID_REQUEST
        return None

    def _names_a_second_leader(self, epoch: int, leader_id: int) -> bool:
        """Does (epoch, leader) contradict the leader we know for our epoch?

        Raft has one leader per epoch, so no honest peer says this; following it would
        break our own invariants, so it is refused rather than believed.
        """
        known = self.quorum.leader_id()
        return epoch == self.epoch and leader_id != NO_LEADER and known not in (NO_ID, leader_id)

    def _acceptable_response(self, response: Response) -> bool:
        """Can we act on what a response says of the epoch and its leader?"""
        return (
            0 <= response.leader_epoch <= EPOCH_MAX
            and (response.leader_id == NO_LEADER or response.leader_id in self.config.voters)
            and not self._names_a_second_leader(response.leader_epoch, response.leader_id)
        )

    def _error_response(self, request: Request, error: int) -> Response:
        if isinstance(request, VoteRequest):
            return self._vote_answer(error, granted=False)
        if isinstance(request, BeginQuorumEpochRequest):
            return self._epoch_answer(BeginQuorumEpochResponse, error)
        if isinstance(request, EndQuorumEpochRequest):
            return self._epoch_answer(EndQuorumEpochResponse, error)
        if isinstance(request, FetchRequest):
            return self._fetch_error(error)
        leader = self.leader()
        return FetchSnapshotResponse(
            error_code=error, leader_epoch=leader.epoch, leader_id=leader.leader_id
        )

    def _epoch_answer(
        self, kind: type[BeginQuorumEpochResponse] | type[EndQuorumEpochResponse], error: int
    ) -> Any:
        leader = self.leader()
        return kind(error_code=error, leader_epoch=leader.epoch, leader_id=leader.leader_id)

    def _fetch_answer(self, **fields: Any) -> FetchResponse:
        """A successful Fetch answer from this leader: records, a divergence or a snapshot."""
        return FetchResponse(
            error_code=ErrorCode.NONE,
            leader_epoch=self.epoch,
            leader_id=self.config.local_id,
            high_watermark=self.high_watermark,
            log_start_offset=self.log.log_start_offset,
            **fields,
        )

    def _fetch_error(self, error: int) -> FetchResponse:
        leader = self.leader()
        return FetchResponse(
            error_code=error,
            leader_epoch=leader.epoch,
            leader_id=leader.leader_id,
            high_watermark=self.high_watermark,
            log_start_offset=self.log.log_start_offset,
        )

    def _log_is_up_to_date(self, last_offset_epoch: int, last_offset: int) -> bool:
        ours = (self.log.last_fetched_epoch(), self.log.log_end_offset)
        return (last_offset_epoch, last_offset) >= ours

    def _handle_vote(self, now_ms: int, request: VoteRequest) -> VoteResponse:
        if request.candidate_epoch < self.epoch:
            return self._vote_answer(ErrorCode.FENCED_LEADER_EPOCH, granted=False)
        up_to_date = self._log_is_up_to_date(request.last_offset_epoch, request.last_offset)
        if request.pre_vote:
            return self._vote_answer(
                ErrorCode.NONE, granted=up_to_date and not self._has_live_leader(now_ms)
            )
        if request.candidate_epoch > self.epoch:
            self._transition(
                Unattached(
                    epoch=request.candidate_epoch,
                    election_deadline_ms=self._election_deadline(now_ms),
                )
            )
        state = self.quorum.state
        if isinstance(state, Voted):
            return self._vote_answer(ErrorCode.NONE, granted=state.voted_id == request.candidate_id)
        can_vote = isinstance(state, Unattached) or (
            isinstance(state, Prospective)
            and state.voted_id == NO_ID
            and state.leader_id == NO_LEADER
        )
        if not can_vote or not up_to_date:
            return self._vote_answer(ErrorCode.NONE, granted=False)
        self._transition(
            Voted(
                epoch=self.epoch,
                voted_id=request.candidate_id,
                election_deadline_ms=self._election_deadline(now_ms),
            )
        )
        return self._vote_answer(ErrorCode.NONE, granted=True)

    def _has_live_leader(self, now_ms: int) -> bool:
        state = self.quorum.state
        if isinstance(state, Leader):
            return True
        return isinstance(state, Follower) and now_ms < state.fetch_deadline_ms

    def _vote_answer(self, error: int, *, granted: bool) -> VoteResponse:
        leader = self.leader()
        return VoteResponse(
            error_code=error,
            leader_epoch=leader.epoch,
            leader_id=leader.leader_id,
            vote_granted=granted,
        )

    def _handle_begin_quorum_epoch(
        self, now_ms: int, request: BeginQuorumEpochRequest
    ) -> BeginQuorumEpochResponse:
        if request.leader_epoch < self.epoch:
            return self._epoch_answer(BeginQuorumEpochResponse, ErrorCode.FENCED_LEADER_EPOCH)
        self._learn_leader(now_ms, request.leader_epoch, request.leader_id)
        return self._epoch_answer(BeginQuorumEpochResponse, ErrorCode.NONE)

    def _handle_end_quorum_epoch(
        self, now_ms: int, request: EndQuorumEpochRequest
    ) -> EndQuorumEpochResponse:
        if request.leader_epoch < self.epoch:
            return self._epoch_answer(EndQuorumEpochResponse, ErrorCode.FENCED_LEADER_EPOCH)
        state = self.quorum.state
        if request.leader_epoch > self.epoch:
            self._transition(
                Unattached(
                    epoch=request.leader_epoch, election_deadline_ms=self._election_deadline(now_ms)
                )
            )
        elif isinstance(state, Follower) and state.leader_id == request.leader_id:
            # The leader resigned. Its most caught-up successor stands at once; the
            # others wait longer the further down the list they are.
            successors = request.preferred_successors
            position = (
                successors.index(self.config.local_id)
                if self.config.local_id in successors
                else len(successors)
            )
            backoff = 0 if position == 0 else self._position_backoff_ms(position)
            # Stay a follower of this epoch (never forget its leader), but stop waiting
            # for it: the fetch deadline is what starts the election.
            self._transition(attrs.evolve(state, fetch_deadline_ms=now_ms + backoff))
        return self._epoch_answer(EndQuorumEpochResponse, ErrorCode.NONE)

    def _position_backoff_ms(self, position: int) -> int:
        base = self.config.election_backoff_max_ms
        return min(
            base, base * position // max(1, len(self.config.voters) - 1)
        ) + self.rng.randrange(self.config.retry_backoff_ms + 1)

    def _handle_fetch(self, now_ms: int, request: FetchRequest) -> FetchResponse:
        state = self.quorum.state
        if request.current_leader_epoch > self.epoch:
            return self._fetch_error(ErrorCode.UNKNOWN_LEADER_EPOCH)
        if not isinstance(state, Leader):
            return self._fetch_error(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        if request.current_leader_epoch < self.epoch:
            return self._fetch_error(ErrorCode.FENCED_LEADER_EPOCH)
        assert self.progress is not None
        if request.fetch_offset < 0:
            return self._fetch_error(ErrorCode.OFFSET_OUT_OF_RANGE)
        snapshot = self.log.latest_snapshot_id()
        if self._needs_snapshot(request.fetch_offset, request.last_fetched_epoch, snapshot):
            if snapshot is None:
                return self._fetch_error(ErrorCode.OFFSET_OUT_OF_RANGE)
            self.progress.touch(request.replica_id, now_ms)
            return self._fetch_answer(snapshot_id=snapshot)
        diverging = self._diverging_epoch(request.fetch_offset, request.last_fetched_epoch)
        if diverging is not None:
            return self._fetch_answer(diverging_epoch=diverging)
        if self.progress.update_replica(
            request.replica_id, request.fetch_offset, self.log.log_end_offset, now_ms
        ):
            self._set_high_watermark(self.progress.high_watermark)
        records = b""
        if request.fetch_offset < self.log.log_end_offset:
            records = self.log.read(
                request.fetch_offset, min(request.max_bytes, self.config.fetch_max_bytes)
            )
        return self._fetch_answer(records=records)

    def _handle_fetch_snapshot(
        self, now_ms: int, request: FetchSnapshotRequest
    ) -> FetchSnapshotResponse:
        leader = self.leader()

        def answer(error: int, **fields: Any) -> FetchSnapshotResponse:
            return FetchSnapshotResponse(
                error_code=error, leader_epoch=leader.epoch, leader_id=leader.leader_id, **fields
            )

        if request.current_leader_epoch > self.epoch:
            return answer(ErrorCode.UNKNOWN_LEADER_EPOCH)
        if not isinstance(self.quorum.state, Leader):
            return answer(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        if request.current_leader_epoch < self.epoch:
            return answer(ErrorCode.FENCED_LEADER_EPOCH)
        assert self.progress is not None
        if request.position < 0:
            return answer(ErrorCode.POSITION_OUT_OF_RANGE)
        chunk = self.log.read_snapshot_chunk(
            request.snapshot_id,
            request.position,
            min(request.max_bytes, self.config.fetch_max_bytes),
        )
        if chunk is None:
            return answer(ErrorCode.SNAPSHOT_NOT_FOUND)
        data, size = chunk
        if request.position > size:
            return answer(ErrorCode.POSITION_OUT_OF_RANGE)
        self.progress.touch(request.replica_id, now_ms)
        return answer(
            ErrorCode.NONE,
            snapshot_id=request.snapshot_id,
            size=size,
            position=request.position,
            unaligned_records=data,
        )

    def _needs_snapshot(
        self, fetch_offset: int, last_fetched_epoch: int, snapshot: OffsetAndEpoch | None
    ) -> bool:
        """Must the fetcher start over from our snapshot? (Kafka's validateOffsetAndEpoch)

        Below our log start, plainly yes. But also when its last epoch is older than
        the snapshot's, or it stands at our log start with another epoch: we no longer
        hold the entries that would tell where its log stopped agreeing with ours, and
        a divergence answer would let it keep stale entries below our log start.
        """
        log_start = self.log.log_start_offset
        if fetch_offset < log_start:
            return True
        if snapshot is None:
            return False
        return last_fetched_epoch < snapshot.epoch or (
            fetch_offset == log_start and last_fetched_epoch != snapshot.epoch
        )

    def _diverging_epoch(self, fetch_offset: int, last_fetched_epoch: int) -> OffsetAndEpoch | None:
        """Where the fetcher's log stops agreeing with ours, if it does (KIP-595)."""
        if fetch_offset == 0 and last_fetched_epoch == 0:
            return None  # an empty log agrees with everything
        end = self.log.end_offset_for_epoch(last_fetched_epoch)
        if end.epoch != last_fetched_epoch or end.offset < fetch_offset:
            return OffsetAndEpoch(offset=max(0, end.offset), epoch=max(0, end.epoch))
        return None

    # ------------------------------------------------------------------ responses

    def handle_response(self, now_ms: int, inbound: Inbound) -> None:
        flight = self._inflight.pop(inbound.request_id, None)
        if flight is None or flight.destination != inbound.source:
            return  # a late answer to a request we already gave up on
        response = inbound.response
        if response is None:
            self._request_failed(now_ms, inbound.request_id, flight)
            if inbound.unreachable and isinstance(flight.request, FetchRequest):
                self._leader_unreachable(now_ms, inbound.source)
            return
        if response.error_code == ErrorCode.INCONSISTENT_CLUSTER_ID or not (
            self._acceptable_response(response)
        ):
            self._request_failed(now_ms, inbound.request_id, flight)
            return
        if self._maybe_follow_newer(now_ms, response.leader_epoch, response.leader_id):
            if isinstance(flight.request, FetchRequest) and isinstance(self.quorum.state, Follower):
                self._maybe_send_fetch(now_ms)
            return
        if isinstance(flight.request, VoteRequest):
            assert isinstance(response, VoteResponse)
            self._handle_vote_response(now_ms, inbound.source, flight.request, response)
        elif isinstance(flight.request, FetchRequest):
            assert isinstance(response, FetchResponse)
            self._handle_fetch_response(now_ms, inbound.source, response)
        elif isinstance(flight.request, FetchSnapshotRequest):
            assert isinstance(response, FetchSnapshotResponse)
            self._handle_fetch_snapshot_response(now_ms, inbound.source, response)
        elif (
            isinstance(flight.request, BeginQuorumEpochRequest)
            and response.error_code == ErrorCode.NONE
            and self.progress is not None
            and flight.request.leader_epoch == self.epoch
        ):
            self.progress.begin_quorum_acked.add(inbound.source)

    def _request_failed(
        self, now_ms: int, request_id: int, flight: _InFlight | None = None
    ) -> None:
        flight = flight or self._inflight.pop(request_id, None)
        if flight is None:
            return
        if isinstance(flight.request, (FetchRequest, FetchSnapshotRequest)):
            self._fetch_backoff_until_ms = now_ms + self.config.retry_backoff_ms
        # Votes and BeginQuorumEpoch are not retried one by one: the election timeout and
        # the leader's resend timer send fresh ones.

    def _leader_unreachable(self, now_ms: int, source: int) -> None:
        """The leader's process refuses connections: do not wait out the fetch timeout.

        An observer starts looking for the new leader at once.
        The new deadline is random within one election timeout so that the followers
        do not all stand at once; pre-vote keeps this harmless if the leader is in fact
        alive for the others, since they refuse to pre-vote while they hear from it.
        """
        state = self.quorum.state
        if not isinstance(state, Follower) or state.leader_id != source:
            return
        if not self.quorum.is_voter:
            # An observer stands for nothing: it goes straight to asking the voters.
            self._leader_lost(now_ms)
            return
        deadline = now_ms + self.rng.randrange(self.config.election_timeout_ms)
        if deadline < state.fetch_deadline_ms:
            self._transition(attrs.evolve(state, fetch_deadline_ms=deadline))

    def _maybe_follow_newer(self, now_ms: int, epoch: int, leader_id: int) -> bool:
        """A peer knows a newer epoch, or the leader of ours: follow it. True if we moved."""
        if epoch > self.epoch or (
            epoch == self.epoch and leader_id not in (NO_LEADER, self.quorum.leader_id())
        ):
            self._learn_leader(now_ms, epoch, leader_id)
            return True
        return False

    def _learn_leader(self, now_ms: int, epoch: int, leader_id: int) -> None:
        state = self.quorum.state
        if leader_id == NO_LEADER or leader_id == self.config.local_id:
            if epoch > self.epoch:
                self._transition(
                    Unattached(epoch=epoch, election_deadline_ms=self._election_deadline(now_ms))
                )
            return
        if isinstance(state, Follower) and state.epoch == epoch and state.leader_id == leader_id:
            return
        assert not (isinstance(state, (Leader, Resigned)) and state.epoch == epoch), (
            f"node {self.config.local_id} led epoch {epoch} but {leader_id} claims it too"
        )
        voted_id = self.quorum.voted_id() if epoch == self.epoch else NO_ID
        self._transition(
            Follower(
                epoch=epoch,
                leader_id=leader_id,
                fetch_deadline_ms=now_ms + self.config.fetch_timeout_ms,
                voted_id=voted_id,
            )
        )
        self._maybe_send_fetch(now_ms)

    def _handle_vote_response(
        self, now_ms: int, source: int, request: VoteRequest, response: VoteResponse
    ) -> None:
        state = self.quorum.state
        if request.pre_vote:
            if isinstance(state, Prospective) and request.candidate_epoch == self.epoch + 1:
                self._tally(state, source, response.vote_granted, now_ms)
        elif isinstance(state, Candidate) and request.candidate_epoch == self.epoch:
            self._tally(state, source, response.vote_granted, now_ms)

    def _tally(
        self, state: Prospective | Candidate, source: int, granted: bool, now_ms: int
    ) -> None:
        """Count one (pre-)vote; win or give up as soon as a majority has spoken."""
        if granted:
            self._transition(attrs.evolve(state, granted=state.granted | {source}))
            if isinstance(state, Prospective):
                self._maybe_win_prevote(now_ms)
            else:
                self._maybe_win_election(now_ms)
            return
        state = attrs.evolve(state, rejected=state.rejected | {source})
        self._transition(state)
        if self._is_majority(state.rejected):
            if isinstance(state, Prospective):
                self._prevote_failed(now_ms)
            else:
                self._candidacy_failed(now_ms)

    def _handle_fetch_response(self, now_ms: int, source: int, response: FetchResponse) -> None:
        state = self.quorum.state
        if not isinstance(state, Follower) or source != state.leader_id:
            # Asked someone who does not lead (an observer looking for the leader):
            # try again shortly, not in a tight loop.
            self._fetch_backoff_until_ms = now_ms + self.config.retry_backoff_ms
            return
        if response.error_code != ErrorCode.NONE:
            self._fetch_backoff_until_ms = now_ms + self.config.retry_backoff_ms
            return
        self._transition(
            attrs.evolve(state, fetch_deadline_ms=now_ms + self.config.fetch_timeout_ms)
        )
        if response.snapshot_id is not None:
            # Our log ends before the leader's starts: copy its snapshot first.
            self._snapshot_fetch = response.snapshot_id
            self._snapshot_position = 0
        elif response.diverging_epoch is not None:
            self._truncate_to_divergence(response.diverging_epoch)
        else:
            # The leader accepted our fetch offset and epoch, so our log agrees with its
            # up to there: only now may its high-water mark become ours.
            if response.records:
                self.log.append_as_follower(response.records)
                self._log_dirty = True
            leader_hwm = min(response.high_watermark, self.log.log_end_offset)
            if leader_hwm > self.high_watermark:
                self._set_high_watermark(leader_hwm)
        self._maybe_send_fetch(now_ms)

    def _handle_fetch_snapshot_response(
        self, now_ms: int, source: int, response: FetchSnapshotResponse
    ) -> None:
        state = self.quorum.state
        wanted = self._snapshot_fetch
        if not isinstance(state, Follower) or source != state.leader_id or wanted is None:
            return
        if response.error_code != ErrorCode.NONE or response.snapshot_id != wanted:
            # Gone or replaced by a newer one: a plain Fetch will name the current one.
            self._snapshot_fetch = None
            self._fetch_backoff_until_ms = now_ms + self.config.retry_backoff_ms
            return
        self._transition(
            attrs.evolve(state, fetch_deadline_ms=now_ms + self.config.fetch_timeout_ms)
        )
        self._snapshot_position = self.log.write_snapshot_chunk(
            wanted, response.position, response.unaligned_records
        )
        if self._snapshot_position >= response.size:
            self.log.install_fetched_snapshot(wanted)
            self._snapshot_fetch = None
            self._flushed_end_offset = self.log.log_end_offset
            self._log_dirty = True
            self._snapshot_installed = wanted
            # A snapshot is only ever taken of committed entries.
            if wanted.offset > self.high_watermark:
                self._set_high_watermark(wanted.offset)
        self._maybe_send_fetch(now_ms)

    def _truncate_to_divergence(self, diverging: OffsetAndEpoch) -> None:
        local = self.log.end_offset_for_epoch(diverging.epoch)
        target = diverging.offset if local.epoch < 0 else min(diverging.offset, local.offset)
        target = max(target, self.log.log_start_offset)
        assert target >= self.high_watermark, (
            f"node {self.config.local_id}: told to truncate to {target}, below the "
            f"committed {self.high_watermark}"
        )
        if target < self.log.log_end_offset:
            self.log.truncate_to(target)
            self._flushed_end_offset = min(self._flushed_end_offset, self.log.log_end_offset)
            self._log_dirty = True

    # ------------------------------------------------------------------ fetching

    def _maybe_send_fetch(self, now_ms: int) -> None:
        state = self.quorum.state
        if isinstance(state, Follower):
            destination = state.leader_id
        elif not self.quorum.is_voter and isinstance(state, Unattached):
            # An observer without a leader asks a random voter, who names the leader.
            destination = self.rng.choice(sorted(self.config.voters))
        else:
            return
        if now_ms < self._fetch_backoff_until_ms:
            return
        if self._has_inflight(None, FetchRequest) or self._has_inflight(None, FetchSnapshotRequest):
            return
        if self._snapshot_fetch is not None and isinstance(state, Follower):
            self._send(
                now_ms,
                destination,
                FetchSnapshotRequest(
                    cluster_id=self.config.cluster_id,
                    replica_id=self.config.local_id,
                    current_leader_epoch=self.epoch,
                    snapshot_id=self._snapshot_fetch,
                    position=self._snapshot_position,
                    max_bytes=self.config.fetch_max_bytes,
                ),
            )
            return
        self._send(
            now_ms,
            destination,
            FetchRequest(
                cluster_id=self.config.cluster_id,
                replica_id=self.config.local_id,
                current_leader_epoch=self.epoch,
                fetch_offset=self.log.log_end_offset,
                last_fetched_epoch=self.log.last_fetched_epoch(),
                max_bytes=self.config.fetch_max_bytes,
                max_wait_ms=self.config.fetch_max_wait_ms,
            ),
        )

    # ------------------------------------------------------------------ plumbing

    def _send(self, now_ms: int, destination: int, request: Request) -> None:
        # Only voters have addresses; a peer's claim never makes us talk to anyone else.
        assert destination in self.config.voters, f"request to non-voter {destination}"
        request_id = self._next_request_id
        self._next_request_id += 1
        self._inflight[request_id] = _InFlight(destination, request, now_ms)
        self._outbox.append(
            Outbound(destination=destination, request_id=request_id, request=request)
        )

    def _has_inflight(self, destination: int | None, kind: type) -> bool:
        return any(
            isinstance(flight.request, kind) and destination in (None, flight.destination)
            for flight in self._inflight.values()
        )

    def _transition(self, new_state: EpochState) -> None:
        old = self.quorum.state
        self.quorum.transition_to(new_state)
        if isinstance(old, Leader) and not isinstance(new_state, Leader):
            self.progress = None
        if type(old) is not type(new_state) or old.epoch != new_state.epoch:
            # Requests of the old role (votes, fetches to the old leader) are moot.
            self._inflight = {
                request_id: flight
                for request_id, flight in self._inflight.items()
                if self._still_relevant(flight.request, new_state)
            }

    @staticmethod
    def _still_relevant(request: Request, state: EpochState) -> bool:
        if isinstance(request, VoteRequest):
            return isinstance(state, (Prospective, Candidate))
        if isinstance(request, (FetchRequest, FetchSnapshotRequest)):
            return (
                isinstance(state, (Follower, Unattached))
                and request.current_leader_epoch == state.epoch
            )
        if isinstance(request, BeginQuorumEpochRequest):
            return isinstance(state, Leader)
        return True

    def _is_majority(self, members: frozenset[int]) -> bool:
        return len(members & self.config.voters) > len(self.config.voters) // 2

    def _election_deadline(self, now_ms: int) -> int:
        timeout = self.config.election_timeout_ms
        return now_ms + timeout + self.rng.randrange(timeout)

    def _reset_election_deadline(self, now_ms: int) -> None:
        state = self.quorum.state
        if isinstance(state, (Unattached, Voted)):
            self._transition(
                attrs.evolve(state, election_deadline_ms=self._election_deadline(now_ms))
            )
