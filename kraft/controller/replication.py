"""Topics, partitions, leaders and ISRs: the controller's replication decisions.

Like Kafka's ReplicationControlManager, every handler is a pure function
`(image, request, ...) -> ControllerResult(records, response)`: it never changes the
image; the records do, once committed and replayed. A request that cannot be served
gets an error code in its response and produces no records.

Leadership rules: a leader always comes from the ISR (unless the topic allows unclean
election); every leader change bumps the leader epoch and every change bumps the
partition epoch (replay does both); AlterPartition is compare-and-set on the leader
epoch and the partition epoch, from the current incarnation of the leader.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence

import attrs

from client.protocol.errors import ErrorCode
from kraft.controller.configs_schema import check_config
from kraft.controller.result import ControllerResult
from kraft.metadata.image import MetadataImage, PartitionRegistration
from kraft.metadata.records import (
    NO_LEADER,
    ConfigRecord,
    MetadataRecord,
    PartitionChangeRecord,
    PartitionRecord,
    RemoveTopicRecord,
    TopicRecord,
)

# Kafka's Topic.validate: legal characters and length.
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")  # whole names only: fullmatch
UNCLEAN_ELECTION_CONFIG = "unclean.leader.election.enable"
# Its partition directory sits beside the data partitions' (`<topic>-<n>`).
METADATA_TOPIC = "__cluster_metadata"
# Names starting with it are the brokers' internal topics (issue 16).
RESERVED_TOPIC_PREFIX = "__"


@attrs.frozen(kw_only=True)
class CreateTopic:
    name: str
    partitions: int
    replication_factor: int
    configs: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class TopicOutcome:
    name: str
    error_code: int
    message: str = ""
    topic_id: str | None = None


@attrs.frozen(kw_only=True)
class AlterPartition:
    broker_id: int
    broker_epoch: int
    topic_id: str
    partition: int
    leader_epoch: int
    partition_epoch: int
    new_isr: tuple[int, ...]
    # KIP-903: the broker epoch each member fetched with (-1: unknown), in the order
    # of `new_isr`, so a replica's previous incarnation is never let back in.
    new_isr_broker_epochs: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class AlterPartitionOutcome:
    error_code: int
    message: str = ""
    leader_epoch: int = -1
    partition_epoch: int = -1
    isr: tuple[int, ...] = ()


def validate_topic_name(name: str) -> str | None:
    """Why `name` cannot be a topic name, or None if it can."""
    if name in (".", ".."):
        return "topic name cannot be '.' or '..'"
    if name == METADATA_TOPIC:
        return f"{METADATA_TOPIC} is the metadata log's name"
    if not TOPIC_NAME.fullmatch(name):
        return "topic names are 1-249 characters of [a-zA-Z0-9._-]"
    return None


def place_replicas(
    brokers: Sequence[int], racks: dict[int, str | None], partitions: int, factor: int, start: int
) -> list[tuple[int, ...]]:
    """Replica lists that spread leaders over brokers and replicas over racks.

    Brokers are ordered rack by rack in turn (a1, b1, a2, b2, ...) so that consecutive
    replicas land in different racks; partition p starts at position start + p, so
    leaders (first replicas) rotate over every broker.
    """
    by_rack: dict[str, list[int]] = {}
    for broker in sorted(brokers):
        by_rack.setdefault(racks.get(broker) or "", []).append(broker)
    ordered: list[int] = []
    rack_lists = [by_rack[rack] for rack in sorted(by_rack)]
    for position in range(max(len(rack) for rack in rack_lists)):
        ordered += [rack[position] for rack in rack_lists if position < len(rack)]
    count = len(ordered)
    return [
        tuple(ordered[(start + partition + shift) % count] for shift in range(factor))
        for partition in range(partitions)
    ]


def create_topics(
    image: MetadataImage,
    requests: Sequence[CreateTopic],
    rng: random.Random,
    *,
    internal: bool = False,
) -> ControllerResult:
    records: list[MetadataRecord] = []
    outcomes = []
    live = image.unfenced_brokers()
    racks = {b: reg.rack for b, reg in image.brokers.items()}
    seen: set[str] = set()
    for request in requests:
        error = _check_new_topic(image, request, live, seen)
        if error is None and request.name.startswith(RESERVED_TOPIC_PREFIX) and not internal:
            error = (
                ErrorCode.INVALID_TOPIC_EXCEPTION,
                f"{request.name}: names starting with {RESERVED_TOPIC_PREFIX} are reserved "
                "for the brokers' internal topics",
            )
        if error is not None:
            outcomes.append(TopicOutcome(name=request.name, error_code=error[0], message=error[1]))
            continue
        seen.add(request.name)
        topic_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        records.append(TopicRecord(name=request.name, topic_id=topic_id))
        start = rng.randrange(len(live))
        for index, replicas in enumerate(
            place_replicas(live, racks, request.partitions, request.replication_factor, start)
        ):
            records.append(
                PartitionRecord(
                    topic_id=topic_id,
                    partition=index,
                    replicas=replicas,
                    isr=replicas,
                    leader=replicas[0],
                    leader_epoch=0,
                    partition_epoch=0,
                )
            )
        for name, value in request.configs:
            records.append(
                ConfigRecord(
                    resource_type="topic", resource_name=request.name, name=name, value=value
                )
            )
        outcomes.append(
            TopicOutcome(name=request.name, error_code=ErrorCode.NONE, topic_id=topic_id)
        )
    return ControllerResult(records=tuple(records), response=tuple(outcomes))


def _check_new_topic(
    image: MetadataImage, request: CreateTopic, live: list[int], seen: set[str]
) -> tuple[int, str] | None:
    problem = validate_topic_name(request.name)
    if problem is not None:
        return ErrorCode.INVALID_TOPIC_EXCEPTION, problem
    if image.topic(request.name) is not None or request.name in seen:
        return ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {request.name} already exists"
    if request.partitions < 1:
        return ErrorCode.INVALID_PARTITIONS, "the number of partitions must be at least 1"
    if request.replication_factor < 1:
        return ErrorCode.INVALID_REPLICATION_FACTOR, "the replication factor must be at least 1"
    for name, value in request.configs:
        problem = check_config("topic", name, value)
        if problem is not None:
            return ErrorCode.INVALID_CONFIG, problem
    if len({name for name, _ in request.configs}) != len(request.configs):
        return ErrorCode.INVALID_REQUEST, "a config is given twice"
    if request.replication_factor > len(live):
        return (
            ErrorCode.INVALID_REPLICATION_FACTOR,
            f"replication factor {request.replication_factor} is larger than the "
            f"{len(live)} available brokers",
        )
    return None


def delete_topics(image: MetadataImage, names: Sequence[str]) -> ControllerResult:
    records: list[MetadataRecord] = []
    outcomes = []
    for name in names:
        topic = image.topic(name)
        if topic is None:
            outcomes.append(
                TopicOutcome(
                    name=name,
                    error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    message=f"no topic {name}",
                )
            )
            continue
        records.append(RemoveTopicRecord(topic_id=topic.topic_id))
        outcomes.append(TopicOutcome(name=name, error_code=ErrorCode.NONE, topic_id=topic.topic_id))
    return ControllerResult(records=tuple(records), response=tuple(outcomes))


def create_partitions(
    image: MetadataImage, name: str, total: int, rng: random.Random
) -> ControllerResult:
    topic = image.topic(name)
    if topic is None:
        return _topic_error(name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name}")
    current = len(topic.partitions)
    if total <= current:
        return _topic_error(
            name, ErrorCode.INVALID_PARTITIONS, f"{name} already has {current} partitions"
        )
    factor = len(topic.partitions[0].replicas)
    live = image.unfenced_brokers()
    if factor > len(live):
        return _topic_error(name, ErrorCode.INVALID_REPLICATION_FACTOR, "not enough live brokers")
    racks = {b: reg.rack for b, reg in image.brokers.items()}
    placed = place_replicas(live, racks, total - current, factor, rng.randrange(len(live)))
    records: tuple[MetadataRecord, ...] = tuple(
        PartitionRecord(
            topic_id=topic.topic_id,
            partition=current + offset,
            replicas=replicas,
            isr=replicas,
            leader=replicas[0],
            leader_epoch=0,
            partition_epoch=0,
        )
        for offset, replicas in enumerate(placed)
    )
    return ControllerResult(
        records=records, response=TopicOutcome(name=name, error_code=ErrorCode.NONE)
    )


def _topic_error(name: str, error: int, message: str) -> ControllerResult:
    return ControllerResult(
        records=(), response=TopicOutcome(name=name, error_code=error, message=message)
    )


def alter_partition(image: MetadataImage, request: AlterPartition) -> ControllerResult:
    """An ISR change asked for by the partition leader (compare-and-set, KIP-497)."""

    def refuse(error: int, message: str) -> ControllerResult:
        return ControllerResult(
            records=(), response=AlterPartitionOutcome(error_code=error, message=message)
        )

    broker = image.brokers.get(request.broker_id)
    if broker is None or broker.broker_epoch != request.broker_epoch:
        return refuse(
            ErrorCode.STALE_BROKER_EPOCH,
            f"broker {request.broker_id} epoch {request.broker_epoch} is not current",
        )
    topic = image.topics.get(request.topic_id)
    if topic is None or request.partition not in topic.partitions:
        return refuse(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no such partition")
    part = topic.partitions[request.partition]
    if part.leader != request.broker_id:
        return refuse(
            ErrorCode.NOT_LEADER_OR_FOLLOWER, f"broker {request.broker_id} does not lead it"
        )
    if request.leader_epoch != part.leader_epoch:
        return refuse(
            ErrorCode.FENCED_LEADER_EPOCH,
            f"leader epoch {request.leader_epoch}, current {part.leader_epoch}",
        )
    if request.partition_epoch != part.partition_epoch:
        return refuse(
            ErrorCode.INVALID_UPDATE_VERSION,
            f"partition epoch {request.partition_epoch}, current {part.partition_epoch}",
        )
    new_isr = (
        tuple(sorted(set(request.new_isr), key=part.replicas.index))
        if set(request.new_isr) <= set(part.replicas)
        else ()
    )
    if request.broker_id not in request.new_isr or not new_isr:
        return refuse(ErrorCode.INVALID_REQUEST, "the ISR must hold the leader and only replicas")
    joining = [b for b in new_isr if b not in part.isr]
    problem = ineligible_joiners(image, request, joining)
    if problem is not None:
        return refuse(ErrorCode.INELIGIBLE_REPLICA, problem)
    dropped = set(part.isr) - set(new_isr)
    elr = eligible_after(image, topic.name, part, new_isr, dropped)
    record = _change(request.topic_id, request.partition, part, isr=new_isr, elr=elr)
    return ControllerResult(
        records=(record,),
        response=AlterPartitionOutcome(
            error_code=ErrorCode.NONE,
            leader_epoch=part.leader_epoch,
            partition_epoch=part.partition_epoch + 1,
            isr=new_isr,
        ),
    )


def ineligible_joiners(
    image: MetadataImage, request: AlterPartition, joining: list[int]
) -> str | None:
    """Why some replica may not join the ISR, or None (KIP-903: only the current,
    unfenced incarnation that did the fetching, and not one shutting down)."""
    epochs = dict(zip(request.new_isr, request.new_isr_broker_epochs, strict=False))
    for broker_id in joining:
        registration = image.brokers.get(broker_id)
        if registration is None or registration.fenced:
            return f"broker {broker_id} is fenced or unknown"
        if registration.in_controlled_shutdown:
            return f"broker {broker_id} is shutting down"
        if epochs.get(broker_id, -1) != registration.broker_epoch:
            return (
                f"broker {broker_id} fetched with epoch {epochs.get(broker_id, -1)}, "
                f"its current one is {registration.broker_epoch}"
            )
    return None


def _unclean_allowed(image: MetadataImage, topic_name: str) -> bool:
    return image.topic_config(topic_name, UNCLEAN_ELECTION_CONFIG) == "true"


def _ordered(part: PartitionRegistration, members: set[int]) -> tuple[int, ...]:
    return tuple(b for b in part.replicas if b in members)


def eligible_after(
    image: MetadataImage,
    topic_name: str,
    part: PartitionRegistration,
    new_isr: tuple[int, ...],
    dropped: set[int],
) -> tuple[int, ...]:
    """The ELR once the ISR becomes `new_isr`, `dropped` having left it (KIP-966).

    Members that leave an ISR below min.insync.replicas still hold every committed
    record: the high-water mark does not move while the ISR is that small. Once the
    ISR is back at the minimum the high-water mark moves on without them, so the ELR
    empties.
    """
    if not image.elr_enabled or len(new_isr) >= image.min_insync_replicas(topic_name):
        return ()
    return _ordered(part, (set(part.elr) | dropped) - set(new_isr))


def _change(
    topic_id: str,
    index: int,
    part: PartitionRegistration,
    *,
    isr: tuple[int, ...] | None = None,
    leader: int | None = None,
    elr: tuple[int, ...] | None = None,
) -> PartitionChangeRecord:
    """A PartitionChangeRecord naming only the fields that really change."""
    return PartitionChangeRecord(
        topic_id=topic_id,
        partition=index,
        isr=isr if isr is not None and isr != part.isr else None,
        leader=leader if leader is not None and leader != part.leader else None,
        elr=elr if elr is not None and elr != part.elr else None,
    )


def move_away_from(image: MetadataImage, broker_id: int) -> tuple[MetadataRecord, ...]:
    """Partition changes once `broker_id` is fenced or shutting down.

    Partitions it leads get a new leader from the rest of the ISR (the first live one,
    in replica order), else from the eligible leader replicas; it leaves every ISR
    that has other members (into the ELR, if that ISR is now below the minimum). A
    partition whose ISR holds only this broker keeps it there without a leader (so no
    acknowledged write is silently lost), unless the topic allows unclean election, in
    which case the first live replica takes over with itself as the whole ISR.
    """
    live = set(image.unfenced_brokers()) - {broker_id}
    records: list[MetadataRecord] = []
    for topic_id in sorted(image.topics):
        topic = image.topics[topic_id]
        for index in sorted(topic.partitions):
            part = topic.partitions[index]
            if broker_id not in part.isr and part.leader != broker_id:
                continue
            change = _without(image, topic.name, part, broker_id, live)
            if change is not None:
                isr, leader, elr = change
                records.append(_change(topic_id, index, part, isr=isr, leader=leader, elr=elr))
    return tuple(records)


def _without(
    image: MetadataImage,
    topic_name: str,
    part: PartitionRegistration,
    broker_id: int,
    live: set[int],
) -> tuple[tuple[int, ...], int, tuple[int, ...]] | None:
    """(ISR, leader, ELR) once `broker_id` can no longer lead or follow."""
    remaining = tuple(b for b in part.isr if b != broker_id)
    if part.leader != broker_id:
        if not remaining:
            return None
        return (
            remaining,
            part.leader,
            eligible_after(image, topic_name, part, remaining, {broker_id}),
        )
    candidates = [b for b in part.replicas if b in remaining and b in live]
    if candidates:
        elr = eligible_after(image, topic_name, part, remaining, {broker_id})
        return remaining, candidates[0], elr
    eligible = [b for b in part.elr if b in live]
    if eligible:
        # Every ISR member is gone; an eligible replica holds all that was committed.
        leader = eligible[0]
        dropped = set(part.isr) | {broker_id}
        return (leader,), leader, eligible_after(image, topic_name, part, (leader,), dropped)
    if _unclean_allowed(image, topic_name):
        survivors = [b for b in part.replicas if b in live]
        if survivors:
            return (survivors[0],), survivors[0], ()
    # No eligible leader: keep the last ISR member, and no leader, until it returns.
    isr = remaining or part.isr
    dropped = {broker_id} if remaining else set()
    return isr, NO_LEADER, eligible_after(image, topic_name, part, isr, dropped)


def remove_unclean_replica(image: MetadataImage, broker_id: int) -> tuple[MetadataRecord, ...]:
    """A broker restarting after an unclean shutdown may have lost its unsynced tail
    (KIP-966): it leaves every ISR and ELR until it has caught up again, except where
    it is the only replica left that may hold the committed records (then its log is
    the best copy there is, as Kafka's unclean recovery would also conclude)."""
    if not image.elr_enabled:
        return ()
    live = set(image.unfenced_brokers()) - {broker_id}
    records: list[MetadataRecord] = []
    for topic_id in sorted(image.topics):
        topic = image.topics[topic_id]
        for index in sorted(topic.partitions):
            part = topic.partitions[index]
            if broker_id not in part.isr and broker_id not in part.elr:
                continue
            assert part.leader != broker_id, f"{topic.name}-{index}: a restarting broker leads"
            isr = tuple(b for b in part.isr if b != broker_id)
            elr = tuple(b for b in part.elr if b != broker_id)
            if not isr and not elr:
                continue
            leader = part.leader
            if leader == NO_LEADER and not isr:
                # Only eligible replicas are left: one that is alive leads.
                eligible = [b for b in elr if b in live]
                if eligible:
                    leader, isr = eligible[0], (eligible[0],)
                    elr = eligible_after(image, topic.name, part, isr, set(elr))
            records.append(_change(topic_id, index, part, isr=isr, leader=leader, elr=elr))
    return tuple(records)


def elect_preferred_leaders(image: MetadataImage) -> ControllerResult:
    """Move leadership back to each partition's first replica where it can lead."""
    live = set(image.unfenced_brokers())
    records: list[MetadataRecord] = []
    for topic_id in sorted(image.topics):
        topic = image.topics[topic_id]
        for index in sorted(topic.partitions):
            part = topic.partitions[index]
            preferred = part.replicas[0]
            if part.leader != preferred and preferred in part.isr and preferred in live:
                records.append(
                    PartitionChangeRecord(topic_id=topic_id, partition=index, leader=preferred)
                )
    return ControllerResult(records=tuple(records), response=len(records))


def elect_for_returning_broker(image: MetadataImage, broker_id: int) -> tuple[MetadataRecord, ...]:
    """Leaderless partitions that `broker_id` (unfenced again) can lead.

    It leads those whose ISR holds it, and those whose ELR does (with itself as the
    ISR; the ISR members it replaces are still eligible). One in neither may have
    missed acknowledged writes, so it leads those only where the topic allows unclean
    election, and then with itself as the whole ISR.
    """
    registration = image.brokers.get(broker_id)
    if registration is None or registration.fenced:
        return ()
    records: list[MetadataRecord] = []
    for topic_id in sorted(image.topics):
        topic = image.topics[topic_id]
        for index in sorted(topic.partitions):
            part = topic.partitions[index]
            if part.leader != NO_LEADER or broker_id not in part.replicas:
                continue
            if broker_id in part.isr:
                records.append(_change(topic_id, index, part, leader=broker_id))
            elif broker_id in part.elr:
                isr = (broker_id,)
                elr = eligible_after(image, topic.name, part, isr, set(part.isr))
                records.append(_change(topic_id, index, part, isr=isr, leader=broker_id, elr=elr))
            elif _unclean_allowed(image, topic.name):
                records.append(
                    _change(topic_id, index, part, isr=(broker_id,), leader=broker_id, elr=())
                )
    return tuple(records)
