"""What a partition leader knows of its followers, and the rules built on it (pure).

- A follower's log end offset is the offset it last fetched from: it holds everything
  below it.
- It is *caught up* at a fetch that reaches the leader's log end, or, failing that, at
  the time of its previous fetch if it now reaches the log end the leader had then
  (Kafka's Replica.updateFetchState): a follower that keeps up with a busy leader is
  never "behind" only because records keep arriving.
- The high-water mark is the smallest log end offset over the ISR, leader included; it
  counts the larger ISR while a change is in flight (KIP-497), and never moves back.
- The leader asks to drop a follower from the ISR once it has not been caught up for
  `replica_lag_time_max_ms`, and to add one back once it has reached the high-water
  mark and the leader's epoch start (so it holds everything the leader committed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

# Kafka's replica.lag.time.max.ms.
REPLICA_LAG_TIME_MAX_MS = 30_000


@attrs.define(slots=True)
class FollowerState:
    log_end_offset: int = -1  # unknown until its first fetch in this leader epoch
    last_caught_up_ms: int = -1
    last_fetch_ms: int = -1
    # The leader's log end at the previous fetch, and when it happened.
    last_fetch_leader_end: int = -1
    previous_fetch_ms: int = -1
    broker_epoch: int = -1  # the incarnation that fetched (KIP-903)


def record_fetch(state: FollowerState, fetch_offset: int, leader_end: int, now_ms: int) -> None:
    if fetch_offset >= leader_end:
        state.last_caught_up_ms = now_ms
    elif fetch_offset >= state.last_fetch_leader_end >= 0:
        state.last_caught_up_ms = max(state.last_caught_up_ms, state.last_fetch_ms)
    state.log_end_offset = fetch_offset
    state.previous_fetch_ms = state.last_fetch_ms
    state.last_fetch_ms = now_ms
    state.last_fetch_leader_end = leader_end


def high_watermark(
    current: int,
    leader_end: int,
    leader_id: int,
    isr: Iterable[int],
    followers: Mapping[int, FollowerState],
) -> int:
    """The new high-water mark: min log end over `isr` (pass the maximal ISR)."""
    ends = [leader_end]
    for replica in isr:
        if replica == leader_id:
            continue
        state = followers.get(replica)
        ends.append(state.log_end_offset if state is not None else -1)
    return max(current, min(ends))


def lagging(
    isr: Iterable[int],
    leader_id: int,
    followers: Mapping[int, FollowerState],
    now_ms: int,
    lag_max_ms: int,
) -> list[int]:
    """ISR members that have not been caught up for longer than `lag_max_ms`."""
    out = []
    for replica in isr:
        if replica == leader_id:
            continue
        state = followers.get(replica)
        if state is None or now_ms - state.last_caught_up_ms > lag_max_ms:
            out.append(replica)
    return sorted(out)


def may_join_isr(state: FollowerState, high_watermark: int, epoch_start_offset: int) -> bool:
    """Has an out-of-sync follower caught up enough to be trusted with commits again?"""
    return state.log_end_offset >= max(high_watermark, epoch_start_offset)
