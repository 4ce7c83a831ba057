"""The Raft core's messages (KIP-595): what one quorum member says to another.

These are the core's vocabulary, free of framing: the runtime maps them to and from
RPC frames. Requests and responses are frozen value classes; the core never mutates
one. Field names follow Kafka's message definitions in snake_case.
"""

from __future__ import annotations

from typing import Any

import attrs

NO_LEADER = -1
NO_EPOCH = -1

# Kafka's message schemas type every epoch, id and size int32 and every offset int64;
# a value outside its type cannot be built (the wire decoder answers INVALID_REQUEST).
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The last epoch a node enters, by election or by learning it from a peer (issue 14).
# Epochs are int32 and each election takes the next one; int32's max is where a broken
# or hostile peer's value saturates, and a node in it could never stand again. A node
# at EPOCH_MAX stays alive and follows, but does not stand: no batch ever needs an
# epoch an int32 cannot hold.
EPOCH_MAX = INT32_MAX - 1
OFFSET_MAX = INT64_MAX


def _in_range(low: int, high: int, kind: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not low <= value <= high:
            # Not the value itself: a peer's bignum would make this message huge.
            raise ValueError(f"{attribute.name} is outside {kind}")

    return check


_int16 = _in_range(INT16_MIN, INT16_MAX, "int16")
_int32 = _in_range(INT32_MIN, INT32_MAX, "int32")
_int64 = _in_range(INT64_MIN, INT64_MAX, "int64")


def _int32s(instance: object, attribute: attrs.Attribute[tuple[int, ...]], value: Any) -> None:
    for item in value:
        _int32(instance, attribute, item)


def _i16(**kwargs: Any) -> Any:
    return attrs.field(validator=_int16, **kwargs)


def _i32(**kwargs: Any) -> Any:
    return attrs.field(validator=_int32, **kwargs)


def _i64(**kwargs: Any) -> Any:
    return attrs.field(validator=_int64, **kwargs)


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
    offset: int = _i64()
    epoch: int = _i32()


# --------------------------------------------------------------------------- Vote


@attrs.frozen(kw_only=True, slots=True)
class VoteRequest:
    cluster_id: str
    candidate_epoch: int = _i32()
    candidate_id: int = _i32()
    last_offset_epoch: int = _i32()
    last_offset: int = _i64()
    # KIP-996: a pre-vote asks "would you vote for me?" without changing anyone's epoch.
    pre_vote: bool = False


@attrs.frozen(kw_only=True, slots=True)
class VoteResponse:
    error_code: int = _i16()
    leader_epoch: int = _i32()
    leader_id: int = _i32()
    vote_granted: bool


# --------------------------------------------------------------- Begin/EndQuorumEpoch


@attrs.frozen(kw_only=True, slots=True)
class BeginQuorumEpochRequest:
    cluster_id: str
    leader_epoch: int = _i32()
    leader_id: int = _i32()


@attrs.frozen(kw_only=True, slots=True)
class BeginQuorumEpochResponse:
    error_code: int = _i16()
    leader_epoch: int = _i32()
    leader_id: int = _i32()


@attrs.frozen(kw_only=True, slots=True)
class EndQuorumEpochRequest:
    cluster_id: str
    leader_epoch: int = _i32()
    leader_id: int = _i32()
    preferred_successors: tuple[int, ...] = attrs.field(validator=_int32s)


@attrs.frozen(kw_only=True, slots=True)
class EndQuorumEpochResponse:
    error_code: int = _i16()
    leader_epoch: int = _i32()
    leader_id: int = _i32()


# ---------------------------------------------------------------------------- Fetch


@attrs.frozen(kw_only=True, slots=True)
class FetchRequest:
    cluster_id: str
    replica_id: int = _i32()
    # The fetcher's view of the leader epoch: a stale one is fenced (KIP-320).
    current_leader_epoch: int = _i32()
    fetch_offset: int = _i64()
    last_fetched_epoch: int = _i32()
    max_bytes: int = _i32()
    max_wait_ms: int = _i32(default=0)


@attrs.frozen(kw_only=True, slots=True)
class FetchResponse:
    error_code: int = _i16()
    leader_epoch: int = _i32()
    leader_id: int = _i32()
    high_watermark: int = _i64(default=-1)
    log_start_offset: int = _i64(default=0)
    records: bytes = b""
    # Set when the fetcher's log diverges: truncate to where this epoch ended.
    diverging_epoch: OffsetAndEpoch | None = None
    # Set when the fetch offset is below the log start: fetch this snapshot first.
    snapshot_id: OffsetAndEpoch | None = None


# -------------------------------------------------------------------- FetchSnapshot


@attrs.frozen(kw_only=True, slots=True)
class FetchSnapshotRequest:
    cluster_id: str
    replica_id: int = _i32()
    current_leader_epoch: int = _i32()
    snapshot_id: OffsetAndEpoch
    position: int = _i64()
    max_bytes: int = _i32()


@attrs.frozen(kw_only=True, slots=True)
class FetchSnapshotResponse:
    error_code: int = _i16()
    leader_epoch: int = _i32()
    leader_id: int = _i32()
    snapshot_id: OffsetAndEpoch | None = None
    size: int = _i64(default=0)
    position: int = _i64(default=0)
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
