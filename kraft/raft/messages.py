"""The Raft core's messages (KIP-595): what one quorum member says to another.

These are the core's vocabulary, free of framing: the runtime maps them to and from
RPC frames. Requests and responses are frozen value classes; the core never mutates
one. Field names follow Kafka's message definitions in snake_case.
"""

from __future__ import annotations

import attrs

NO_LEADER = -1
NO_EPOCH = -1


class ErrorCode:
    """The Kafka error codes the quorum uses (same numbers as Kafka's)."""

    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    NOT_LEADER_OR_FOLLOWER = 6
    INVALID_REQUEST = 42
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    INCONSISTENT_VOTER_SET = 94
    INCONSISTENT_CLUSTER_ID = 104
    SNAPSHOT_NOT_FOUND = 98
    POSITION_OUT_OF_RANGE = 99


@attrs.frozen(kw_only=True, slots=True)
class OffsetAndEpoch:
    offset: int
    epoch: int


# --------------------------------------------------------------------------- Vote


@attrs.frozen(kw_only=True, slots=True)
class VoteRequest:
    cluster_id: str
    candidate_epoch: int
    candidate_id: int
    last_offset_epoch: int
    last_offset: int
    # KIP-996: a pre-vote asks "would you vote for me?" without changing anyone's epoch.
    pre_vote: bool = False


@attrs.frozen(kw_only=True, slots=True)
class VoteResponse:
    error_code: int
    leader_epoch: int
    leader_id: int
    vote_granted: bool


# --------------------------------------------------------------- Begin/EndQuorumEpoch


@attrs.frozen(kw_only=True, slots=True)
class BeginQuorumEpochRequest:
    cluster_id: str
    leader_epoch: int
    leader_id: int


@attrs.frozen(kw_only=True, slots=True)
class BeginQuorumEpochResponse:
    error_code: int
    leader_epoch: int
    leader_id: int


@attrs.frozen(kw_only=True, slots=True)
class EndQuorumEpochRequest:
    cluster_id: str
    leader_epoch: int
    leader_id: int
    preferred_successors: tuple[int, ...]


@attrs.frozen(kw_only=True, slots=True)
class EndQuorumEpochResponse:
    error_code: int
    leader_epoch: int
    leader_id: int


# ---------------------------------------------------------------------------- Fetch


@attrs.frozen(kw_only=True, slots=True)
class FetchRequest:
    cluster_id: str
    replica_id: int
    # The fetcher's view of the leader epoch: a stale one is fenced (KIP-320).
    current_leader_epoch: int
    fetch_offset: int
    last_fetched_epoch: int
    max_bytes: int
    max_wait_ms: int = 0


@attrs.frozen(kw_only=True, slots=True)
class FetchResponse:
    error_code: int
    leader_epoch: int
    leader_id: int
    high_watermark: int = -1
    log_start_offset: int = 0
    records: bytes = b""
    # Set when the fetcher's log diverges: truncate to where this epoch ended.
    diverging_epoch: OffsetAndEpoch | None = None
    # Set when the fetch offset is below the log start: fetch this snapshot first.
    snapshot_id: OffsetAndEpoch | None = None


# -------------------------------------------------------------------- FetchSnapshot


@attrs.frozen(kw_only=True, slots=True)
class FetchSnapshotRequest:
    cluster_id: str
    replica_id: int
    current_leader_epoch: int
    snapshot_id: OffsetAndEpoch
    position: int
    max_bytes: int


@attrs.frozen(kw_only=True, slots=True)
class FetchSnapshotResponse:
    error_code: int
    leader_epoch: int
    leader_id: int
    snapshot_id: OffsetAndEpoch | None = None
    size: int = 0
    position: int = 0
    unaligned_records: bytes = b""


Request = (
    VoteRequest
    | BeginQuorumEpochRequest
    | EndQuorumEpochRequest
    | FetchRequest
    | FetchSnapshotRequest
)
Response = (
    VoteResponse
    | BeginQuorumEpochResponse
    | EndQuorumEpochResponse
    | FetchResponse
    | FetchSnapshotResponse
)


@attrs.frozen(kw_only=True, slots=True)
class Outbound:
    """A request the core wants sent; `request_id` ties the response back to it."""

    destination: int
    request_id: int
    request: Request


@attrs.frozen(kw_only=True, slots=True)
class Inbound:
    """A response arriving for an earlier `Outbound` (or None: it failed or timed out)."""

    source: int
    request_id: int
    response: Response | None
    # The peer's process is not there (connection refused or reset), as opposed to
    # silent (timeout): a follower may start looking for a new leader sooner.
    unreachable: bool = False
