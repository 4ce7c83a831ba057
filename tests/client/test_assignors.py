"""Assignors (range, roundrobin: Kafka's documented examples; cooperative-sticky: KIP-429's
incremental rules) and the consumer protocol's bytes (against kafka-python's codec)."""

from __future__ import annotations

import random

import pytest

from client.assignors import (
    CooperativeStickyAssignor,
    GroupMemberSubscription,
    RangeAssignor,
    RoundRobinAssignor,
    assignors_named,
)
from client.consumer_protocol import (
    Assignment,
    ConsumerProtocolError,
    Subscription,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)


def member(member_id: str, *topics: str, owned=(), instance: str | None = None):
    return GroupMemberSubscription(
        member_id, instance, Subscription(topics=topics, owned_partitions=tuple(owned))
    )


def tps(topic: str, *partitions: int) -> list[tuple[str, int]]:
    return [(topic, p) for p in partitions]


# ---------------------------------------------------------------------- range, roundrobin


def test_range_matches_kafkas_documented_example() -> None:
    # RangeAssignor's javadoc: C0 and C1 on t0 and t1 of 3 partitions each.
    members = [member("C1", "t0", "t1"), member("C0", "t0", "t1")]
    plan = RangeAssignor().assign({"t0": 3, "t1": 3}, members)
    assert plan == {"C0": tps("t0", 0, 1) + tps("t1", 0, 1), "C1": tps("t0", 2) + tps("t1", 2)}


def test_range_gives_the_extra_partitions_to_the_first_members_per_topic() -> None:
    members = [member(f"m{i}", "t") for i in range(3)]
    plan = RangeAssignor().assign({"t": 8}, members)
    assert plan == {"m0": tps("t", 0, 1, 2), "m1": tps("t", 3, 4, 5), "m2": tps("t", 6, 7)}
    assert RangeAssignor().assign({"t": 2}, members)["m2"] == []


def test_roundrobin_matches_kafkas_documented_examples() -> None:
    members = [member("C0", "t0", "t1"), member("C1", "t0", "t1")]
    plan = RoundRobinAssignor().assign({"t0": 3, "t1": 3}, members)
    assert plan == {
        "C0": [("t0", 0), ("t0", 2), ("t1", 1)],
        "C1": [("t0", 1), ("t1", 0), ("t1", 2)],
    }
    # Unequal subscriptions: C0 reads t0; C1 t0, t1; C2 t0, t1, t2 (1, 2, 3 partitions).
    members = [member("C0", "t0"), member("C1", "t0", "t1"), member("C2", "t0", "t1", "t2")]
    plan = RoundRobinAssignor().assign({"t0": 1, "t1": 2, "t2": 3}, members)
    assert plan == {
        "C0": [("t0", 0)],
        "C1": [("t1", 0)],
        "C2": [("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)],
    }


def test_static_members_come_first_in_their_instance_id_order() -> None:
    members = [member("a", "t"), member("b", "t", instance="z"), member("c", "t", instance="y")]
    plan = RangeAssignor().assign({"t": 3}, members)
    assert plan == {"c": [("t", 0)], "b": [("t", 1)], "a": [("t", 2)]}


def test_topics_nobody_knows_are_left_out_and_unknown_names_refused() -> None:
    plan = RoundRobinAssignor().assign({"t": 2}, [member("a", "t", "missing")])
    assert plan == {"a": tps("t", 0, 1)}
    with pytest.raises(ValueError, match="sticky"):
        assignors_named(["sticky"])


# ---------------------------------------------------------------------- cooperative-sticky

STICKY = CooperativeStickyAssignor()


def test_sticky_first_assignment_is_balanced() -> None:
    plan = STICKY.assign({"t": 6}, [member(m, "t") for m in "abc"])
    assert sorted(len(p) for p in plan.values()) == [2, 2, 2]
    assert sorted(tp for p in plan.values() for tp in p) == tps("t", *range(6))


def test_a_joining_member_takes_partitions_in_two_rebalances_and_nobody_else_moves() -> None:
    owned = {"a": tps("t", 0, 1, 2), "b": tps("t", 3, 4, 5)}
    first = STICKY.assign(
        {"t": 6},
        [member("a", "t", owned=owned["a"]), member("b", "t", owned=owned["b"]), member("c", "t")],
    )
    # The partitions that must move are revoked only: the newcomer gets nothing yet.
    assert first["c"] == []
    assert set(first["a"]) < set(owned["a"]) and set(first["b"]) < set(owned["b"])
    assert len(first["a"]) == len(first["b"]) == 2
    second = STICKY.assign({"t": 6}, [member(m, "t", owned=first[m]) for m in "abc"])
    assert second["a"] == first["a"] and second["b"] == first["b"]  # they keep what they kept
    assert len(second["c"]) == 2
    assert sorted(tp for p in second.values() for tp in p) == tps("t", *range(6))


def test_a_leaving_members_partitions_go_to_the_others_at_once() -> None:
    plan = STICKY.assign(
        {"t": 6}, [member("a", "t", owned=tps("t", 0, 1)), member("c", "t", owned=tps("t", 4, 5))]
    )
    assert set(plan["a"]) >= {("t", 0), ("t", 1)} and set(plan["c"]) >= {("t", 4), ("t", 5)}
    assert sorted(tp for p in plan.values() for tp in p) == tps("t", *range(6))


def test_a_partition_claimed_by_two_members_is_kept_by_neither() -> None:
    plan = STICKY.assign(
        {"t": 2}, [member("a", "t", owned=tps("t", 0)), member("b", "t", owned=tps("t", 0, 1))]
    )
    assert sorted(tp for p in plan.values() for tp in p) == tps("t", 0, 1)
    assert plan["b"] == [("t", 1)]


def test_sticky_is_incremental_over_random_membership_changes() -> None:
    """Whatever the changes: no partition in two assignments; an owned partition is
    never given to another member in the same generation; once the membership is
    still for a rebalance, everything is assigned and balanced."""
    rng = random.Random(16)
    counts = {"t0": 7, "t1": 5}
    owned: dict[str, list[tuple[str, int]]] = {}
    next_id = 0
    for _ in range(60):
        if owned and rng.random() < 0.4:
            owned.pop(rng.choice(sorted(owned)))
        if len(owned) < 5 and rng.random() < 0.6:
            owned[f"m{next_id:02d}"] = []
            next_id += 1
        if not owned:
            continue
        for _ in range(2):  # the rebalance, then the one that follows a revocation
            plan = STICKY.assign(counts, [member(m, "t0", "t1", owned=o) for m, o in owned.items()])
            given = [tp for p in plan.values() for tp in p]
            assert len(given) == len(set(given))
            for m, partitions in plan.items():
                for other, had in owned.items():
                    if other != m:
                        assert not set(partitions) & set(had), (m, other, partitions, had)
            owned = {m: list(p) for m, p in plan.items()}
        assert len(given) == 12
        sizes = [len(p) for p in plan.values()]
        assert max(sizes) - min(sizes) <= 1, plan


# ---------------------------------------------------------------------- the protocol's bytes


def test_subscription_and_assignment_round_trip_every_version() -> None:
    subscription = Subscription(
        topics=("a", "b"),
        owned_partitions=(("a", 0), ("b", 3)),
        user_data=b"u",
        generation_id=4,
        rack_id="r1",
    )
    for version in range(4):
        back = decode_subscription(encode_subscription(subscription, version))
        assert back.topics == ("a", "b")
        assert back.owned_partitions == (subscription.owned_partitions if version >= 1 else ())
        assert back.generation_id == (4 if version >= 2 else -1)
        assert back.rack_id == ("r1" if version >= 3 else None)
    assignment = Assignment(partitions=(("a", 1), ("a", 0), ("b", 2)))
    assert decode_assignment(encode_assignment(assignment)).partitions == (
        ("a", 0),
        ("a", 1),
        ("b", 2),
    )
    assert decode_assignment(b"").partitions == ()
    with pytest.raises(ConsumerProtocolError):
        decode_subscription(b"\x00\x01\x00\x00\x00\x05")


def test_the_bytes_agree_with_kafka_pythons_codec() -> None:
    metadata = pytest.importorskip("kafka.protocol.consumer.metadata")
    theirs = metadata.ConsumerProtocolSubscription(
        version=1, topics=["orders"], user_data=b"", owned_partitions=[("orders", [1, 2])]
    ).encode(version=1)
    ours = decode_subscription(theirs)
    assert ours.topics == ("orders",) and ours.owned_partitions == (("orders", 1), ("orders", 2))
    back = metadata.ConsumerProtocolAssignment.decode(
        encode_assignment(Assignment(partitions=(("orders", 0), ("orders", 2))), version=0)
    )
    assert back.partitions()[0].topic == "orders" or back.assigned_partitions[0].topic == "orders"
    assert list(back.assigned_partitions[0].partitions) == [0, 2]
    mine = metadata.ConsumerProtocolSubscription.decode(
        encode_subscription(Subscription(topics=("x", "y")), 0)
    )
    assert list(mine.topics) == ["x", "y"]
