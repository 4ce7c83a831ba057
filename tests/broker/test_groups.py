"""The group coordinator core: one test per rule of Kafka's classic protocol, and a
hypothesis state machine in which consumers join, sync, heartbeat, leave, commit and
restart while time passes, with invariants checked after every step."""

from __future__ import annotations

import itertools
import random

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.groups import ALLOWED_TRANSITIONS, ClassicGroup, GroupState
from broker.groups.coordinator import Effects, GroupConfig, GroupCoordinator
from broker.groups.group import encode_subscription, parse_subscription_topics
from broker.groups.hashing import java_string_hash, partition_for
from broker.groups.messages import (
    CommitPartition,
    HeartbeatRequest,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    LeavingMember,
    OffsetCommitRequest,
    OffsetCommitResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    GroupRecord,
    GroupRecordError,
    MemberMetadata,
    OffsetCommitKey,
    OffsetCommitValue,
)
from client.protocol.errors import ErrorCode

E = ErrorCode
SUBSCRIPTION = encode_subscription(["t"])
PROTOCOLS = (("range", SUBSCRIPTION),)
SESSION_MS = 10_000
REBALANCE_MS = 20_000


def join(
    member_id: str = "",
    *,
    instance: str | None = None,
    client: str = "c",
    protocols: tuple[tuple[str, bytes], ...] = PROTOCOLS,
    group: str = "g",
    session_ms: int = SESSION_MS,
) -> JoinGroupRequest:
    return JoinGroupRequest(
        group_id=group,
        member_id=member_id,
        group_instance_id=instance,
        client_id=client,
        client_host="/127.0.0.1",
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=REBALANCE_MS,
        protocol_type="consumer",
        protocols=protocols,
    )


def only(fx: Effects, token: object) -> object:
    response = fx.reply_to(token)
    assert response is not None, f"no reply to {token!r} in {fx.replies}"
    return response


def joined(
    coordinator: GroupCoordinator, token: object, request: JoinGroupRequest, now: int
) -> JoinGroupResponse:
    """Join as a v4+ client: take the member id MEMBER_ID_REQUIRED hands out, rejoin."""
    fx = coordinator.join_group(request, token, now)
    response = fx.reply_to(token)
    if isinstance(response, JoinGroupResponse) and response.error_code == E.MEMBER_ID_REQUIRED:
        request = JoinGroupRequest(**{**_fields(request), "member_id": response.member_id})
        fx = coordinator.join_group(request, token, now)
        response = fx.reply_to(token)
    assert response is None or isinstance(response, JoinGroupResponse)
    return response  # type: ignore[return-value]


def _fields(request: JoinGroupRequest) -> dict[str, object]:
    return attrs.asdict(request, recurse=False)


def new_coordinator(**config: int) -> GroupCoordinator:
    return GroupCoordinator(GroupConfig(**config), rng=random.Random(7))


def stable_group_of_one(
    coordinator: GroupCoordinator, records: list[GroupRecord] | None = None
) -> JoinGroupResponse:
    records = records if records is not None else []
    assert joined(coordinator, "j1", join(), 0) is None  # held: the initial delay
    fx = coordinator.tick(3_000)
    records.extend(fx.records)
    response = only(fx, "j1")
    assert isinstance(response, JoinGroupResponse) and response.error_code == E.NONE
    fx = coordinator.sync_group(
        SyncGroupRequest(
            group_id="g",
            generation_id=response.generation_id,
            member_id=response.member_id,
            assignments=((response.member_id, b"all"),),
        ),
        "s1",
        3_000,
    )
    records.extend(fx.records)
    assert only(fx, "s1") == SyncGroupResponse(
        error_code=E.NONE, protocol_type="consumer", protocol_name="range", assignment=b"all"
    )
    return response


# ---------------------------------------------------------------------- partition of a group


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 97),
        ("hello", 99162322),
        ("Aa", 2112),
        ("BB", 2112),
        ("hello world", 1794106052),
        ("polygenelubricants", -(2**31)),  # Integer.MIN_VALUE
        ("\U0001f600", 1772899),  # a surrogate pair: two UTF-16 code units
    ],
)
def test_java_string_hash(text: str, expected: int) -> None:
    assert java_string_hash(text) == expected


def test_partition_for_uses_kafkas_abs() -> None:
    assert partition_for("polygenelubricants", 50) == 0  # Utils.abs(MIN_VALUE) = 0
    assert partition_for("hello", 50) == 99162322 % 50


# ---------------------------------------------------------------------- records


def test_records_round_trip_and_keys_are_canonical() -> None:
    member = MemberMetadata(
        member_id="m-1",
        group_instance_id=None,
        client_id="c",
        client_host="/h",
        rebalance_timeout_ms=1,
        session_timeout_ms=2,
        subscription=b"s",
        assignment=b"a",
    )
    records = [
        GroupRecord(
            key=OffsetCommitKey(group_id="g", topic="t", partition=3),
            value=OffsetCommitValue(offset=5, leader_epoch=2, metadata="m", commit_timestamp_ms=9),
        ),
        GroupRecord(key=OffsetCommitKey(group_id="g", topic="t", partition=3), value=None),
        GroupRecord(
            key=GroupMetadataKey(group_id="g"),
            value=GroupMetadataValue(
                protocol_type="consumer",
                generation=4,
                protocol="range",
                leader="m-1",
                current_state_timestamp_ms=7,
                members=(member,),
            ),
        ),
        GroupRecord(key=GroupMetadataKey(group_id="g"), value=None),
    ]
    for record in records:
        key, value = record.to_wire()
        assert GroupRecord.from_wire(key, value) == record
    assert records[0].to_wire()[0] == records[1].to_wire()[0]
    assert records[0].to_wire()[0] != records[2].to_wire()[0]


@pytest.mark.parametrize(
    "key", [None, b"", b"\xff", b"\x80", b"\x82\x01\x61", b"\x83\x02\x61g\x00", b"\x82\x09\x61g"]
)
def test_malformed_records_are_refused(key: bytes | None) -> None:
    with pytest.raises(GroupRecordError):
        GroupRecord.from_wire(key, None)


# ---------------------------------------------------------------------- the state table


@pytest.mark.parametrize(("source", "target"), list(itertools.product(GroupState, GroupState)))
def test_every_transition_is_allowed_or_an_assertion(
    source: GroupState, target: GroupState
) -> None:
    group = ClassicGroup("g", 0)
    group.state = source
    if target in ALLOWED_TRANSITIONS[source]:
        group.transition(target, 5)
        assert group.state is target and group.state_timestamp_ms == 5
    else:
        with pytest.raises(AssertionError, match="not allowed"):
            group.transition(target, 5)


# ---------------------------------------------------------------------- JoinGroup and SyncGroup


def test_member_id_required_then_initial_delay_then_leader_assigns() -> None:
    coordinator = new_coordinator()
    fx = coordinator.join_group(join(), "j", 0)
    first = only(fx, "j")
    assert isinstance(first, JoinGroupResponse) and first.error_code == E.MEMBER_ID_REQUIRED
    assert first.member_id.startswith("c-")
    # The rejoin with the id is held through group.initial.rebalance.delay.ms.
    fx = coordinator.join_group(join(first.member_id), "j", 0)
    assert fx.replies == [] and coordinator.next_deadline_ms() == 3_000
    assert coordinator.tick(2_999).replies == []
    response = only(coordinator.tick(3_000), "j")
    assert isinstance(response, JoinGroupResponse)
    assert (response.error_code, response.generation_id, response.leader) == (
        E.NONE,
        1,
        first.member_id,
    )
    assert [m.member_id for m in response.members] == [first.member_id]
    assert response.members[0].metadata == SUBSCRIPTION
    assert coordinator.groups["g"].state is GroupState.COMPLETING_REBALANCE


def test_a_new_member_extends_the_initial_delay() -> None:
    coordinator = new_coordinator()
    assert joined(coordinator, "a", join(client="a"), 0) is None
    assert joined(coordinator, "b", join(client="b"), 2_000) is None
    assert coordinator.tick(3_000).replies == []  # extended by another delay
    fx = coordinator.tick(6_000)
    assert {token for token, _ in fx.replies} == {"a", "b"}


def test_followers_wait_for_the_leader_and_get_their_assignment() -> None:
    coordinator = new_coordinator()
    joined(coordinator, "a", join(client="a"), 0)
    joined(coordinator, "b", join(client="b"), 0)
    assert coordinator.tick(3_000).replies == []  # b arrived during the delay: extended
    fx = coordinator.tick(6_000)
    a, b = only(fx, "a"), only(fx, "b")
    assert isinstance(a, JoinGroupResponse) and isinstance(b, JoinGroupResponse)
    leader, follower = (a, b) if a.leader == a.member_id else (b, a)
    assert len(leader.members) == 2 and follower.members == ()
    fx = coordinator.sync_group(
        SyncGroupRequest(group_id="g", generation_id=1, member_id=follower.member_id), "fs", 3_001
    )
    assert fx.replies == []  # held until the leader syncs
    heartbeat = coordinator.heartbeat(
        HeartbeatRequest(group_id="g", generation_id=1, member_id=follower.member_id), "h", 3_001
    )
    assert only(heartbeat, "h").error_code == E.NONE  # type: ignore[union-attr]
    fx = coordinator.sync_group(
        SyncGroupRequest(
            group_id="g",
            generation_id=1,
            member_id=leader.member_id,
            assignments=((leader.member_id, b"L"), (follower.member_id, b"F"), ("stranger", b"x")),
        ),
        "ls",
        3_002,
    )
    assert only(fx, "fs").assignment == b"F"  # type: ignore[union-attr]
    assert only(fx, "ls").assignment == b"L"  # type: ignore[union-attr]
    assert [type(r.value) for r in fx.records] == [GroupMetadataValue]
    assert coordinator.groups["g"].state is GroupState.STABLE


def test_protocols_must_be_shared() -> None:
    coordinator = new_coordinator()
    stable_group_of_one(coordinator)
    fx = coordinator.join_group(join(protocols=(("roundrobin", b""),)), "x", 3_000)
    assert only(fx, "x").error_code == E.INCONSISTENT_GROUP_PROTOCOL  # type: ignore[union-attr]
    empty = coordinator.join_group(join(group="h", protocols=()), "y", 0)
    assert only(empty, "y").error_code == E.INCONSISTENT_GROUP_PROTOCOL  # type: ignore[union-attr]


def test_join_validation() -> None:
    coordinator = new_coordinator()
    fx = coordinator.join_group(join(group=""), "x", 0)
    assert only(fx, "x").error_code == E.INVALID_GROUP_ID  # type: ignore[union-attr]
    fx = coordinator.join_group(join(session_ms=5_999), "x", 0)
    assert only(fx, "x").error_code == E.INVALID_SESSION_TIMEOUT  # type: ignore[union-attr]
    fx = coordinator.join_group(join("made-up"), "x", 0)
    assert only(fx, "x").error_code == E.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]
    small = new_coordinator(group_max_size=1)
    stable_group_of_one(small)
    fx = small.join_group(join(client="z"), "z", 3_000)
    assert only(fx, "z").error_code == E.GROUP_MAX_SIZE_REACHED  # type: ignore[union-attr]


def test_a_join_in_a_stable_group_rebalances_and_old_generation_is_told() -> None:
    coordinator = new_coordinator()
    first = stable_group_of_one(coordinator)
    assert joined(coordinator, "b", join(client="b"), 4_000) is None
    group = coordinator.groups["g"]
    assert group.state is GroupState.PREPARING_REBALANCE
    beat = HeartbeatRequest(group_id="g", generation_id=1, member_id=first.member_id)
    assert only(coordinator.heartbeat(beat, "h", 4_001), "h").error_code == E.REBALANCE_IN_PROGRESS  # type: ignore[union-attr]
    sync = SyncGroupRequest(group_id="g", generation_id=1, member_id=first.member_id)
    assert only(coordinator.sync_group(sync, "s", 4_001), "s").error_code == E.REBALANCE_IN_PROGRESS  # type: ignore[union-attr]
    # Every known member rejoined: the join completes at once (no delay: not a new group).
    fx = coordinator.join_group(join(first.member_id), "a", 4_002)
    assert {token for token, _ in fx.replies} == {"a", "b"}
    assert group.generation_id == 2
    stale = HeartbeatRequest(group_id="g", generation_id=1, member_id=first.member_id)
    assert only(coordinator.heartbeat(stale, "h", 4_003), "h").error_code == E.ILLEGAL_GENERATION  # type: ignore[union-attr]
    unknown = HeartbeatRequest(group_id="g", generation_id=2, member_id="nobody")
    assert only(coordinator.heartbeat(unknown, "h", 4_003), "h").error_code == E.UNKNOWN_MEMBER_ID  # type: ignore[union-attr]


def test_rebalance_timeout_drops_members_that_did_not_rejoin() -> None:
    coordinator = new_coordinator()
    first = stable_group_of_one(coordinator)
    joined(coordinator, "b", join(client="b"), 4_000)
    fx = coordinator.tick(4_000 + REBALANCE_MS)
    response = only(fx, "b")
    assert isinstance(response, JoinGroupResponse) and response.generation_id == 2
    assert first.member_id not in coordinator.groups["g"].members


def test_session_timeout_expires_a_member_and_the_group_empties() -> None:
    coordinator = new_coordinator()
    first = stable_group_of_one(coordinator)
    assert coordinator.next_deadline_ms() == 3_000 + SESSION_MS
    assert coordinator.tick(3_000 + SESSION_MS - 1).records == []
    fx = coordinator.tick(3_000 + SESSION_MS)
    group = coordinator.groups["g"]
    assert group.state is GroupState.EMPTY and group.generation_id == 2
    assert first.member_id not in group.members
    assert [r.value.members for r in fx.records] == [()]  # type: ignore[union-attr]


def test_sync_timeout_drops_a_member_that_never_synced() -> None:
    coordinator = new_coordinator()
    joined(coordinator, "a", join(client="a"), 0)
    fx = coordinator.tick(3_000)
    assert only(fx, "a").error_code == E.NONE  # type: ignore[union-attr]
    coordinator.tick(3_000 + REBALANCE_MS)
    assert coordinator.groups["g"].state is GroupState.EMPTY


def test_leave_group_in_a_batch() -> None:
    coordinator = new_coordinator()
    first = stable_group_of_one(coordinator)
    request = LeaveGroupRequest(
        group_id="g",
        members=(LeavingMember(member_id=first.member_id), LeavingMember(member_id="ghost")),
    )
    fx = coordinator.leave_group(request, "l", 5_000)
    response = only(fx, "l")
    assert isinstance(response, LeaveGroupResponse)
    assert [m.error_code for m in response.members] == [E.NONE, E.UNKNOWN_MEMBER_ID]
    assert coordinator.groups["g"].state is GroupState.EMPTY


def test_static_member_rejoins_without_a_rebalance_and_fences_its_old_id() -> None:
    coordinator = new_coordinator()
    assert joined(coordinator, "a", join(instance="i-1"), 0) is None
    response = only(coordinator.tick(3_000), "a")
    assert isinstance(response, JoinGroupResponse)
    old_id = response.member_id
    assert old_id.startswith("i-1-")
    coordinator.sync_group(
        SyncGroupRequest(
            group_id="g", generation_id=1, member_id=old_id, assignments=((old_id, b"A"),)
        ),
        "s",
        3_000,
    )
    # The process restarts: it lost its member id, not its instance id.
    fx = coordinator.join_group(join(instance="i-1"), "a2", 5_000)
    again = only(fx, "a2")
    assert isinstance(again, JoinGroupResponse) and again.error_code == E.NONE
    assert again.member_id != old_id and again.generation_id == 1 and again.skip_assignment
    group = coordinator.groups["g"]
    assert group.state is GroupState.STABLE and group.leader_id == again.member_id
    assert len(fx.records) == 1  # the new member id is stored
    sync = SyncGroupRequest(
        group_id="g", generation_id=1, member_id=again.member_id, group_instance_id="i-1"
    )
    assert only(coordinator.sync_group(sync, "s2", 5_001), "s2").assignment == b"A"  # type: ignore[union-attr]
    old_beat = HeartbeatRequest(
        group_id="g", generation_id=1, member_id=old_id, group_instance_id="i-1"
    )
    assert only(coordinator.heartbeat(old_beat, "h", 5_001), "h").error_code == E.FENCED_INSTANCE_ID  # type: ignore[union-attr]
    changed = coordinator.join_group(
        join(instance="i-1", protocols=(("range", b"other"),)), "a3", 6_000
    )
    assert changed.replies != []  # a lone member: the rebalance completes at once
    assert group.generation_id == 2


# ---------------------------------------------------------------------- offsets


def commit(
    coordinator: GroupCoordinator,
    now: int,
    *,
    generation: int = -1,
    member: str = "",
    group: str = "g",
    metadata: str = "",
    offset: int = 10,
) -> ErrorCode:
    request = OffsetCommitRequest(
        group_id=group,
        generation_id=generation,
        member_id=member,
        partitions=(CommitPartition(topic="t", partition=0, offset=offset, metadata=metadata),),
    )
    response = only(coordinator.commit_offsets(request, "c", now), "c")
    assert isinstance(response, OffsetCommitResponse)
    return ErrorCode(response.partitions[0].error_code)


def test_simple_consumers_commit_with_generation_minus_one() -> None:
    coordinator = new_coordinator()
    assert commit(coordinator, 0, metadata="hello") == E.NONE
    fetched = coordinator.fetch_offsets("g", [("t", 0), ("t", 1)])
    assert [(p.offset, p.metadata) for p in fetched.partitions] == [(10, "hello"), (-1, "")]
    assert commit(coordinator, 0, generation=3, group="other") == E.ILLEGAL_GENERATION
    assert commit(coordinator, 0, metadata="x" * 4_097) == E.OFFSET_METADATA_TOO_LARGE


def test_commits_need_the_current_generation_and_membership() -> None:
    coordinator = new_coordinator()
    first = stable_group_of_one(coordinator)
    assert commit(coordinator, 4_000) == E.UNKNOWN_MEMBER_ID  # -1 is for empty groups only
    assert commit(coordinator, 4_000, generation=1, member="nobody") == E.UNKNOWN_MEMBER_ID
    assert commit(coordinator, 4_000, generation=0, member=first.member_id) == E.ILLEGAL_GENERATION
    assert commit(coordinator, 4_000, generation=1, member=first.member_id, offset=42) == E.NONE
    assert coordinator.fetch_offsets("g", None).partitions[0].offset == 42
    # After the join response, before the sync: REBALANCE_IN_PROGRESS.
    coordinator.join_group(join(first.member_id, protocols=(("range", b"new"),)), "j", 5_000)
    assert coordinator.groups["g"].state is GroupState.COMPLETING_REBALANCE
    assert (
        commit(coordinator, 5_000, generation=2, member=first.member_id) == E.REBALANCE_IN_PROGRESS
    )


def test_offsets_of_an_empty_group_expire_after_the_retention_and_the_group_goes() -> None:
    coordinator = new_coordinator(offsets_retention_ms=1_000_000)
    first = stable_group_of_one(coordinator)
    assert commit(coordinator, 4_000, generation=1, member=first.member_id) == E.NONE
    assert coordinator.expire_offsets(10**9).records == []  # Stable and subscribed to t
    coordinator.leave_group(
        LeaveGroupRequest(group_id="g", members=(LeavingMember(member_id=first.member_id),)),
        "l",
        5_000,
    )
    assert coordinator.expire_offsets(5_000 + 999_999).records == []
    fx = coordinator.expire_offsets(5_000 + 1_000_000)
    assert [(type(r.key), r.value) for r in fx.records] == [
        (OffsetCommitKey, None),
        (GroupMetadataKey, None),
    ]
    assert "g" not in coordinator.groups


def test_describe_list_delete_and_offset_delete() -> None:
    coordinator = new_coordinator()
    first = stable_group_of_one(coordinator)
    commit(coordinator, 4_000, generation=1, member=first.member_id)
    commit(coordinator, 4_000, group="simple")
    (described,) = coordinator.describe_groups(["g"])
    assert (described.state, described.protocol, described.members[0].assignment) == (
        "Stable",
        "range",
        b"all",
    )
    assert coordinator.describe_groups(["nope"])[0].state == "Dead"
    assert [(g.group_id, g.state) for g in coordinator.list_groups()] == [
        ("g", "Stable"),
        ("simple", "Empty"),
    ]
    assert [g.group_id for g in coordinator.list_groups(["empty"])] == ["simple"]
    fx = coordinator.delete_offsets("g", [("t", 0), ("u", 0)], "od", 4_000)
    codes = [p.error_code for p in only(fx, "od").partitions]  # type: ignore[union-attr]
    assert codes == [E.GROUP_SUBSCRIBED_TO_TOPIC, E.NONE]
    fx = coordinator.delete_groups(["g", "simple", "nope"], "d", 4_000)
    assert [d.error_code for d in only(fx, "d")] == [
        E.NON_EMPTY_GROUP,
        E.NONE,
        E.GROUP_ID_NOT_FOUND,
    ]  # type: ignore[union-attr]
    assert "simple" not in coordinator.groups
    assert (
        only(coordinator.delete_offsets("nope", [], "x", 0), "x").error_code == E.GROUP_ID_NOT_FOUND
    )  # type: ignore[union-attr]


def test_subscription_topics_parse_and_refuse_garbage() -> None:
    assert parse_subscription_topics(encode_subscription(["a", "b"], b"u")) == {"a", "b"}
    assert parse_subscription_topics(b"\x00") is None
    assert parse_subscription_topics(b"\x00\x00\x7f\xff\xff\xff") is None


def test_replay_rebuilds_the_stored_state() -> None:
    coordinator = new_coordinator()
    written: list[GroupRecord] = []
    first = stable_group_of_one(coordinator, written)
    assert len(written) == 1  # the Stable group, with its assignment
    request = OffsetCommitRequest(
        group_id="g",
        generation_id=1,
        member_id=first.member_id,
        partitions=(CommitPartition(topic="t", partition=0, offset=7),),
    )
    written.extend(coordinator.commit_offsets(request, "c", 4_000).records)
    replayed = GroupCoordinator.replay(written, 9_000, rng=random.Random(1))
    assert replayed.durable_state() == coordinator.durable_state()
    group = replayed.groups["g"]
    assert (
        group.state is GroupState.STABLE
        and group.members[first.member_id].last_heartbeat_ms == 9_000
    )


# ---------------------------------------------------------------------- the state machine

PARTITIONS = 6
CLIENTS = 4
STATIC = {2: "static-2", 3: "static-3"}


def range_assign(member_ids: list[str]) -> dict[str, bytes]:
    ordered = sorted(member_ids)
    share, extra = divmod(PARTITIONS, len(ordered))
    out, start = {}, 0
    for index, member_id in enumerate(ordered):
        count = share + (1 if index < extra else 0)
        out[member_id] = ",".join(str(p) for p in range(start, start + count)).encode()
        start += count
    return out


class Client:
    def __init__(self, index: int) -> None:
        self.index = index
        self.member_id = ""
        self.generation = -1
        self.leader = False
        self.members: list[str] = []
        self.waiting = False  # a JoinGroup or SyncGroup of this client is held


class GroupMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        self.coordinator = GroupCoordinator(GroupConfig(), rng=random.Random(seed))
        self.clients = [Client(i) for i in range(CLIENTS)]
        self.now = 0
        self.tokens = itertools.count()
        self.records: list[tuple[bytes, bytes | None]] = []
        # (life of the group, generation) -> partition -> client
        self.owners: dict[tuple[int, int], dict[int, int]] = {}
        self.lives: list[ClassicGroup] = []
        self.highest_generation = 0
        self.group: ClassicGroup | None = None

    # -- carrying out effects as a driver would

    def carry_out(self, fx: Effects) -> None:
        self.records.extend(record.to_wire() for record in fx.records)
        for token, response in fx.replies:
            kind, index, sent_generation, _ = token  # type: ignore[misc]
            client = self.clients[index]
            if kind in ("join", "sync"):
                client.waiting = False
            if kind == "join":
                assert isinstance(response, JoinGroupResponse)
                self.on_join(client, response)
            elif kind == "sync":
                assert isinstance(response, SyncGroupResponse)
                if response.error_code == E.NONE:
                    # Assignments go out for the current generation only: one
                    # generation is stable at a time.
                    group = self.coordinator.groups["g"]
                    assert group.is_(GroupState.STABLE)
                    assert sent_generation == group.generation_id
                    self.on_assignment(client, sent_generation, response.assignment)
                elif response.error_code in (E.UNKNOWN_MEMBER_ID, E.FENCED_INSTANCE_ID):
                    client.member_id = ""

    def on_join(self, client: Client, response: JoinGroupResponse) -> None:
        if response.error_code == E.NONE:
            client.member_id = response.member_id
            client.generation = response.generation_id
            client.leader = response.leader == response.member_id
            client.members = [m.member_id for m in response.members]
        elif response.error_code == E.MEMBER_ID_REQUIRED:
            client.member_id = response.member_id
        elif response.error_code in (E.UNKNOWN_MEMBER_ID, E.FENCED_INSTANCE_ID):
            client.member_id = ""

    def incarnation(self) -> int:
        """Which life of group g this is (an expired group starts again at generation 0)."""
        group = self.coordinator.groups["g"]
        if not self.lives or self.lives[-1] is not group:
            self.lives.append(group)
        return len(self.lives) - 1

    def on_assignment(self, client: Client, generation: int, assignment: bytes) -> None:
        owners = self.owners.setdefault((self.incarnation(), generation), {})
        for text in filter(None, assignment.decode().split(",")):
            partition = int(text)
            owner = owners.setdefault(partition, client.index)
            assert owner == client.index, (
                f"generation {generation}: partition {partition} given to clients {owner} "
                f"and {client.index}"
            )

    def token(self, kind: str, index: int, generation: int = -1) -> tuple[str, int, int, int]:
        return (kind, index, generation, next(self.tokens))

    # -- rules

    @rule(index=st.integers(0, CLIENTS - 1), restart=st.booleans())
    def join(self, index: int, restart: bool) -> None:
        client = self.clients[index]
        if restart:
            client.member_id = ""  # the process came back without its member id
        request = JoinGroupRequest(
            group_id="g",
            member_id=client.member_id,
            group_instance_id=STATIC.get(index),
            client_id=f"client-{index}",
            client_host="/h",
            session_timeout_ms=SESSION_MS,
            rebalance_timeout_ms=REBALANCE_MS,
            protocol_type="consumer",
            protocols=PROTOCOLS,
        )
        token = self.token("join", index)
        fx = self.coordinator.join_group(request, token, self.now)
        client.waiting = fx.reply_to(token) is None
        self.carry_out(fx)

    @rule(index=st.integers(0, CLIENTS - 1))
    def sync(self, index: int) -> None:
        client = self.clients[index]
        assignments: tuple[tuple[str, bytes], ...] = ()
        if client.leader and client.members:
            assignments = tuple(range_assign(client.members).items())
        request = SyncGroupRequest(
            group_id="g",
            generation_id=client.generation,
            member_id=client.member_id,
            group_instance_id=STATIC.get(index),
            assignments=assignments,
        )
        token = self.token("sync", index, client.generation)
        fx = self.coordinator.sync_group(request, token, self.now)
        client.waiting = fx.reply_to(token) is None
        self.carry_out(fx)

    @rule(steps=st.lists(st.integers(0, CLIENTS - 1), min_size=1, max_size=12))
    def behave(self, steps: list[int]) -> None:
        """Clients doing what a consumer does next: join, sync, then heartbeat and commit."""
        for index in steps:
            client = self.clients[index]
            if client.waiting:
                continue  # a consumer waits for its JoinGroup or SyncGroup answer
            group = self.coordinator.groups.get("g")
            member = None if group is None else group.members.get(client.member_id)
            if member is None or client.generation != group.generation_id:  # type: ignore[union-attr]
                self.join(index, restart=False)
            elif group.is_(GroupState.COMPLETING_REBALANCE):  # type: ignore[union-attr]
                self.sync(index)
            elif index % 2:
                self.commit(index, partition=index, offset=self.now % 1000)
            else:
                self.heartbeat(index)

    @rule(index=st.integers(0, CLIENTS - 1))
    def heartbeat(self, index: int) -> None:
        client = self.clients[index]
        request = HeartbeatRequest(
            group_id="g",
            generation_id=client.generation,
            member_id=client.member_id,
            group_instance_id=STATIC.get(index),
        )
        self.carry_out(self.coordinator.heartbeat(request, self.token("beat", index), self.now))

    @rule(index=st.integers(0, CLIENTS - 1))
    def leave(self, index: int) -> None:
        client = self.clients[index]
        leaving = LeavingMember(member_id=client.member_id, group_instance_id=STATIC.get(index))
        request = LeaveGroupRequest(group_id="g", members=(leaving,))
        self.carry_out(self.coordinator.leave_group(request, self.token("leave", index), self.now))
        client.member_id = ""

    @rule(
        index=st.integers(-1, CLIENTS - 1),
        partition=st.integers(0, PARTITIONS - 1),
        offset=st.integers(0, 1000),
    )
    def commit(self, index: int, partition: int, offset: int) -> None:
        """index -1: a simple consumer (no member id, generation -1)."""
        client = self.clients[index] if index >= 0 else Client(-1)
        group = self.coordinator.groups.get("g")
        before = (
            None
            if group is None
            else (group.state, group.generation_id, set(group.members), dict(group.static_members))
        )
        request = OffsetCommitRequest(
            group_id="g",
            generation_id=client.generation,
            member_id=client.member_id,
            group_instance_id=STATIC.get(index),
            partitions=(CommitPartition(topic="t", partition=partition, offset=offset),),
        )
        fx = self.coordinator.commit_offsets(request, self.token("commit", max(index, 0)), self.now)
        ((_, response),) = fx.replies
        assert isinstance(response, OffsetCommitResponse)
        self.records.extend(record.to_wire() for record in fx.records)
        if response.partitions[0].error_code != E.NONE:
            return
        # Only the current generation's members, or -1 on an empty (or new) group.
        if client.generation < 0:
            assert before is None or before[0] is GroupState.EMPTY, before
        else:
            assert before is not None
            state, generation, members, _ = before
            assert generation == client.generation and client.member_id in members
            assert state is not GroupState.COMPLETING_REBALANCE

    @rule(elapsed=st.sampled_from([1, 500, 2_999, 3_000, SESSION_MS, REBALANCE_MS]))
    def advance(self, elapsed: int) -> None:
        self.now += elapsed
        self.carry_out(self.coordinator.tick(self.now))

    @rule(elapsed=st.sampled_from([0, 7 * 24 * 3600 * 1000]))
    def expire_offsets(self, elapsed: int) -> None:
        self.now += elapsed
        self.carry_out(self.coordinator.expire_offsets(self.now))

    # -- invariants

    @invariant()
    def one_generation_at_a_time(self) -> None:
        if not hasattr(self, "coordinator"):
            return
        group = self.coordinator.groups.get("g")
        if group is None:
            return
        if group is not self.group:  # deleted (expired) and created again: from 0
            self.group, self.highest_generation = group, group.generation_id
        assert group.generation_id >= self.highest_generation, "the generation went back"
        self.highest_generation = group.generation_id
        if group.is_(GroupState.STABLE):
            # The stored assignment of the stable generation gives no partition twice.
            given = [p for m in group.members.values() for p in m.assignment.decode().split(",")]
            given = [p for p in given if p]
            assert len(given) == len(set(given)), given
        if group.is_(GroupState.EMPTY):
            assert not group.members and group.leader_id is None
        if group.members:
            assert group.leader_id in group.members

    @invariant()
    def replay_rebuilds_the_state(self) -> None:
        if not hasattr(self, "coordinator"):
            return
        decoded = [GroupRecord.from_wire(key, value) for key, value in self.records]
        replayed = GroupCoordinator.replay(decoded, self.now, rng=random.Random(0))
        assert replayed.durable_state() == self.coordinator.durable_state()


GroupMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGroupCoordinatorAgainstModel = GroupMachine.TestCase
