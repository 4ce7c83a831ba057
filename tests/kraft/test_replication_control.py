"""Replication decisions: placement, topic lifecycle, AlterPartition, failover from the ISR."""

from __future__ import annotations

import random

import attrs
import pytest

from client.protocol.errors import ErrorCode
from kraft.controller.replication import (
    AlterPartition,
    CreateTopic,
    alter_partition,
    create_partitions,
    create_topics,
    delete_topics,
    elect_for_returning_broker,
    elect_preferred_leaders,
    move_away_from,
    place_replicas,
)
from kraft.metadata.image import EMPTY_IMAGE, MetadataImage, replay
from kraft.metadata.records import (
    NO_LEADER,
    BrokerRegistrationChangeRecord,
    Listener,
    RegisterBrokerRecord,
)


def cluster(brokers: int = 3, racks: tuple[str | None, ...] = (None,)) -> MetadataImage:
    records = [
        RegisterBrokerRecord(
            broker_id=b,
            broker_epoch=b,
            incarnation_id=f"i{b}",
            listeners=(Listener(name="P", host="127.0.0.1", port=9000 + b),),
            rack=racks[b % len(racks)],
            fenced=False,
        )
        for b in range(1, brokers + 1)
    ]
    return replay(EMPTY_IMAGE, list(enumerate(records)))


def apply(image: MetadataImage, result) -> MetadataImage:
    return replay(image, [(image.offset + 1 + i, r) for i, r in enumerate(result.records)])


def test_placement_spreads_leaders_and_racks() -> None:
    racks = {1: "a", 2: "a", 3: "b", 4: "b"}
    placed = place_replicas([1, 2, 3, 4], racks, partitions=8, factor=2, start=0)
    assert sorted(p[0] for p in placed) == [1, 1, 2, 2, 3, 3, 4, 4]  # leaders even
    assert all(racks[a] != racks[b] for a, b in placed)  # each pair spans racks


def test_create_topic_and_the_errors_users_meet() -> None:
    image = cluster()
    rng = random.Random(1)
    result = create_topics(
        image,
        [
            CreateTopic(
                name="orders",
                partitions=6,
                replication_factor=3,
                configs=(("retention.ms", "1000"),),
            ),
            CreateTopic(name="orders", partitions=1, replication_factor=1),
            CreateTopic(name="bad name!", partitions=1, replication_factor=1),
            CreateTopic(name="wide", partitions=1, replication_factor=4),
            CreateTopic(name="empty", partitions=0, replication_factor=1),
        ],
        rng,
    )
    codes = [o.error_code for o in result.response]
    assert codes == [
        ErrorCode.NONE,
        ErrorCode.TOPIC_ALREADY_EXISTS,
        ErrorCode.INVALID_TOPIC_EXCEPTION,
        ErrorCode.INVALID_REPLICATION_FACTOR,
        ErrorCode.INVALID_PARTITIONS,
    ]
    image = apply(image, result)
    topic = image.topic("orders")
    assert topic is not None and len(topic.partitions) == 6
    assert {p.leader for p in topic.partitions.values()} == {1, 2, 3}
    assert all(p.isr == p.replicas and len(p.replicas) == 3 for p in topic.partitions.values())
    assert image.configs[("topic", "orders")] == {"retention.ms": "1000"}
    again = create_topics(
        image, [CreateTopic(name="orders", partitions=1, replication_factor=1)], rng
    )
    assert again.records == () and again.response[0].error_code == ErrorCode.TOPIC_ALREADY_EXISTS
    grown = apply(image, create_partitions(image, "orders", 8, rng))
    assert len(grown.topic("orders").partitions) == 8
    assert (
        create_partitions(grown, "orders", 8, rng).response.error_code
        == ErrorCode.INVALID_PARTITIONS
    )
    gone = apply(grown, delete_topics(grown, ["orders"]))
    assert gone.topic("orders") is None and ("topic", "orders") not in gone.configs
    assert (
        delete_topics(gone, ["orders"]).response[0].error_code
        == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )


def one_partition(
    replicas: tuple[int, ...] = (1, 2, 3), unclean: bool = False
) -> tuple[MetadataImage, str]:
    image = cluster()
    configs = (("unclean.leader.election.enable", "true"),) if unclean else ()
    result = create_topics(
        image,
        [CreateTopic(name="t", partitions=1, replication_factor=3, configs=configs)],
        random.Random(0),
    )
    image = apply(image, result)
    return image, image.topic_ids["t"]


def test_alter_partition_is_compare_and_set() -> None:
    image, topic_id = one_partition()
    part = image.topics[topic_id].partitions[0]
    leader = part.leader
    epoch = image.brokers[leader].broker_epoch
    shrink = [b for b in part.replicas if b != leader][:1]
    request = AlterPartition(
        broker_id=leader,
        broker_epoch=epoch,
        topic_id=topic_id,
        partition=0,
        leader_epoch=part.leader_epoch,
        partition_epoch=part.partition_epoch,
        new_isr=tuple(b for b in part.isr if b not in shrink),
    )
    result = alter_partition(image, request)
    assert result.response.error_code == ErrorCode.NONE and result.response.partition_epoch == 1
    after = apply(image, result)
    assert after.topics[topic_id].partitions[0].isr == request.new_isr
    # The same request again carries a stale partition epoch.
    assert alter_partition(after, request).response.error_code == ErrorCode.INVALID_UPDATE_VERSION
    stale_broker = (
        AlterPartition(**{**request.__dict__, "broker_epoch": epoch - 1}) if False else None
    )
    assert stale_broker is None

    assert (
        alter_partition(image, attrs.evolve(request, broker_epoch=99)).response.error_code
        == ErrorCode.STALE_BROKER_EPOCH
    )
    assert (
        alter_partition(image, attrs.evolve(request, leader_epoch=7)).response.error_code
        == ErrorCode.FENCED_LEADER_EPOCH
    )
    follower = next(b for b in part.replicas if b != leader)
    not_leader = attrs.evolve(
        request, broker_id=follower, broker_epoch=image.brokers[follower].broker_epoch
    )
    assert (
        alter_partition(image, not_leader).response.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER
    )
    without_leader = attrs.evolve(request, new_isr=(follower,))
    assert alter_partition(image, without_leader).response.error_code == ErrorCode.INVALID_REQUEST


def fence(image: MetadataImage, broker_id: int) -> MetadataImage:
    epoch = image.brokers[broker_id].broker_epoch
    image = replay(
        image,
        [
            (
                image.offset + 1,
                BrokerRegistrationChangeRecord(
                    broker_id=broker_id, broker_epoch=epoch, fenced=True
                ),
            )
        ],
    )
    moves = move_away_from(image, broker_id)
    return replay(image, [(image.offset + 1 + i, r) for i, r in enumerate(moves)])


def test_fencing_the_leader_elects_from_the_isr_and_bumps_the_leader_epoch() -> None:
    image, topic_id = one_partition()
    before = image.topics[topic_id].partitions[0]
    image = fence(image, before.leader)
    after = image.topics[topic_id].partitions[0]
    assert after.leader in before.isr and after.leader != before.leader
    assert before.leader not in after.isr
    assert after.leader_epoch == before.leader_epoch + 1


def unfence(image: MetadataImage, broker_id: int) -> MetadataImage:
    epoch = image.brokers[broker_id].broker_epoch
    change = BrokerRegistrationChangeRecord(broker_id=broker_id, broker_epoch=epoch, fenced=False)
    image = replay(image, [(image.offset + 1, change)])
    elections = elect_for_returning_broker(image, broker_id)
    return replay(image, [(image.offset + 1 + i, r) for i, r in enumerate(elections)])


@pytest.mark.parametrize("unclean", [False, True])
def test_last_isr_member_waits_leaderless_and_only_it_may_lead_again(unclean: bool) -> None:
    image, topic_id = one_partition(unclean=unclean)
    first, second, last = image.topics[topic_id].partitions[0].replicas
    for broker in (first, second, last):  # fenced one after another, leader first
        image = fence(image, broker)
    part = image.topics[topic_id].partitions[0]
    assert part.leader == NO_LEADER and part.isr == (last,)
    image = unfence(image, first)  # it missed writes acknowledged by the others
    part = image.topics[topic_id].partitions[0]
    if unclean:
        assert (part.leader, part.isr) == (first, (first,))
    else:
        assert part.leader == NO_LEADER
        image = unfence(image, last)
        assert image.topics[topic_id].partitions[0].leader == last


def test_returning_isr_member_becomes_leader_and_preferred_election() -> None:
    image, topic_id = one_partition()
    part = image.topics[topic_id].partitions[0]
    preferred = part.replicas[0]
    image = fence(image, preferred)
    assert image.topics[topic_id].partitions[0].leader != preferred
    epoch = image.brokers[preferred].broker_epoch
    image = replay(
        image,
        [
            (
                image.offset + 1,
                BrokerRegistrationChangeRecord(
                    broker_id=preferred, broker_epoch=epoch, fenced=False
                ),
            )
        ],
    )
    assert elect_preferred_leaders(image).records == ()  # not back in the ISR yet
    leader = image.topics[topic_id].partitions[0].leader
    rejoin = AlterPartition(
        broker_id=leader,
        broker_epoch=image.brokers[leader].broker_epoch,
        topic_id=topic_id,
        partition=0,
        leader_epoch=image.topics[topic_id].partitions[0].leader_epoch,
        partition_epoch=image.topics[topic_id].partitions[0].partition_epoch,
        new_isr=(*image.topics[topic_id].partitions[0].isr, preferred),
        new_isr_broker_epochs=(
            *(image.brokers[b].broker_epoch for b in image.topics[topic_id].partitions[0].isr),
            epoch,
        ),
    )
    image = apply(image, alter_partition(image, rejoin))
    image = apply(image, elect_preferred_leaders(image))
    assert image.topics[topic_id].partitions[0].leader == preferred


def test_unclean_election_hands_a_leaderless_partition_to_a_live_replica() -> None:
    image, topic_id = one_partition(unclean=True)
    part = image.topics[topic_id].partitions[0]
    leader = part.leader
    others = [b for b in part.replicas if b != leader]
    # The ISR shrinks to the leader alone, then the leader dies.
    shrink = AlterPartition(
        broker_id=leader,
        broker_epoch=image.brokers[leader].broker_epoch,
        topic_id=topic_id,
        partition=0,
        leader_epoch=part.leader_epoch,
        partition_epoch=part.partition_epoch,
        new_isr=(leader,),
    )
    image = apply(image, alter_partition(image, shrink))
    image = fence(image, leader)
    after = image.topics[topic_id].partitions[0]
    assert after.leader in others and after.isr == (after.leader,)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a" * 250, "bad/name", "sp ace", "ok\n", "__cluster_metadata\n"]
)
def test_invalid_topic_names(name: str) -> None:
    result = create_topics(
        cluster(), [CreateTopic(name=name, partitions=1, replication_factor=1)], random.Random(0)
    )
    assert (
        result.response[0].error_code == ErrorCode.INVALID_TOPIC_EXCEPTION and result.records == ()
    )
