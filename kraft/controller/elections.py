"""Leader elections asked for by an operator (Kafka's ElectLeaders, KIP-460).

Preferred: the partition's first replica leads again, if it is live and in the ISR.
Unclean: a partition without a leader gets one, from its live ISR first, then its
eligible leader replicas (KIP-966), and only then from a live replica outside both,
which becomes the whole ISR (it may lack acknowledged records: the operator asked for
availability over them). A partition that has a leader needs no unclean election.
"""

from __future__ import annotations

import attrs

from client.protocol.errors import ErrorCode
from kraft.controller.replication import _change, eligible_after
from kraft.controller.result import ControllerResult
from kraft.metadata.image import MetadataImage, PartitionRegistration
from kraft.metadata.records import NO_LEADER, MetadataRecord

# Kafka's ELIGIBLE_LEADERS_NOT_AVAILABLE: an unclean election found no live replica.
ELIGIBLE_LEADERS_NOT_AVAILABLE = 83


@attrs.frozen(kw_only=True)
class PartitionElection:
    topic: str
    partition: int


@attrs.frozen(kw_only=True)
class ElectLeadersRequest:
    partitions: tuple[PartitionElection, ...] | None = None  # None: every partition
    unclean: bool = False


@attrs.frozen(kw_only=True)
class ElectionOutcome:
    topic: str
    partition: int
    error_code: int
    message: str = ""


def elect_leaders(image: MetadataImage, request: ElectLeadersRequest) -> ControllerResult:
    """The leader changes and one outcome per partition (response: the outcomes).

    When every partition is asked for, those that needed no election are left out of
    the outcomes, as Kafka leaves them out."""
    live = set(image.unfenced_brokers())
    wanted = request.partitions
    if wanted is None:
        wanted = tuple(
            PartitionElection(topic=topic.name, partition=index)
            for _, topic in sorted(image.topics.items())
            for index in sorted(topic.partitions)
        )
    records: list[MetadataRecord] = []
    outcomes: list[ElectionOutcome] = []
    decided: dict[tuple[str, int], tuple[int, str]] = {}
    for item in wanted:
        key = (item.topic, item.partition)
        if key in decided:  # named twice: one election, the same outcome
            code, message = decided[key]
            outcomes.append(
                ElectionOutcome(topic=key[0], partition=key[1], error_code=code, message=message)
            )
            continue
        topic = image.topic(item.topic)
        part = topic.partitions.get(item.partition) if topic is not None else None
        if topic is None or part is None:
            code, message = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no such partition"
            record = None
        elif request.unclean:
            record, code, message = _unclean(image, topic.topic_id, item, part, live)
        else:
            record, code, message = _preferred(topic.topic_id, item, part, live)
        decided[key] = (code, message)
        if record is not None:
            records.append(record)
        if request.partitions is None and code == ErrorCode.ELECTION_NOT_NEEDED:
            continue
        outcomes.append(
            ElectionOutcome(
                topic=item.topic, partition=item.partition, error_code=code, message=message
            )
        )
    return ControllerResult(records=tuple(records), response=tuple(outcomes))


Decision = tuple[MetadataRecord | None, int, str]


def _preferred(
    topic_id: str, item: PartitionElection, part: PartitionRegistration, live: set[int]
) -> Decision:
    preferred = part.replicas[0]
    if part.leader == preferred:
        return None, ErrorCode.ELECTION_NOT_NEEDED, "the preferred replica leads"
    if preferred not in part.isr or preferred not in live:
        return (
            None,
            ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE,
            f"preferred replica {preferred} is not a live member of the ISR",
        )
    return _change(topic_id, item.partition, part, leader=preferred), ErrorCode.NONE, ""


def _unclean(
    image: MetadataImage,
    topic_id: str,
    item: PartitionElection,
    part: PartitionRegistration,
    live: set[int],
) -> Decision:
    if part.leader != NO_LEADER:
        return None, ErrorCode.ELECTION_NOT_NEEDED, f"replica {part.leader} leads"
    index = item.partition
    for broker in part.replicas:
        if broker in live and broker in part.isr:
            return _change(topic_id, index, part, leader=broker), ErrorCode.NONE, ""
    for broker in part.elr:
        if broker in live:
            isr = (broker,)
            elr = eligible_after(image, item.topic, part, isr, set(part.isr))
            change = _change(topic_id, index, part, isr=isr, leader=broker, elr=elr)
            return change, ErrorCode.NONE, ""
    for broker in part.replicas:
        if broker in live:
            change = _change(topic_id, index, part, isr=(broker,), leader=broker, elr=())
            return change, ErrorCode.NONE, ""
    return None, ELIGIBLE_LEADERS_NOT_AVAILABLE, "no replica of the partition is live"
