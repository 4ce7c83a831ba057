"""The group coordinator of one `__consumer_offsets` partition: a manager of groups.

Pure (no trio, no I/O, no clock): every call takes `now_ms`. Calls that change state
return an `Effects`; the driver carries it out in this order, and only this order:

1. append `effects.records` to the coordinator's partition (acks=all, one batch);
2. then send `effects.replies` (each names the token of the request it answers; a
   JoinGroup or SyncGroup that has to wait gets no reply now, and is answered by a
   later call's effects: another member's request, or `tick`).

If the append fails, the coordinator's in-memory state is ahead of its log: the driver
drops this coordinator (answering the replies, and every token still held, with
NOT_COORDINATOR) and loads a new one by `replay`, as Kafka does when it loses the
partition. `tick(now_ms)` runs the timers (join and sync deadlines, session expiry);
`next_deadline_ms()` says when it next has something to do. `expire_offsets(now_ms)`
is Kafka's periodic offsets cleanup (offsets.retention.check.interval.ms).

Member ids are `<client id or instance id>-<uuid>`, the uuid drawn from the random
generator given at construction (one seeded generator: a simulation replays).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable

import attrs

from broker.groups.group import (
    CONSUMER_PROTOCOL_TYPE,
    ClassicGroup,
    CommittedOffset,
    GroupState,
    GroupView,
)
from broker.groups.messages import (
    NO_LEADER_EPOCH,
    NO_OFFSET,
    CommitPartition,
    DeletedGroup,
    DescribedGroup,
    DescribedMember,
    FetchedOffset,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    LeftMember,
    ListedGroup,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetDeleteResponse,
    OffsetFetchResponse,
    PartitionResult,
    Response,
    SyncGroupRequest,
    SyncGroupResponse,
    Token,
)
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    GroupRecord,
    OffsetCommitValue,
)
from client.protocol.errors import ErrorCode

MINUTE_MS = 60_000


@attrs.frozen(kw_only=True)
class GroupConfig:
    """The broker's group settings; defaults are Kafka's."""

    min_session_timeout_ms: int = 6_000  # group.min.session.timeout.ms
    max_session_timeout_ms: int = 1_800_000  # group.max.session.timeout.ms
    initial_rebalance_delay_ms: int = 3_000  # group.initial.rebalance.delay.ms
    group_max_size: int = 2**31 - 1  # group.max.size
    offsets_retention_ms: int = 7 * 24 * 60 * MINUTE_MS  # offsets.retention.minutes=10080
    offset_metadata_max_bytes: int = 4_096  # offset.metadata.max.bytes


@attrs.define
class Effects:
    """What one call decided: records to append first, then replies to send."""

    records: list[GroupRecord] = attrs.field(factory=list)
    replies: list[tuple[Token, Response]] = attrs.field(factory=list)

    def write(self, record: GroupRecord) -> None:
        self.records.append(record)

    def reply(self, token: Token, response: Response) -> None:
        assert all(held != token for held, _ in self.replies), f"two replies to {token!r}"
        self.replies.append((token, response))

    def reply_to(self, token: Token) -> Response | None:
        for held, response in self.replies:
            if held == token:
                return response
        return None


class GroupCoordinator:
    def __init__(self, config: GroupConfig | None = None, *, rng: random.Random) -> None:
        self.config = config if config is not None else GroupConfig()
        self._rng = rng
        self.groups: dict[str, ClassicGroup] = {}

    # ------------------------------------------------------------------ helpers

    def _new_member_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.UUID(int=self._rng.getrandbits(128), version=4)}"

    def _live_group(self, group_id: str) -> ClassicGroup | None:
        group = self.groups.get(group_id)
        return None if group is None or group.is_(GroupState.DEAD) else group

    def _create_group(self, group_id: str, now_ms: int) -> ClassicGroup:
        assert group_id not in self.groups
        group = ClassicGroup(group_id, now_ms)
        self.groups[group_id] = group
        return group

    # ------------------------------------------------------------------ JoinGroup

    def join_group(self, request: JoinGroupRequest, token: Token, now_ms: int) -> Effects:
        fx = Effects()
        config = self.config
        if not request.group_id:
            fx.reply(token, _join_error(ErrorCode.INVALID_GROUP_ID, request.member_id))
            return fx
        timeout = request.session_timeout_ms
        if not config.min_session_timeout_ms <= timeout <= config.max_session_timeout_ms:
            fx.reply(token, _join_error(ErrorCode.INVALID_SESSION_TIMEOUT, request.member_id))
            return fx
        group = self._live_group(request.group_id)
        if group is None:
            if request.member_id:
                fx.reply(token, _join_error(ErrorCode.UNKNOWN_MEMBER_ID, request.member_id))
                return fx
            self.groups.pop(request.group_id, None)
            group = self._create_group(request.group_id, now_ms)
        group.join(request, token, now_ms, fx, config, self._new_member_id)
        return fx

    # ------------------------------------------------------------------ SyncGroup

    def sync_group(self, request: SyncGroupRequest, token: Token, now_ms: int) -> Effects:
        fx = Effects()
        group = self._live_group(request.group_id)
        error = self._sync_error(group, request)
        if error is not None:
            fx.reply(token, SyncGroupResponse(error_code=error))
            return fx
        assert group is not None
        member = group.members[request.member_id]
        member.last_heartbeat_ms = now_ms
        group.pending_sync.discard(member.member_id)
        if group.is_(GroupState.STABLE):
            fx.reply(token, group.sync_response(member))
            return fx
        assert group.is_(GroupState.COMPLETING_REBALANCE)
        if member.awaiting_sync is not None and member.awaiting_sync != token:
            fx.reply(
                member.awaiting_sync, SyncGroupResponse(error_code=ErrorCode.REBALANCE_IN_PROGRESS)
            )
        member.awaiting_sync = token
        if member.member_id == group.leader_id:
            assignments: dict[str, bytes] = {}
            for member_id, assignment in request.assignments:
                if member_id in group.members:  # Kafka ignores assignments to strangers
                    assignments[member_id] = assignment
            group.complete_sync(assignments, now_ms, fx)
        return fx

    @staticmethod
    def _sync_error(group: ClassicGroup | None, request: SyncGroupRequest) -> ErrorCode | None:
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if group.is_static_member_fenced(request.group_instance_id, request.member_id):
            return ErrorCode.FENCED_INSTANCE_ID
        if not group.has_member(request.member_id):
            return ErrorCode.UNKNOWN_MEMBER_ID
        if request.generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        if (request.protocol_type is not None and request.protocol_type != group.protocol_type) or (
            request.protocol_name is not None and request.protocol_name != group.protocol_name
        ):
            return ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        if group.is_(GroupState.EMPTY):
            return ErrorCode.UNKNOWN_MEMBER_ID
        if group.is_(GroupState.PREPARING_REBALANCE):
            return ErrorCode.REBALANCE_IN_PROGRESS
        return None

    # ------------------------------------------------------------------ Heartbeat

    def heartbeat(self, request: HeartbeatRequest, token: Token, now_ms: int) -> Effects:
        fx = Effects()
        fx.reply(token, HeartbeatResponse(error_code=self._heartbeat(request, now_ms)))
        return fx

    def _heartbeat(self, request: HeartbeatRequest, now_ms: int) -> ErrorCode:
        group = self._live_group(request.group_id)
        if group is None or group.is_(GroupState.EMPTY):
            return ErrorCode.UNKNOWN_MEMBER_ID
        if group.is_static_member_fenced(request.group_instance_id, request.member_id):
            return ErrorCode.FENCED_INSTANCE_ID
        member = group.members.get(request.member_id)
        if member is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if request.generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        member.last_heartbeat_ms = now_ms
        if group.is_(GroupState.PREPARING_REBALANCE):
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE  # Stable, or CompletingRebalance after the join response

    # ------------------------------------------------------------------ LeaveGroup

    def leave_group(self, request: LeaveGroupRequest, token: Token, now_ms: int) -> Effects:
        fx = Effects()
        group = self._live_group(request.group_id)
        if group is None:
            results = tuple(
                LeftMember(
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    error_code=ErrorCode.UNKNOWN_MEMBER_ID,
                )
                for m in request.members
            )
            fx.reply(token, LeaveGroupResponse(error_code=ErrorCode.NONE, members=results))
            return fx
        left = []
        removed_any = False
        for leaving in request.members:
            code = self._leave_one(group, leaving.member_id, leaving.group_instance_id, fx)
            removed_any = removed_any or code == ErrorCode.NONE
            left.append(
                LeftMember(
                    member_id=leaving.member_id,
                    group_instance_id=leaving.group_instance_id,
                    error_code=code,
                )
            )
        if removed_any:
            group.member_left(now_ms, fx, self.config)
        fx.reply(token, LeaveGroupResponse(error_code=ErrorCode.NONE, members=tuple(left)))
        return fx

    @staticmethod
    def _leave_one(
        group: ClassicGroup, member_id: str, instance_id: str | None, fx: Effects
    ) -> ErrorCode:
        if instance_id is not None:
            known = group.static_members.get(instance_id)
            if known is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            if member_id and member_id != known:
                return ErrorCode.FENCED_INSTANCE_ID
            member_id = known
        if member_id in group.pending_members:
            del group.pending_members[member_id]
            return ErrorCode.NONE
        if member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        group.remove_member(member_id, fx)
        return ErrorCode.NONE

    # ------------------------------------------------------------------ timers

    def tick(self, now_ms: int) -> Effects:
        """Run every timer that is due: session expiry, join and sync deadlines."""
        fx = Effects()
        for group in list(self.groups.values()):
            self._tick_group(group, now_ms, fx)
        return fx

    def _tick_group(self, group: ClassicGroup, now_ms: int, fx: Effects) -> None:
        if group.is_(GroupState.DEAD):
            return
        for member_id, deadline in list(group.pending_members.items()):
            if now_ms >= deadline:
                del group.pending_members[member_id]
        expired = [m.member_id for m in group.members.values() if m.expired(now_ms)]
        for member_id in expired:
            group.remove_member(member_id, fx)
        if expired:
            group.member_left(now_ms, fx, self.config)
        if group.is_(GroupState.PREPARING_REBALANCE):
            group.try_complete_join(now_ms, fx)  # an expired pending member may be the last
        join_deadline = group.join_deadline_ms
        if (
            group.is_(GroupState.PREPARING_REBALANCE)
            and join_deadline is not None
            and now_ms >= join_deadline
        ):
            group.on_join_deadline(now_ms, fx, self.config)
        sync_deadline = group.sync_deadline_ms
        if (
            group.is_(GroupState.COMPLETING_REBALANCE, GroupState.STABLE)
            and sync_deadline is not None
            and now_ms >= sync_deadline
        ):
            group.on_sync_deadline(now_ms, fx, self.config)
        unstored = group.last_written is None and not group.offsets
        if group.is_(GroupState.EMPTY) and not group.pending_members and unstored:
            group.transition(GroupState.DEAD, now_ms)  # a group nobody stored
            del self.groups[group.group_id]

    def next_deadline_ms(self) -> int | None:
        deadlines: list[int] = []
        for group in self.groups.values():
            deadlines.extend(group.pending_members.values())
            for member in group.members.values():
                if member.awaiting_join is None and member.awaiting_sync is None:
                    deadlines.append(member.last_heartbeat_ms + member.session_timeout_ms)
            if group.join_deadline_ms is not None:
                deadlines.append(group.join_deadline_ms)
            if group.sync_deadline_ms is not None:
                deadlines.append(group.sync_deadline_ms)
        return min(deadlines, default=None)

    # ------------------------------------------------------------------ OffsetCommit

    def commit_offsets(self, request: OffsetCommitRequest, token: Token, now_ms: int) -> Effects:
        fx = Effects()
        group = self._live_group(request.group_id)
        if not request.group_id:
            error: ErrorCode | None = ErrorCode.INVALID_GROUP_ID
        elif group is None:
            error = None if request.generation_id < 0 else ErrorCode.ILLEGAL_GENERATION
        else:
            error = self._commit_error(group, request)
        if error is not None:
            fx.reply(token, _commit_response(request.partitions, error))
            return fx
        if group is None:
            # A simple consumer's group: offsets without membership.
            self.groups.pop(request.group_id, None)
            group = self._create_group(request.group_id, now_ms)
        member = group.members.get(request.member_id)
        if member is not None:
            member.last_heartbeat_ms = now_ms
        results = []
        for partition in request.partitions:
            metadata = partition.metadata or ""
            if len(metadata.encode("utf-8")) > self.config.offset_metadata_max_bytes:
                code = ErrorCode.OFFSET_METADATA_TOO_LARGE
            else:
                value = OffsetCommitValue(
                    offset=partition.offset,
                    leader_epoch=partition.leader_epoch,
                    metadata=metadata,
                    commit_timestamp_ms=now_ms,
                )
                group.commit_offset(partition.topic, partition.partition, value, fx)
                code = ErrorCode.NONE
            results.append(
                PartitionResult(
                    topic=partition.topic, partition=partition.partition, error_code=code
                )
            )
        fx.reply(token, OffsetCommitResponse(partitions=tuple(results)))
        return fx

    @staticmethod
    def _commit_error(group: ClassicGroup, request: OffsetCommitRequest) -> ErrorCode | None:
        # Kafka's order of checks (GroupCoordinator.doCommitOffsets).
        if group.is_static_member_fenced(request.group_instance_id, request.member_id):
            return ErrorCode.FENCED_INSTANCE_ID
        if request.generation_id < 0 and group.is_(GroupState.EMPTY):
            return None
        if group.is_(GroupState.COMPLETING_REBALANCE):
            return ErrorCode.REBALANCE_IN_PROGRESS
        if not group.has_member(request.member_id):
            return ErrorCode.UNKNOWN_MEMBER_ID
        if request.generation_id != group.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        return None

    # ------------------------------------------------------------------ OffsetFetch

    def fetch_offsets(
        self, group_id: str, partitions: Iterable[tuple[str, int]] | None
    ) -> OffsetFetchResponse:
        """Committed offsets (`partitions` None: every one); -1 where none is."""
        group = self._live_group(group_id)
        offsets = group.offsets if group is not None else {}
        wanted = sorted(offsets) if partitions is None else list(partitions)
        results = []
        for topic, partition in wanted:
            committed = offsets.get((topic, partition))
            if committed is None:
                results.append(
                    FetchedOffset(
                        topic=topic,
                        partition=partition,
                        offset=NO_OFFSET,
                        leader_epoch=NO_LEADER_EPOCH,
                        metadata="",
                        error_code=ErrorCode.NONE,
                    )
                )
            else:
                results.append(
                    FetchedOffset(
                        topic=topic,
                        partition=partition,
                        offset=committed.offset,
                        leader_epoch=committed.leader_epoch,
                        metadata=committed.metadata,
                        error_code=ErrorCode.NONE,
                    )
                )
        # No transactional offsets yet, so never UNSTABLE_OFFSET_COMMIT.
        return OffsetFetchResponse(error_code=ErrorCode.NONE, partitions=tuple(results))

    # ------------------------------------------------------------------ expiry

    def expire_offsets(self, now_ms: int) -> Effects:
        """Kafka's offsets cleanup (KIP-211): an Empty group's offsets expire a retention
        period after it became Empty (or after the commit, if later); a Stable consumer
        group's offsets of topics it no longer subscribes to, a retention period after
        their commit; a group that never had members (simple consumers), by commit time.
        An Empty group left with no offsets is removed, with a tombstone."""
        fx = Effects()
        retention = self.config.offsets_retention_ms
        for group in list(self.groups.values()):
            if group.is_(GroupState.DEAD):
                continue
            subscribed: frozenset[str] = frozenset()
            if group.is_(GroupState.EMPTY):
                since = group.state_timestamp_ms if group.protocol_type is not None else None
            elif group.protocol_type == CONSUMER_PROTOCOL_TYPE and group.is_(GroupState.STABLE):
                topics = group.subscribed_topics()
                if topics is None:
                    continue
                subscribed, since = topics, None
            else:
                continue
            for (topic, partition), committed in sorted(group.offsets.items()):
                base = (
                    committed.commit_timestamp_ms
                    if since is None
                    else max(since, committed.commit_timestamp_ms)
                )
                if topic not in subscribed and base + retention <= now_ms:
                    group.delete_offset(topic, partition, fx)
            if group.is_(GroupState.EMPTY) and not group.offsets and not group.pending_members:
                self._remove_group(group, now_ms, fx)
        return fx

    def _remove_group(self, group: ClassicGroup, now_ms: int, fx: Effects) -> None:
        for topic, partition in sorted(group.offsets):
            group.delete_offset(topic, partition, fx)
        group.transition(GroupState.DEAD, now_ms)
        if group.last_written is not None:
            fx.write(GroupRecord(key=GroupMetadataKey(group_id=group.group_id), value=None))
        del self.groups[group.group_id]

    # ------------------------------------------------------------------ admin

    def describe_groups(self, group_ids: Iterable[str]) -> tuple[DescribedGroup, ...]:
        return tuple(self._describe(group_id) for group_id in group_ids)

    def _describe(self, group_id: str) -> DescribedGroup:
        group = self._live_group(group_id)
        if group is None:
            return DescribedGroup(
                error_code=ErrorCode.NONE,
                group_id=group_id,
                state=GroupState.DEAD.value,
                protocol_type="",
                protocol="",
                members=(),
            )
        stable = group.is_(GroupState.STABLE)
        members = tuple(
            DescribedMember(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                metadata=m.metadata_for(group.protocol_name) if stable else b"",
                assignment=m.assignment if stable else b"",
            )
            for m in group.members.values()
        )
        return DescribedGroup(
            error_code=ErrorCode.NONE,
            group_id=group_id,
            state=group.state.value,
            protocol_type=group.protocol_type or "",
            protocol=(group.protocol_name or "") if stable else "",
            members=members,
        )

    def list_groups(self, states: Iterable[str] = ()) -> tuple[ListedGroup, ...]:
        wanted = {state.lower() for state in states}
        return tuple(
            ListedGroup(
                group_id=g.group_id, protocol_type=g.protocol_type or "", state=g.state.value
            )
            for g in sorted(self.groups.values(), key=lambda g: g.group_id)
            if not g.is_(GroupState.DEAD) and (not wanted or g.state.value.lower() in wanted)
        )

    def delete_groups(self, group_ids: Iterable[str], token: Token, now_ms: int) -> Effects:
        fx = Effects()
        results = []
        for group_id in group_ids:
            group = self._live_group(group_id)
            if not group_id:
                code = ErrorCode.INVALID_GROUP_ID
            elif group is None:
                code = ErrorCode.GROUP_ID_NOT_FOUND
            elif not group.is_(GroupState.EMPTY) or group.pending_members:
                code = ErrorCode.NON_EMPTY_GROUP
            else:
                self._remove_group(group, now_ms, fx)
                if group.last_written is None:
                    # Never stored as a group (offsets only): still say it is gone.
                    fx.write(GroupRecord(key=GroupMetadataKey(group_id=group_id), value=None))
                code = ErrorCode.NONE
            results.append(DeletedGroup(group_id=group_id, error_code=code))
        fx.reply(token, tuple(results))
        return fx

    def delete_offsets(
        self, group_id: str, partitions: Iterable[tuple[str, int]], token: Token, now_ms: int
    ) -> Effects:
        """OffsetDelete (KIP-496): refused per partition for topics a member consumes."""
        fx = Effects()
        group = self._live_group(group_id)
        wanted = list(partitions)
        if group is None:
            fx.reply(token, OffsetDeleteResponse(error_code=ErrorCode.GROUP_ID_NOT_FOUND))
            return fx
        if group.is_(GroupState.EMPTY):
            subscribed: frozenset[str] = frozenset()
        elif group.protocol_type == CONSUMER_PROTOCOL_TYPE:
            topics = group.subscribed_topics()
            # An unreadable subscription may name any topic: refuse them all.
            subscribed = topics if topics is not None else frozenset(t for t, _ in wanted)
        else:
            fx.reply(token, OffsetDeleteResponse(error_code=ErrorCode.NON_EMPTY_GROUP))
            return fx
        results = []
        for topic, partition in wanted:
            if topic in subscribed:
                code = ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
            else:
                group.delete_offset(topic, partition, fx)
                code = ErrorCode.NONE
            results.append(PartitionResult(topic=topic, partition=partition, error_code=code))
        fx.reply(token, OffsetDeleteResponse(error_code=ErrorCode.NONE, partitions=tuple(results)))
        return fx

    # ------------------------------------------------------------------ loading

    @classmethod
    def replay(
        cls,
        records: Iterable[GroupRecord],
        now_ms: int,
        config: GroupConfig | None = None,
        *,
        rng: random.Random,
    ) -> GroupCoordinator:
        """The coordinator a partition's records describe (what a new leader loads)."""
        self = cls(config, rng=rng)
        metadata: dict[str, GroupMetadataValue | None] = {}
        offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        for record in records:
            key = record.key
            if isinstance(key, GroupMetadataKey):
                value = record.value
                assert value is None or isinstance(value, GroupMetadataValue)
                metadata[key.group_id] = value
                if value is None:
                    offsets.pop(key.group_id, None)
                continue
            group_offsets = offsets.setdefault(key.group_id, {})
            if record.value is None:
                group_offsets.pop((key.topic, key.partition), None)
            else:
                value_ = record.value
                assert isinstance(value_, OffsetCommitValue)
                group_offsets[(key.topic, key.partition)] = CommittedOffset(
                    value_.offset, value_.leader_epoch, value_.metadata, value_.commit_timestamp_ms
                )
        for group_id in sorted(set(metadata) | set(offsets)):
            value = metadata.get(group_id)
            group_offsets = offsets.get(group_id, {})
            if value is None and not group_offsets:
                continue
            if value is None:
                group = ClassicGroup(group_id, now_ms)
            else:
                group = ClassicGroup.loaded(group_id, value, now_ms)
            group.offsets = dict(group_offsets)
            self.groups[group_id] = group
        return self

    def durable_state(
        self,
    ) -> dict[str, tuple[GroupView | None, dict[tuple[str, int], CommittedOffset]]]:
        """Per group: what its records say (for comparing a coordinator with a replay)."""
        state = {}
        for group_id, group in self.groups.items():
            view = group.durable_view()
            if view is None and not group.offsets:
                continue
            state[group_id] = (view, dict(group.offsets))
        return state


def _join_error(code: ErrorCode, member_id: str) -> JoinGroupResponse:
    return JoinGroupResponse(error_code=code, member_id=member_id)


def _commit_response(
    partitions: tuple[CommitPartition, ...], code: ErrorCode
) -> OffsetCommitResponse:
    return OffsetCommitResponse(
        partitions=tuple(
            PartitionResult(topic=p.topic, partition=p.partition, error_code=code)
            for p in partitions
        )
    )


__all__ = ["Effects", "GroupConfig", "GroupCoordinator"]
