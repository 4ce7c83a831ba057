"""What a leader knows about each replica, and the high-water mark it implies.

Followers pull (KIP-595): a Fetch at offset N tells the leader that the follower holds
everything below N durably (it flushes before fetching). The high-water mark is the
largest offset a majority of voters hold, counting the leader's own flushed end, and
it only moves once it passes the start of the leader's epoch: entries of an older
epoch are committed indirectly, by committing one of the current epoch (Raft section
5.4.2). It never moves back.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True)
class ReplicaProgress:
    replica_id: int
    end_offset: int = -1  # unknown until the first fetch
    last_fetch_ms: int = -1
    last_caught_up_ms: int = -1


def majority_end_offset(voter_end_offsets: list[int]) -> int:
    """The largest offset that a majority of the given voters have reached."""
    ordered = sorted(voter_end_offsets, reverse=True)
    return ordered[len(ordered) // 2]


def next_high_watermark(current: int, voter_end_offsets: list[int], epoch_start_offset: int) -> int:
    """The high-water mark after an update: majority-held, in this epoch, never lower."""
    candidate = majority_end_offset(voter_end_offsets)
    if candidate > epoch_start_offset and candidate > current:
        return candidate
    return current


class LeaderProgress:
    """Per-replica fetch state for one leader epoch."""

    def __init__(
        self, local_id: int, voters: frozenset[int], epoch_start_offset: int, now_ms: int
    ) -> None:
        self.local_id = local_id
        self.voters = voters
        self.epoch_start_offset = epoch_start_offset
        self.high_watermark = 0
        self.replicas: dict[int, ReplicaProgress] = {
            voter: ReplicaProgress(voter) for voter in sorted(voters)
        }
        # Check-quorum counts from the start of the epoch, not from never.
        for replica in self.replicas.values():
            replica.last_fetch_ms = now_ms
        self.begin_quorum_acked: set[int] = {local_id}

    def observers(self) -> list[ReplicaProgress]:
        return [r for r in self.replicas.values() if r.replica_id not in self.voters]

    def update_local(self, flushed_end_offset: int, now_ms: int) -> bool:
        local = self.replicas[self.local_id]
        local.end_offset = flushed_end_offset
        local.last_fetch_ms = now_ms
        local.last_caught_up_ms = now_ms
        return self._recompute()

    def update_replica(
        self, replica_id: int, fetch_offset: int, leader_end_offset: int, now_ms: int
    ) -> bool:
        """Record a fetch; True if the high-water mark moved."""
        replica = self.replicas.get(replica_id)
        if replica is None:
            replica = self.replicas[replica_id] = ReplicaProgress(replica_id)
        # A follower that truncated fetches from lower down: believe it; the
        # high-water mark never follows it back (next_high_watermark).
        replica.end_offset = fetch_offset
        replica.last_fetch_ms = now_ms
        if fetch_offset >= leader_end_offset:
            replica.last_caught_up_ms = now_ms
        if replica_id in self.voters:
            self.begin_quorum_acked.add(replica_id)
            return self._recompute()
        return False

    def touch(self, replica_id: int, now_ms: int) -> None:
        """The replica is alive (copying a snapshot) though its log end is not known."""
        replica = self.replicas.setdefault(replica_id, ReplicaProgress(replica_id))
        replica.last_fetch_ms = now_ms

    def _recompute(self) -> bool:
        offsets = [self.replicas[voter].end_offset for voter in sorted(self.voters)]
        new = next_high_watermark(self.high_watermark, offsets, self.epoch_start_offset)
        moved = new != self.high_watermark
        self.high_watermark = new
        return moved

    def quorum_heard_within(self, now_ms: int, timeout_ms: int) -> bool:
        """Check-quorum: has a majority of voters (self included) fetched recently?"""
        recent = sum(
            1
            for voter in self.voters
            if voter == self.local_id or now_ms - self.replicas[voter].last_fetch_ms <= timeout_ms
        )
        return recent > len(self.voters) // 2

    def successors_by_progress(self) -> tuple[int, ...]:
        """Other voters, most caught-up first: who should lead after us (EndQuorumEpoch)."""
        others = [r for r in self.replicas.values() if r.replica_id in self.voters]
        others = [r for r in others if r.replica_id != self.local_id]
        others.sort(key=lambda r: (-r.end_offset, r.replica_id))
        return tuple(r.replica_id for r in others)
