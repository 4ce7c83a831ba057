"""Epoch states of a quorum member and the one table of legal transitions.

Like Kafka's QuorumState with one class per EpochState, plus Prospective for pre-vote
(KIP-996). Every transition goes through `QuorumState.transition_to`, which checks it
against `ALLOWED_TRANSITIONS` and the epoch rules; an illegal one is a bug in the core
and fails an assertion rather than continuing in an unknown state.

What must survive a restart is `ElectionState` (epoch, voted-for, leader): the
runtime writes it to `quorum-state` before any message that depends on it is sent.
"""

from __future__ import annotations

import attrs

from kraft.raft.messages import EPOCH_MAX

NO_ID = -1


@attrs.frozen(kw_only=True, slots=True)
class ElectionState:
    epoch: int
    voted_id: int = NO_ID
    leader_id: int = NO_ID

    def problem(self, voters: frozenset[int] | None) -> str | None:
        """Why no member of a quorum with these voters could act on this state, if so.

        A leader is a voter, a vote goes to a voter and an epoch stays within the
        int32 range a node can stand in (issue 14). With `voters` None (unknown), only
        the epoch is checked.
        """
        if not 0 <= self.epoch <= EPOCH_MAX:
            return f"epoch {self.epoch} is outside [0, {EPOCH_MAX}]"
        if voters is None:
            return None
        if self.leader_id != NO_ID and self.leader_id not in voters:
            return f"leader {self.leader_id} is not a voter ({sorted(voters)})"
        if self.voted_id != NO_ID and self.voted_id not in voters:
            return f"vote for {self.voted_id}, not a voter ({sorted(voters)})"
        return None


@attrs.frozen(kw_only=True, slots=True)
class Unattached:
    """Knows the epoch but no leader, and has not voted in it."""

    epoch: int
    election_deadline_ms: int


@attrs.frozen(kw_only=True, slots=True)
class Voted:
    """Has granted its vote in this epoch (persisted) and waits for a leader."""

    epoch: int
    voted_id: int
    election_deadline_ms: int


@attrs.frozen(kw_only=True, slots=True)
class Prospective:
    """Asking for pre-votes: would a majority vote for it in epoch + 1? (KIP-996)."""

    epoch: int
    # What it knew before it started asking: kept so that a lost pre-vote goes back
    # to following the same leader, or to the same vote.
    leader_id: int
    voted_id: int
    granted: frozenset[int]
    rejected: frozenset[int]
    election_deadline_ms: int


@attrs.frozen(kw_only=True, slots=True)
class Candidate:
    """Voted for itself in `epoch` (persisted) and asks the others for their votes."""

    epoch: int
    granted: frozenset[int]
    rejected: frozenset[int]
    election_deadline_ms: int


@attrs.frozen(kw_only=True, slots=True)
class Leader:
    epoch: int
    # Offset of this epoch's leader-change record: the high-water mark only moves
    # once it passes this, i.e. once something of this epoch is committed.
    epoch_start_offset: int


@attrs.frozen(kw_only=True, slots=True)
class Follower:
    epoch: int
    leader_id: int
    # No successful Fetch from the leader by then: it may be gone.
    fetch_deadline_ms: int
    # A vote given in this epoch before the leader was known is kept: forgetting it
    # would let this node vote again in the same epoch.
    voted_id: int = NO_ID


@attrs.frozen(kw_only=True, slots=True)
class Resigned:
    """Was leader of `epoch` and stepped down (shutdown or lost the quorum)."""

    epoch: int
    election_deadline_ms: int
    preferred_successors: tuple[int, ...]


EpochState = Unattached | Voted | Prospective | Candidate | Leader | Follower | Resigned

# to-state -> the states it may be entered from. Epoch rules on top: the epoch never
# goes down; see `_check_epoch`.
ALLOWED_TRANSITIONS: dict[type, frozenset[type]] = {
    Unattached: frozenset({Unattached, Voted, Prospective, Candidate, Leader, Follower, Resigned}),
    Voted: frozenset({Unattached, Voted, Prospective, Candidate, Leader, Follower, Resigned}),
    Prospective: frozenset({Unattached, Voted, Prospective, Follower, Candidate, Resigned}),
    Candidate: frozenset({Unattached, Voted, Prospective, Candidate, Follower, Resigned}),
    Leader: frozenset({Candidate}),
    Follower: frozenset({Unattached, Voted, Prospective, Candidate, Leader, Follower, Resigned}),
    Resigned: frozenset({Leader, Prospective}),
}
VOTER_ONLY_STATES = (Voted, Prospective, Candidate, Leader, Resigned)


class QuorumState:
    """Owns the current epoch state of one member; every change goes through here."""

    def __init__(self, local_id: int, voters: frozenset[int], initial: EpochState) -> None:
        self.local_id = local_id
        self.voters = voters
        self._state: EpochState = initial
        self._check_role(initial)
        # Set when the persisted part changed; the runtime writes it before sending.
        self.unpersisted: ElectionState | None = None

    @property
    def state(self) -> EpochState:
        return self._state

    @property
    def epoch(self) -> int:
        return self._state.epoch

    @property
    def is_voter(self) -> bool:
        return self.local_id in self.voters

    def leader_id(self) -> int:
        """The leader this member knows of in its epoch, even if it stopped hearing it."""
        state = self._state
        if isinstance(state, (Leader, Resigned)):
            return self.local_id
        if isinstance(state, (Follower, Prospective)):
            return state.leader_id
        return NO_ID

    def active_leader_id(self) -> int:
        """The leader to send requests to now: none while resigned or electing."""
        state = self._state
        if isinstance(state, Leader):
            return self.local_id
        if isinstance(state, Follower):
            return state.leader_id
        return NO_ID

    def voted_id(self) -> int:
        state = self._state
        if isinstance(state, (Voted, Follower)):
            return state.voted_id
        if isinstance(state, (Candidate, Leader, Resigned)):
            return self.local_id  # it stood in this epoch, so it voted for itself
        if isinstance(state, Prospective):
            return state.voted_id
        return NO_ID

    def election_state(self) -> ElectionState:
        return ElectionState(epoch=self.epoch, voted_id=self.voted_id(), leader_id=self.leader_id())

    def transition_to(self, new_state: EpochState) -> None:
        old = self._state
        allowed_from = ALLOWED_TRANSITIONS[type(new_state)]
        assert type(old) in allowed_from, (
            f"node {self.local_id}: illegal transition {type(old).__name__} -> "
            f"{type(new_state).__name__}"
        )
        self._check_epoch(old, new_state)
        self._check_role(new_state)
        before = self.election_state()
        self._state = new_state
        after = self.election_state()
        if after.epoch == before.epoch and self.is_voter:
            # Within one epoch a vote and a leader, once known, are never forgotten
            # or replaced: that is what keeps it to one leader per epoch. An observer
            # votes for no one, so it may forget a leader it lost touch with and go
            # looking for the current one among the voters.
            for field in ("voted_id", "leader_id"):
                old_value, new_value = getattr(before, field), getattr(after, field)
                assert old_value in (NO_ID, new_value), (
                    f"node {self.local_id}: {field} changed from {old_value} to {new_value} "
                    f"within epoch {after.epoch} ({type(new_state).__name__})"
                )
        if after != before:
            self.unpersisted = after

    def _check_epoch(self, old: EpochState, new: EpochState) -> None:
        assert new.epoch >= old.epoch, (
            f"node {self.local_id}: epoch went back from {old.epoch} to {new.epoch}"
        )
        if isinstance(new, Leader):
            assert isinstance(old, Candidate) and new.epoch == old.epoch
        elif isinstance(new, Candidate) and isinstance(old, Candidate):
            assert new.epoch == old.epoch, "a candidate counts votes within one epoch"
        elif isinstance(new, Candidate):
            # A candidacy always opens a new epoch.
            assert new.epoch > old.epoch, f"candidate epoch {new.epoch} not above {old.epoch}"
        if isinstance(old, Voted) and isinstance(new, Voted) and new.epoch == old.epoch:
            assert new.voted_id == old.voted_id, "a vote, once given in an epoch, never changes"
        if (
            isinstance(old, (Leader, Follower))
            and isinstance(new, Follower)
            and new.epoch == old.epoch
        ):
            assert isinstance(old, Follower) and old.leader_id == new.leader_id, (
                f"two leaders in epoch {new.epoch}"
            )
        if isinstance(new, Prospective):
            assert new.epoch == old.epoch, "a pre-vote does not change the epoch"

    def _check_role(self, state: EpochState) -> None:
        if isinstance(state, VOTER_ONLY_STATES):
            assert self.is_voter, f"observer {self.local_id} cannot be {type(state).__name__}"
        if isinstance(state, Voted):
            assert state.voted_id in self.voters, f"vote for non-voter {state.voted_id}"
        # The negative space of the core's checks on what peers say (issue 14): a state
        # no node could act on (follow a non-voter, stand past the last epoch) is never
        # entered, so it is never persisted either.
        if isinstance(state, Follower):
            assert state.leader_id in self.voters, f"following non-voter {state.leader_id}"
        assert 0 <= state.epoch <= EPOCH_MAX, f"epoch {state.epoch} outside [0, {EPOCH_MAX}]"

    def take_unpersisted(self) -> ElectionState | None:
        pending, self.unpersisted = self.unpersisted, None
        return pending
