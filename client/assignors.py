"""Partition assignors: how a group's leader splits the partitions among the members.

The group leader runs the assignor the coordinator chose (the first of the leader's
preferences that every member offers) over every member's subscription. Three are
built, with Kafka's names and results:

- `range`: per topic, its partitions in order cut into consecutive ranges, one per
  subscribed member in member order; the first `partitions % members` get one more.
- `roundrobin`: every subscribed partition, topics in name order, handed out one at a
  time to the members in a circle, skipping a member not subscribed to its topic.
- `cooperative-sticky` (KIP-429): members keep what they own where the balance allows;
  a partition that must move is first only revoked (given to nobody in this
  generation), and its new owner gets it in the rebalance that follows.

Member order is Kafka's: members with a `group.instance.id` first, by that id, then
the others by member id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from client.consumer_protocol import Subscription, TopicPartition

RANGE, ROUND_ROBIN, COOPERATIVE_STICKY = "range", "roundrobin", "cooperative-sticky"


@attrs.frozen
class GroupMemberSubscription:
    member_id: str
    group_instance_id: str | None
    subscription: Subscription

    @property
    def sort_key(self) -> tuple[int, str]:
        if self.group_instance_id is not None:
            return (0, self.group_instance_id)
        return (1, self.member_id)


Assignments = dict[str, list[TopicPartition]]


class Assignor(Protocol):
    name: str
    cooperative: bool

    def assign(
        self, partitions_per_topic: Mapping[str, int], members: Sequence[GroupMemberSubscription]
    ) -> Assignments: ...


def _ordered(members: Sequence[GroupMemberSubscription]) -> list[GroupMemberSubscription]:
    return sorted(members, key=lambda m: m.sort_key)


class RangeAssignor:
    name = RANGE
    cooperative = False

    def assign(
        self, partitions_per_topic: Mapping[str, int], members: Sequence[GroupMemberSubscription]
    ) -> Assignments:
        assignments: Assignments = {m.member_id: [] for m in members}
        for topic in sorted(partitions_per_topic):
            subscribed = [m for m in _ordered(members) if topic in m.subscription.topics]
            if not subscribed:
                continue
            count = partitions_per_topic[topic]
            each, extra = divmod(count, len(subscribed))
            for index, member in enumerate(subscribed):
                start = each * index + min(index, extra)
                length = each + (1 if index < extra else 0)
                assignments[member.member_id] += [(topic, p) for p in range(start, start + length)]
        return assignments


class RoundRobinAssignor:
    name = ROUND_ROBIN
    cooperative = False

    def assign(
        self, partitions_per_topic: Mapping[str, int], members: Sequence[GroupMemberSubscription]
    ) -> Assignments:
        ordered = _ordered(members)
        assignments: Assignments = {m.member_id: [] for m in members}
        wanted = {t for m in members for t in m.subscription.topics}
        turn = 0
        for topic in sorted(t for t in partitions_per_topic if t in wanted):
            for partition in range(partitions_per_topic[topic]):
                # Someone subscribes to the topic, so this ends within one circle.
                while topic not in ordered[turn % len(ordered)].subscription.topics:
                    turn += 1
                assignments[ordered[turn % len(ordered)].member_id].append((topic, partition))
                turn += 1
        return assignments


class CooperativeStickyAssignor:
    name = COOPERATIVE_STICKY
    cooperative = True

    def assign(
        self, partitions_per_topic: Mapping[str, int], members: Sequence[GroupMemberSubscription]
    ) -> Assignments:
        ordered = _ordered(members)
        wants = {m.member_id: set(m.subscription.topics) for m in ordered}
        every = [
            (topic, p)
            for topic in sorted(partitions_per_topic)
            if any(topic in w for w in wants.values())
            for p in range(partitions_per_topic[topic])
        ]
        existing = set(every)
        claims: dict[TopicPartition, list[str]] = {}
        for member in ordered:
            for tp in member.subscription.owned_partitions:
                if tp in existing and tp[0] in wants[member.member_id]:
                    claims.setdefault(tp, []).append(member.member_id)
        # Two members claiming one partition (an out-of-date member): neither keeps it.
        owner = {tp: ids[0] for tp, ids in claims.items() if len(ids) == 1}
        held: dict[str, list[TopicPartition]] = {m.member_id: [] for m in ordered}
        for tp in every:
            if tp in owner:
                held[owner[tp]].append(tp)
        rank = {m.member_id: i for i, m in enumerate(ordered)}

        def fewest(topic: str) -> str | None:
            eligible = [m for m in held if topic in wants[m]]
            return min(eligible, key=lambda m: (len(held[m]), rank[m]), default=None)

        for tp in every:
            if tp not in owner:
                taker = fewest(tp[0])
                if taker is not None:
                    held[taker].append(tp)
        self._balance(held, wants, rank)
        # KIP-429: what moves away from its owner is given to nobody this generation.
        return {
            member: sorted(tp for tp in tps if owner.get(tp, member) == member)
            for member, tps in held.items()
        }

    @staticmethod
    def _balance(
        held: dict[str, list[TopicPartition]], wants: dict[str, set[str]], rank: dict[str, int]
    ) -> None:
        """Move one partition at a time from a fuller member to an emptier one that can
        take it, until no move narrows the gap; each move lowers the sum of squares of
        the counts, so this ends."""
        total = sum(len(tps) for tps in held.values())
        for _ in range(total * total + 1):
            moved = False
            donors = sorted(held, key=lambda m: (-len(held[m]), rank[m]))
            for donor in donors:
                receivers = sorted(
                    (m for m in held if len(held[m]) < len(held[donor]) - 1),
                    key=lambda m: (len(held[m]), rank[m]),
                )
                for receiver in receivers:
                    # The newest of the donor's partitions moves (the last in order).
                    movable = [tp for tp in held[donor] if tp[0] in wants[receiver]]
                    if movable:
                        tp = max(movable)
                        held[donor].remove(tp)
                        held[receiver].append(tp)
                        moved = True
                        break
                if moved:
                    break
            if not moved:
                return


ASSIGNORS: dict[str, Assignor] = {
    a.name: a for a in (RangeAssignor(), RoundRobinAssignor(), CooperativeStickyAssignor())
}


def assignors_named(names: Sequence[str]) -> list[Assignor]:
    unknown = [n for n in names if n not in ASSIGNORS]
    if unknown or not names:
        raise ValueError(
            f"partition_assignment_strategy {list(names)}: each must be one of {sorted(ASSIGNORS)}"
        )
    return [ASSIGNORS[n] for n in names]
