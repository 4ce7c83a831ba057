"""What the group coordinator takes and gives: the fields of Kafka's group APIs that
its decisions need, independent of any codec. The Kafka listener's handlers map
JoinGroup v0-7, SyncGroup v0-5, Heartbeat v0-4, LeaveGroup v0-4, OffsetCommit v2-8,
OffsetFetch v1-8, DescribeGroups, ListGroups, DeleteGroups and OffsetDelete onto these
(a field missing from an older version takes the default Kafka gives it)."""

from __future__ import annotations

from collections.abc import Hashable

import attrs

UNKNOWN_MEMBER_ID = ""
NO_GENERATION = -1
NO_OFFSET = -1
NO_LEADER_EPOCH = -1

Token = Hashable  # names one request, so a held response finds its way back


# ---------------------------------------------------------------------- membership


@attrs.frozen(kw_only=True)
class JoinGroupRequest:
    group_id: str
    member_id: str = UNKNOWN_MEMBER_ID
    group_instance_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    session_timeout_ms: int
    rebalance_timeout_ms: int  # v0 has none: the session timeout stands in (Kafka)
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]  # (name, metadata), preferred first
    require_known_member_id: bool = True  # JoinGroup v4+ (KIP-394)


@attrs.frozen(kw_only=True)
class JoinedMember:
    member_id: str
    group_instance_id: str | None
    metadata: bytes


@attrs.frozen(kw_only=True)
class JoinGroupResponse:
    error_code: int
    generation_id: int = NO_GENERATION
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    member_id: str = UNKNOWN_MEMBER_ID
    members: tuple[JoinedMember, ...] = ()  # the leader's alone
    skip_assignment: bool = False  # KIP-814: a static leader's rejoin, nothing to redo


@attrs.frozen(kw_only=True)
class SyncGroupRequest:
    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None
    protocol_type: str | None = None  # v5+: checked when given
    protocol_name: str | None = None
    assignments: tuple[tuple[str, bytes], ...] = ()  # the leader's: (member id, assignment)


@attrs.frozen(kw_only=True)
class SyncGroupResponse:
    error_code: int
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


@attrs.frozen(kw_only=True)
class HeartbeatRequest:
    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


@attrs.frozen(kw_only=True)
class HeartbeatResponse:
    error_code: int


@attrs.frozen(kw_only=True)
class LeavingMember:
    member_id: str
    group_instance_id: str | None = None


@attrs.frozen(kw_only=True)
class LeaveGroupRequest:
    group_id: str
    members: tuple[LeavingMember, ...]  # v0-2 carry one, by member id


@attrs.frozen(kw_only=True)
class LeftMember:
    member_id: str
    group_instance_id: str | None
    error_code: int


@attrs.frozen(kw_only=True)
class LeaveGroupResponse:
    error_code: int
    members: tuple[LeftMember, ...] = ()


# ---------------------------------------------------------------------- offsets


@attrs.frozen(kw_only=True)
class CommitPartition:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = NO_LEADER_EPOCH
    metadata: str | None = ""


@attrs.frozen(kw_only=True)
class OffsetCommitRequest:
    group_id: str
    generation_id: int = NO_GENERATION
    member_id: str = UNKNOWN_MEMBER_ID
    group_instance_id: str | None = None
    partitions: tuple[CommitPartition, ...]


@attrs.frozen(kw_only=True)
class PartitionResult:
    topic: str
    partition: int
    error_code: int


@attrs.frozen(kw_only=True)
class OffsetCommitResponse:
    partitions: tuple[PartitionResult, ...]


@attrs.frozen(kw_only=True)
class FetchedOffset:
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str
    error_code: int


@attrs.frozen(kw_only=True)
class OffsetFetchResponse:
    error_code: int
    partitions: tuple[FetchedOffset, ...]


@attrs.frozen(kw_only=True)
class OffsetDeleteResponse:
    error_code: int
    partitions: tuple[PartitionResult, ...] = ()


# ---------------------------------------------------------------------- groups


@attrs.frozen(kw_only=True)
class DescribedMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@attrs.frozen(kw_only=True)
class DescribedGroup:
    error_code: int
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: tuple[DescribedMember, ...]


@attrs.frozen(kw_only=True)
class ListedGroup:
    group_id: str
    protocol_type: str
    state: str


@attrs.frozen(kw_only=True)
class DeletedGroup:
    group_id: str
    error_code: int


Response = (
    JoinGroupResponse
    | SyncGroupResponse
    | HeartbeatResponse
    | LeaveGroupResponse
    | OffsetCommitResponse
    | OffsetDeleteResponse
    | tuple[DeletedGroup, ...]
)
