"""GroupMember against a scripted coordinator: KIP-394's rejoin with the given id, the
leader's assignment in SyncGroup, and what each heartbeat error does to the member."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from client.assignors import assignors_named
from client.consumer_protocol import (
    Assignment,
    Subscription,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from client.group_member import GroupMember, MemberState
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

JOIN, SYNC, HEARTBEAT, LEAVE = 11, 14, 12, 13
VERSIONS = {JOIN: 7, SYNC: 5, HEARTBEAT: 4, LEAVE: 4}


class FakeCluster:
    request_timeout_s = 1.0

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = {t: dict.fromkeys(range(n)) for t, n in partitions.items()}

    async def refresh(self, topics: Any = None) -> None:
        return None


class ScriptedCoordinator:
    """Answers each request with the next scripted answer for its API (a response, or
    a KafkaError to raise), and keeps the requests."""

    group_id = "g"

    def __init__(self, script: dict[int, list[Any]], partitions: dict[str, int]) -> None:
        self.script = script
        self.cluster = FakeCluster(partitions)
        self.sent: list[tuple[int, Any]] = []

    async def call(self, build: Callable[[int], Any], api_key: int, **_: Any) -> Any:
        request = build(VERSIONS[api_key])
        self.sent.append((api_key, request))
        answer = self.script[api_key].pop(0)
        if isinstance(answer, KafkaError):
            raise answer
        return answer


def refused(code: int, **response: Any) -> KafkaError:
    error = KafkaError(code, "scripted")
    error.response = kafka.JoinGroupResponse(**response)  # type: ignore[attr-defined]
    return error


def member_for(coordinator: ScriptedCoordinator, strategy: str = "range") -> GroupMember:
    return GroupMember(
        coordinator,  # type: ignore[arg-type]
        assignors=assignors_named([strategy]),
        group_instance_id=None,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        max_poll_interval_ms=30_000,
    )


def joined(member_id: str, leader: str, members: list[tuple[str, tuple[str, ...]]]) -> Any:
    Member = kafka.JoinGroupResponse.JoinGroupResponseMember
    return kafka.JoinGroupResponse(
        generation_id=3,
        protocol_type="consumer",
        protocol_name="range",
        leader=leader,
        member_id=member_id,
        members=tuple(
            Member(member_id=m, metadata=encode_subscription(Subscription(topics=t)))
            for m, t in members
        ),
    )


async def test_a_new_member_rejoins_with_the_id_given_and_the_leader_assigns() -> None:
    mine = Assignment(partitions=(("t", 0), ("t", 1)))
    coordinator = ScriptedCoordinator(
        {
            JOIN: [
                refused(ErrorCode.MEMBER_ID_REQUIRED, member_id="m-1"),
                joined("m-1", "m-1", [("m-1", ("t",)), ("m-2", ("t",))]),
            ],
            SYNC: [kafka.SyncGroupResponse(assignment=encode_assignment(mine))],
        },
        {"t": 4},
    )
    member = member_for(coordinator)
    given = await member.join(["t"], owned=[])
    assert given == (("t", 0), ("t", 1))
    assert member.state is MemberState.STABLE and member.generation_id == 3
    assert [key for key, _ in coordinator.sent] == [JOIN, JOIN, SYNC]
    (_, first), (_, second), (_, sync_request) = coordinator.sent
    assert (first.member_id, second.member_id) == ("", "m-1")
    assert decode_subscription(first.protocols[0].metadata).topics == ("t",)
    plan = {
        a.member_id: decode_assignment(a.assignment).partitions for a in sync_request.assignments
    }
    assert plan == {"m-1": (("t", 0), ("t", 1)), "m-2": (("t", 2), ("t", 3))}
    assert sync_request.generation_id == 3 and sync_request.protocol_name == "range"


async def test_a_follower_sends_no_assignments_and_a_rebalance_during_sync_rejoins() -> None:
    coordinator = ScriptedCoordinator(
        {
            JOIN: [joined("m-2", "m-1", []), joined("m-2", "m-1", [])],
            SYNC: [
                KafkaError(ErrorCode.REBALANCE_IN_PROGRESS, "scripted"),
                kafka.SyncGroupResponse(assignment=b""),
            ],
        },
        {"t": 4},
    )
    member = member_for(coordinator)
    member.member_id = "m-2"
    assert await member.join(["t"], owned=[]) == ()
    syncs = [request for key, request in coordinator.sent if key == SYNC]
    assert len(syncs) == 2 and all(s.assignments == () for s in syncs)


@pytest.mark.parametrize(
    ("code", "lost", "member_id_kept", "fatal"),
    [
        (ErrorCode.REBALANCE_IN_PROGRESS, False, True, False),
        (ErrorCode.ILLEGAL_GENERATION, True, True, False),
        (ErrorCode.UNKNOWN_MEMBER_ID, True, False, False),
        (ErrorCode.FENCED_INSTANCE_ID, True, False, True),
    ],
)
async def test_what_a_heartbeat_error_does(
    code: int, lost: bool, member_id_kept: bool, fatal: bool
) -> None:
    coordinator = ScriptedCoordinator({HEARTBEAT: [KafkaError(code, "scripted")]}, {})
    member = member_for(coordinator)
    member.member_id, member.generation_id = "m-1", 5
    member.state, member.rejoin_needed = MemberState.STABLE, False
    await member.heartbeat()
    assert member.rejoin_needed
    assert member.lost is lost
    assert (member.member_id == "m-1") is member_id_kept
    assert (member.fatal is not None) is fatal
    if fatal:
        with pytest.raises(KafkaError, match="FENCED_INSTANCE_ID"):
            await member.join(["t"], owned=[])


async def test_cooperative_members_name_what_they_own_and_eager_ones_do_not() -> None:
    for strategy, owned in (("cooperative-sticky", (("t", 1),)), ("range", ())):
        coordinator = ScriptedCoordinator(
            {JOIN: [joined("m-2", "m-1", [])], SYNC: [kafka.SyncGroupResponse(assignment=b"")]},
            {"t": 2},
        )
        member = member_for(coordinator, strategy)
        member.member_id = "m-2"
        await member.join(["t"], owned=[("t", 1)])
        join = coordinator.sent[0][1]
        assert decode_subscription(join.protocols[0].metadata).owned_partitions == owned
