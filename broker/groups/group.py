"""One consumer group under Kafka's classic protocol: members, generations, offsets.

States and who may enter them are Kafka's (`ClassicGroupState`); `ClassicGroup.transition`
is the one place the state changes and asserts the move is allowed:

    Empty               no members (maybe committed offsets); a join starts a rebalance
    PreparingRebalance  waiting for every known member to (re)join, or the rebalance
                        timeout (for a new group, the initial delay first)
    CompletingRebalance the join is done; waiting for the leader's assignment (SyncGroup)
    Stable              assignments handed out; heartbeats keep members alive
    Dead                removed (deleted, or expired with no offsets left)

Pure: the caller passes `now_ms`; results go into an `Effects` (responses to send, and
records to write to `__consumer_offsets` before sending them). A JoinGroup or
SyncGroup that must wait is held by its token and answered in a later `Effects`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from broker.groups.messages import (
    NO_GENERATION,
    JoinedMember,
    JoinGroupRequest,
    JoinGroupResponse,
    SyncGroupResponse,
    Token,
)
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    GroupRecord,
    MemberMetadata,
    OffsetCommitKey,
    OffsetCommitValue,
)
from client.protocol.errors import ErrorCode

if TYPE_CHECKING:
    from broker.groups.coordinator import Effects, GroupConfig

CONSUMER_PROTOCOL_TYPE = "consumer"


class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_S = GroupState
# Kafka's ClassicGroupState valid previous states, turned around: from -> may go to.
ALLOWED_TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    _S.EMPTY: frozenset({_S.PREPARING_REBALANCE, _S.DEAD}),
    _S.PREPARING_REBALANCE: frozenset({_S.COMPLETING_REBALANCE, _S.EMPTY, _S.DEAD}),
    _S.COMPLETING_REBALANCE: frozenset({_S.STABLE, _S.PREPARING_REBALANCE, _S.DEAD}),
    _S.STABLE: frozenset({_S.PREPARING_REBALANCE, _S.DEAD}),
    _S.DEAD: frozenset({_S.DEAD}),
}


@attrs.define
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    last_heartbeat_ms: int
    assignment: bytes = b""
    awaiting_join: Token | None = None
    awaiting_sync: Token | None = None

    def metadata_for(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""

    def has_protocols(self, protocols: tuple[tuple[str, bytes], ...]) -> bool:
        return self.protocols == protocols

    def expired(self, now_ms: int) -> bool:
        # A member whose JoinGroup or SyncGroup is held cannot heartbeat (Kafka's
        # shouldKeepAlive): the rebalance timeout bounds it instead.
        if self.awaiting_join is not None or self.awaiting_sync is not None:
            return False
        return now_ms >= self.last_heartbeat_ms + self.session_timeout_ms


@attrs.frozen
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@attrs.frozen
class GroupView:
    """What survives a coordinator move: compared against a replay in the tests."""

    protocol_type: str | None
    generation: int
    protocol: str | None
    leader: str | None
    state_timestamp_ms: int | None
    members: tuple[MemberMetadata, ...]


class ClassicGroup:
    def __init__(self, group_id: str, now_ms: int) -> None:
        self.group_id = group_id
        self.state = GroupState.EMPTY
        self.state_timestamp_ms = now_ms
        self.generation_id = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader_id: str | None = None
        self.members: dict[str, Member] = {}  # in join order: the order Kafka keeps
        self.pending_members: dict[str, int] = {}  # KIP-394: member id -> expiry
        self.static_members: dict[str, str] = {}  # group instance id -> member id
        self.pending_sync: set[str] = set()
        self.offsets: dict[tuple[str, int], CommittedOffset] = {}
        self.join_deadline_ms: int | None = None
        self.sync_deadline_ms: int | None = None
        # The initial delay (group.initial.rebalance.delay.ms) of a group's first
        # rebalance, extended while new members keep arriving, within the rebalance
        # timeout (Kafka's InitialDelayedJoin).
        self.initial_delay_remaining_ms: int | None = None
        self.new_member_added = False
        self.last_written: GroupMetadataValue | None = None

    # ------------------------------------------------------------------ state

    def transition(self, target: GroupState, now_ms: int) -> None:
        assert target in ALLOWED_TRANSITIONS[self.state], (
            f"group {self.group_id!r}: {self.state.value} -> {target.value} is not allowed"
        )
        self.state = target
        self.state_timestamp_ms = now_ms

    def is_(self, *states: GroupState) -> bool:
        return self.state in states

    def has_member(self, member_id: str) -> bool:
        return member_id in self.members

    def is_static_member_fenced(self, instance_id: str | None, member_id: str) -> bool:
        if instance_id is None:
            return False
        known = self.static_members.get(instance_id)
        return known is not None and known != member_id

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_members_joined(self) -> bool:
        members = self.members.values()
        return not self.pending_members and all(m.awaiting_join is not None for m in members)

    def candidate_protocols(self) -> list[str]:
        """Protocols every member supports, in the first member's order of preference."""
        members = list(self.members.values())
        if not members:
            return []
        common = set.intersection(*({name for name, _ in m.protocols} for m in members))
        return [name for name, _ in members[0].protocols if name in common]

    def supports(self, protocol_type: str, protocols: tuple[tuple[str, bytes], ...]) -> bool:
        if not protocol_type or not protocols:
            return False
        if not self.members:
            # Kafka's count of supporting members is trivially full: only the type
            # a group that still has one (not Empty) must match.
            return self.is_(GroupState.EMPTY) or protocol_type == self.protocol_type
        names = {name for name, _ in protocols}
        candidates = self.candidate_protocols()
        return protocol_type == self.protocol_type and any(c in names for c in candidates)

    def select_protocol(self) -> str:
        """Each member votes for its preferred candidate; most votes wins (ties: the
        earlier candidate), as Kafka's ClassicGroup.selectProtocol counts them."""
        candidates = self.candidate_protocols()
        assert candidates, f"group {self.group_id!r}: members share no protocol"
        votes = dict.fromkeys(candidates, 0)
        for member in self.members.values():
            choice = next(name for name, _ in member.protocols if name in votes)
            votes[choice] += 1
        return max(candidates, key=lambda name: (votes[name], -candidates.index(name)))

    def subscribed_topics(self) -> frozenset[str] | None:
        """Topics the members consume, if every subscription reads (consumer protocol)."""
        if self.protocol_type != CONSUMER_PROTOCOL_TYPE or self.protocol_name is None:
            return None
        topics: set[str] = set()
        for member in self.members.values():
            parsed = parse_subscription_topics(member.metadata_for(self.protocol_name))
            if parsed is None:
                return None
            topics |= parsed
        return frozenset(topics)

    # ------------------------------------------------------------------ joining

    def join(
        self,
        request: JoinGroupRequest,
        token: Token,
        now_ms: int,
        fx: Effects,
        config: GroupConfig,
        new_member_id: Callable[[str], str],
    ) -> None:
        assert not self.is_(GroupState.DEAD)
        if not self.supports(request.protocol_type, request.protocols):
            fx.reply(token, _join_error(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, request.member_id))
        elif request.member_id == "":
            self._join_unknown(request, token, now_ms, fx, config, new_member_id)
        else:
            self._join_known(request, token, now_ms, fx, config)

    def _full(self, config: GroupConfig) -> bool:
        return len(self.members) + len(self.pending_members) >= config.group_max_size

    def _join_unknown(
        self,
        request: JoinGroupRequest,
        token: Token,
        now_ms: int,
        fx: Effects,
        config: GroupConfig,
        new_member_id: Callable[[str], str],
    ) -> None:
        instance = request.group_instance_id
        if instance is not None and instance in self.static_members:
            member_id = new_member_id(instance)
            self._replace_static_member(request, member_id, token, now_ms, fx, config)
            return
        if self._full(config):
            fx.reply(token, _join_error(ErrorCode.GROUP_MAX_SIZE_REACHED, ""))
            return
        member_id = new_member_id(instance if instance is not None else request.client_id)
        if instance is None and request.require_known_member_id:
            # KIP-394: hand out the id first, so a retried join cannot add a member twice.
            self.pending_members[member_id] = now_ms + request.session_timeout_ms
            fx.reply(token, _join_error(ErrorCode.MEMBER_ID_REQUIRED, member_id))
            return
        self._add_member_and_rebalance(request, member_id, token, now_ms, fx, config)

    def _join_known(
        self,
        request: JoinGroupRequest,
        token: Token,
        now_ms: int,
        fx: Effects,
        config: GroupConfig,
    ) -> None:
        member_id = request.member_id
        if member_id in self.pending_members:
            del self.pending_members[member_id]
            self._add_member_and_rebalance(request, member_id, token, now_ms, fx, config)
            return
        if self.is_static_member_fenced(request.group_instance_id, member_id):
            fx.reply(token, _join_error(ErrorCode.FENCED_INSTANCE_ID, member_id))
            return
        member = self.members.get(member_id)
        if member is None or self.is_(GroupState.EMPTY):
            fx.reply(token, _join_error(ErrorCode.UNKNOWN_MEMBER_ID, member_id))
            return
        member.last_heartbeat_ms = now_ms
        unchanged = member.has_protocols(request.protocols)
        if self.is_(GroupState.PREPARING_REBALANCE):
            self._update_member(member, request, token, fx)
            self.try_complete_join(now_ms, fx)
        elif self.is_(GroupState.COMPLETING_REBALANCE) and unchanged:
            # The member missed the join response: give it again.
            fx.reply(token, self._join_response(member))
        elif self.is_(GroupState.STABLE) and unchanged and member_id != self.leader_id:
            fx.reply(token, self._join_response(member))
        else:
            self._update_member(member, request, token, fx)
            self.prepare_rebalance(now_ms, fx, config)
            self.try_complete_join(now_ms, fx)  # a lone member's rejoin completes at once

    def _add_member_and_rebalance(
        self,
        request: JoinGroupRequest,
        member_id: str,
        token: Token,
        now_ms: int,
        fx: Effects,
        config: GroupConfig,
    ) -> None:
        member = Member(
            member_id=member_id,
            group_instance_id=request.group_instance_id,
            client_id=request.client_id,
            client_host=request.client_host,
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            protocol_type=request.protocol_type,
            protocols=request.protocols,
            last_heartbeat_ms=now_ms,
            awaiting_join=token,
        )
        if not self.members:
            self.protocol_type = request.protocol_type
        self.members[member_id] = member
        if self.leader_id is None:
            self.leader_id = member_id
        if request.group_instance_id is not None:
            self.static_members[request.group_instance_id] = member_id
        if self.is_(GroupState.PREPARING_REBALANCE) and self.generation_id == 0:
            self.new_member_added = True  # Kafka extends the delay of a new group only
        if not self.is_(GroupState.PREPARING_REBALANCE):
            self.prepare_rebalance(now_ms, fx, config)
        self.try_complete_join(now_ms, fx)

    def _update_member(
        self, member: Member, request: JoinGroupRequest, token: Token, fx: Effects
    ) -> None:
        if member.awaiting_join is not None and member.awaiting_join != token:
            # A second join from the same member (it reconnected): the older request
            # will never be read; answer it so it is not held forever.
            fx.reply(member.awaiting_join, _join_error(ErrorCode.REBALANCE_IN_PROGRESS, ""))
        member.protocols = request.protocols
        member.session_timeout_ms = request.session_timeout_ms
        member.rebalance_timeout_ms = request.rebalance_timeout_ms
        member.awaiting_join = token

    def _replace_static_member(
        self,
        request: JoinGroupRequest,
        new_id: str,
        token: Token,
        now_ms: int,
        fx: Effects,
        config: GroupConfig,
    ) -> None:
        """KIP-345: a static member back with a new member id takes the old one's place."""
        instance = request.group_instance_id
        assert instance is not None
        old_id = self.static_members[instance]
        old = self.members.pop(old_id)
        if old.awaiting_join is not None:
            fx.reply(old.awaiting_join, _join_error(ErrorCode.FENCED_INSTANCE_ID, old_id))
        if old.awaiting_sync is not None:
            fx.reply(old.awaiting_sync, SyncGroupResponse(error_code=ErrorCode.FENCED_INSTANCE_ID))
        unchanged = old.has_protocols(request.protocols)
        member = attrs.evolve(
            old, member_id=new_id, awaiting_join=None, awaiting_sync=None, last_heartbeat_ms=now_ms
        )
        self.members[new_id] = member
        self.static_members[instance] = new_id
        if self.leader_id == old_id:
            self.leader_id = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        if self.is_(GroupState.STABLE) and unchanged:
            # No rebalance: the assignment stands. Stored, so that a new coordinator
            # knows the new member id (Kafka writes the group here too).
            self.write_metadata(fx)
            fx.reply(token, self._join_response(member, skip_assignment=True))
            return
        self._update_member(member, request, token, fx)
        if self.is_(GroupState.PREPARING_REBALANCE):
            self.try_complete_join(now_ms, fx)
        else:
            self.prepare_rebalance(now_ms, fx, config)
            self.try_complete_join(now_ms, fx)

    def _join_response(self, member: Member, *, skip_assignment: bool = False) -> JoinGroupResponse:
        is_leader = member.member_id == self.leader_id
        members: tuple[JoinedMember, ...] = ()
        if is_leader:
            members = tuple(
                JoinedMember(
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    metadata=m.metadata_for(self.protocol_name),
                )
                for m in self.members.values()
            )
        return JoinGroupResponse(
            error_code=ErrorCode.NONE,
            generation_id=self.generation_id,
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            leader=self.leader_id or "",
            member_id=member.member_id,
            members=members,
            skip_assignment=skip_assignment and is_leader,
        )

    # ------------------------------------------------------------------ rebalancing

    def prepare_rebalance(self, now_ms: int, fx: Effects, config: GroupConfig) -> None:
        if self.is_(GroupState.COMPLETING_REBALANCE):
            self._reset_assignments(fx)
        if self.is_(GroupState.EMPTY):
            delay = config.initial_rebalance_delay_ms
            self.initial_delay_remaining_ms = max(self.rebalance_timeout_ms() - delay, 0)
            self.join_deadline_ms = now_ms + delay
        else:
            self.initial_delay_remaining_ms = None
            self.join_deadline_ms = now_ms + self.rebalance_timeout_ms()
        self.new_member_added = False
        self.sync_deadline_ms = None
        self.pending_sync.clear()
        self.transition(GroupState.PREPARING_REBALANCE, now_ms)

    def maybe_prepare_rebalance(self, now_ms: int, fx: Effects, config: GroupConfig) -> None:
        if self.is_(GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY):
            self.prepare_rebalance(now_ms, fx, config)

    def _reset_assignments(self, fx: Effects) -> None:
        for member in self.members.values():
            member.assignment = b""
            if member.awaiting_sync is not None:
                fx.reply(
                    member.awaiting_sync,
                    SyncGroupResponse(error_code=ErrorCode.REBALANCE_IN_PROGRESS),
                )
                member.awaiting_sync = None

    def try_complete_join(self, now_ms: int, fx: Effects) -> None:
        if not self.is_(GroupState.PREPARING_REBALANCE):
            return
        if self.initial_delay_remaining_ms is not None:
            return  # the initial delay always runs its course
        if self.all_members_joined():
            self.complete_join(now_ms, fx)

    def on_join_deadline(self, now_ms: int, fx: Effects, config: GroupConfig) -> None:
        assert self.is_(GroupState.PREPARING_REBALANCE)
        remaining = self.initial_delay_remaining_ms
        if remaining is not None and self.new_member_added and remaining > 0:
            delay = min(config.initial_rebalance_delay_ms, remaining)
            self.initial_delay_remaining_ms = remaining - delay
            self.join_deadline_ms = now_ms + delay
            self.new_member_added = False
            return
        self.complete_join(now_ms, fx)

    def complete_join(self, now_ms: int, fx: Effects) -> None:
        # Dynamic members that did not rejoin in time are out; static ones stay
        # until their session expires (KIP-345).
        for member in list(self.members.values()):
            if member.awaiting_join is None and member.group_instance_id is None:
                self.remove_member(member.member_id, fx)
        self.join_deadline_ms = None
        self.initial_delay_remaining_ms = None
        self.generation_id += 1
        if not self.members:
            self.protocol_name = None
            self.leader_id = None
            self.transition(GroupState.EMPTY, now_ms)
            self.write_metadata(fx)
            return
        self.protocol_name = self.select_protocol()
        if self.leader_id not in self.members:
            self.leader_id = next(iter(self.members))
        self.transition(GroupState.COMPLETING_REBALANCE, now_ms)
        self.sync_deadline_ms = now_ms + self.rebalance_timeout_ms()
        self.pending_sync = set(self.members)
        for member in self.members.values():
            member.last_heartbeat_ms = now_ms
            if member.awaiting_join is not None:
                fx.reply(member.awaiting_join, self._join_response(member))
                member.awaiting_join = None

    def on_sync_deadline(self, now_ms: int, fx: Effects, config: GroupConfig) -> None:
        """Members that took a join response but never synced are gone (Kafka's
        pending-sync expiry), and the rest rebalance without them."""
        self.sync_deadline_ms = None
        missing = sorted(self.pending_sync)
        self.pending_sync.clear()
        if not missing:
            return
        for member_id in missing:
            self.remove_member(member_id, fx)
        self.maybe_prepare_rebalance(now_ms, fx, config)
        self.try_complete_join(now_ms, fx)

    def remove_member(self, member_id: str, fx: Effects) -> None:
        member = self.members.pop(member_id)
        if member.awaiting_join is not None:
            fx.reply(member.awaiting_join, _join_error(ErrorCode.UNKNOWN_MEMBER_ID, member_id))
        if member.awaiting_sync is not None:
            fx.reply(
                member.awaiting_sync, SyncGroupResponse(error_code=ErrorCode.UNKNOWN_MEMBER_ID)
            )
        if member.group_instance_id is not None:
            del self.static_members[member.group_instance_id]
        self.pending_sync.discard(member_id)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)

    def member_left(self, now_ms: int, fx: Effects, config: GroupConfig) -> None:
        """After members were removed: Kafka's removeMemberAndUpdateGroup."""
        if self.is_(GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self.prepare_rebalance(now_ms, fx, config)
        self.try_complete_join(now_ms, fx)

    # ------------------------------------------------------------------ syncing

    def complete_sync(self, assignments: dict[str, bytes], now_ms: int, fx: Effects) -> None:
        """The leader's assignment: store it, go Stable, answer every held SyncGroup."""
        for member in self.members.values():
            member.assignment = assignments.get(member.member_id, b"")
        self.transition(GroupState.STABLE, now_ms)
        self.write_metadata(fx)
        for member in self.members.values():
            if member.awaiting_sync is not None:
                fx.reply(member.awaiting_sync, self.sync_response(member))
                member.awaiting_sync = None

    def sync_response(self, member: Member) -> SyncGroupResponse:
        return SyncGroupResponse(
            error_code=ErrorCode.NONE,
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            assignment=member.assignment,
        )

    # ------------------------------------------------------------------ records

    def metadata_value(self) -> GroupMetadataValue:
        return GroupMetadataValue(
            protocol_type=self.protocol_type,
            generation=self.generation_id,
            protocol=self.protocol_name,
            leader=self.leader_id,
            current_state_timestamp_ms=self.state_timestamp_ms,
            members=tuple(
                MemberMetadata(
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    client_id=m.client_id,
                    client_host=m.client_host,
                    rebalance_timeout_ms=m.rebalance_timeout_ms,
                    session_timeout_ms=m.session_timeout_ms,
                    subscription=m.metadata_for(self.protocol_name),
                    assignment=m.assignment,
                )
                for m in self.members.values()
            ),
        )

    def write_metadata(self, fx: Effects) -> None:
        assert self.is_(GroupState.STABLE, GroupState.EMPTY), self.state
        value = self.metadata_value()
        self.last_written = value
        fx.write(GroupRecord(key=GroupMetadataKey(group_id=self.group_id), value=value))

    def commit_offset(
        self, topic: str, partition: int, value: OffsetCommitValue, fx: Effects
    ) -> None:
        self.offsets[(topic, partition)] = CommittedOffset(
            value.offset, value.leader_epoch, value.metadata, value.commit_timestamp_ms
        )
        key = OffsetCommitKey(group_id=self.group_id, topic=topic, partition=partition)
        fx.write(GroupRecord(key=key, value=value))

    def delete_offset(self, topic: str, partition: int, fx: Effects) -> None:
        if self.offsets.pop((topic, partition), None) is not None:
            key = OffsetCommitKey(group_id=self.group_id, topic=topic, partition=partition)
            fx.write(GroupRecord(key=key, value=None))

    def durable_view(self) -> GroupView | None:
        """The group as `__consumer_offsets` holds it (None: never written)."""
        if self.is_(GroupState.STABLE, GroupState.EMPTY) and self.last_written is not None:
            live = self.metadata_value()
            # Stable and Empty are stored on entry and on every change while in them.
            assert live == self.last_written, (
                f"group {self.group_id!r} changed without a record: {live} != {self.last_written}"
            )
        value = self.last_written
        if value is None:
            return None
        return GroupView(
            value.protocol_type,
            value.generation,
            value.protocol,
            value.leader,
            value.current_state_timestamp_ms,
            value.members,
        )

    @classmethod
    def loaded(cls, group_id: str, value: GroupMetadataValue, now_ms: int) -> ClassicGroup:
        """The group a metadata record describes (Kafka's loadGroup): Stable with its
        members, who get a full session from the load, or Empty."""
        group = cls(group_id, value.current_state_timestamp_ms)
        group.generation_id = value.generation
        group.protocol_type = value.protocol_type
        group.protocol_name = value.protocol
        group.leader_id = value.leader
        for m in value.members:
            group.members[m.member_id] = Member(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                session_timeout_ms=m.session_timeout_ms,
                rebalance_timeout_ms=m.rebalance_timeout_ms,
                protocol_type=value.protocol_type or "",
                protocols=((value.protocol or "", m.subscription),),
                last_heartbeat_ms=now_ms,
                assignment=m.assignment,
            )
            if m.group_instance_id is not None:
                group.static_members[m.group_instance_id] = m.member_id
        # Loading is construction, not a transition: Kafka sets the state directly.
        group.state = GroupState.STABLE if group.members else GroupState.EMPTY
        group.last_written = value
        return group


def _join_error(code: ErrorCode, member_id: str) -> JoinGroupResponse:
    return JoinGroupResponse(error_code=code, generation_id=NO_GENERATION, member_id=member_id)


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
SUBSCRIPTION_TOPICS_MAX = 100_000  # a bound on a member-supplied count


def parse_subscription_topics(metadata: bytes) -> frozenset[str] | None:
    """The topics of a ConsumerProtocolSubscription (every version begins with
    version i16, then topics as an i32 count of i16-length strings; not flexible)."""
    try:
        (version,) = _I16.unpack_from(metadata, 0)
        (count,) = _I32.unpack_from(metadata, 2)
        if version < 0 or not 0 <= count <= SUBSCRIPTION_TOPICS_MAX:
            return None
        position = 6
        topics = set()
        for _ in range(count):
            (length,) = _I16.unpack_from(metadata, position)
            position += 2
            if length < 0 or position + length > len(metadata):
                return None
            topics.add(metadata[position : position + length].decode("utf-8"))
            position += length
    except (struct.error, UnicodeDecodeError):
        return None
    return frozenset(topics)


def encode_subscription(topics: list[str], user_data: bytes | None = None) -> bytes:
    """A ConsumerProtocolSubscription v0 (for tests and pykraft's own consumer)."""
    out = bytearray(_I16.pack(0) + _I32.pack(len(topics)))
    for topic in topics:
        encoded = topic.encode("utf-8")
        out += _I16.pack(len(encoded)) + encoded
    out += _I32.pack(-1) if user_data is None else _I32.pack(len(user_data)) + user_data
    return bytes(out)
