"""KIP-966 and KIP-903 in the controller's pure decisions.

The hole they close: a replica that lost its unsynced tail in a crash comes back,
is still (or again) in the ISR, and wins leadership; the replicas that hold the
acknowledged records then truncate to it. Each test replays the decisions onto an
image, as the metadata log would.
"""

from __future__ import annotations

import random

import attrs
import cbor2

from client.protocol.errors import ErrorCode
from kraft.controller.cluster import BrokerRegistrationRequest, BrokerSessions, register_broker
from kraft.controller.replication import AlterPartition, CreateTopic, alter_partition, create_topics
from kraft.metadata.image import ELR_FEATURE, EMPTY_IMAGE, MetadataImage, replay
from kraft.metadata.records import (
    NO_LEADER,
    FeatureLevelRecord,
    Listener,
    PartitionRecord,
    decode_record,
    encode_record,
)
from tests.kraft.test_replication_control import apply, cluster, fence, unfence


def three_replicas(*, elr: bool = True, min_isr: int = 2) -> tuple[MetadataImage, str]:
    image = cluster()
    if elr:
        image = replay(image, [(image.offset + 1, FeatureLevelRecord(name=ELR_FEATURE, level=1))])
    configs = (("min.insync.replicas", str(min_isr)),)
    created = create_topics(
        image,
        [CreateTopic(name="t", partitions=1, replication_factor=3, configs=configs)],
        random.Random(0),
    )
    image = apply(image, created)
    return image, image.topic_ids["t"]


def restart(image: MetadataImage, broker_id: int, *, clean: bool) -> MetadataImage:
    """A new incarnation registers (and is then unfenced once caught up)."""
    old = image.brokers[broker_id]
    request = BrokerRegistrationRequest(
        broker_id=broker_id,
        incarnation_id=old.incarnation_id + "'",
        listeners=(Listener(name="P", host="127.0.0.1", port=9000 + broker_id),),
        previous_broker_epoch=old.broker_epoch if clean else -1,
    )
    result = register_broker(image, request, image.offset + 1, BrokerSessions(), now_ms=0)
    assert result.response.error_code == ErrorCode.NONE
    return apply(image, result)


def partition(image: MetadataImage, topic_id: str):
    return image.topics[topic_id].partitions[0]


def test_crashed_last_isr_member_never_leads_over_an_eligible_replica() -> None:
    image, topic_id = three_replicas()
    first, second, third = partition(image, topic_id).replicas
    image = fence(image, first)  # ISR (second, third): still at the minimum
    assert partition(image, topic_id).elr == ()
    image = fence(image, third)  # below the minimum: third keeps every committed record
    part = partition(image, topic_id)
    assert (part.leader, part.isr, part.elr) == (second, (second,), (third,))
    # The leader crashes, losing its unsynced tail, and comes straight back.
    image = restart(image, second, clean=False)
    part = partition(image, topic_id)
    assert part.leader == NO_LEADER and second not in part.isr + part.elr
    image = unfence(image, second)
    assert partition(image, topic_id).leader == NO_LEADER  # it may not lead
    image = unfence(image, third)
    part = partition(image, topic_id)
    assert (part.leader, part.isr, part.elr) == (third, (third,), ())


def test_without_the_feature_the_crashed_member_leads_again() -> None:
    # The pre-KIP-966 behaviour, which the simulator shows losing acknowledged writes.
    image, topic_id = three_replicas(elr=False)
    first, second, third = partition(image, topic_id).replicas
    image = fence(image, first)
    image = fence(image, third)
    assert partition(image, topic_id).elr == ()
    image = restart(image, second, clean=False)
    image = unfence(image, second)
    assert partition(image, topic_id).leader == second


def test_a_clean_restart_keeps_its_place() -> None:
    image, topic_id = three_replicas()
    first, second, third = partition(image, topic_id).replicas
    image = fence(image, first)
    image = fence(image, third)
    image = fence(image, second)  # controlled shutdown or lost session: leaderless
    part = partition(image, topic_id)
    assert part.leader == NO_LEADER and part.isr == (second,) and part.elr == (third,)
    image = restart(image, second, clean=True)
    image = unfence(image, second)
    assert partition(image, topic_id).leader == second


def test_the_only_copy_left_is_kept_after_an_unclean_restart() -> None:
    # No replica other than the crashed one may hold the committed records: its log is
    # the best there is (a single-node cluster must come back after a kill -9).
    image, topic_id = three_replicas(min_isr=1)
    first, second, third = partition(image, topic_id).replicas
    image = fence(image, first)
    image = fence(image, third)
    part = partition(image, topic_id)
    assert part.isr == (second,) and part.elr == ()
    image = fence(image, second)
    image = restart(image, second, clean=False)
    image = unfence(image, second)
    assert partition(image, topic_id).leader == second


def test_an_unclean_follower_leaves_the_isr_until_it_catches_up() -> None:
    image, topic_id = three_replicas()
    first, second, third = partition(image, topic_id).replicas
    image = restart(image, third, clean=False)
    part = partition(image, topic_id)
    assert part.leader == first and part.isr == (first, second) and part.elr == ()


def expansion(image: MetadataImage, topic_id: str, joiner: int, epoch: int) -> AlterPartition:
    part = partition(image, topic_id)
    return AlterPartition(
        broker_id=part.leader,
        broker_epoch=image.brokers[part.leader].broker_epoch,
        topic_id=topic_id,
        partition=0,
        leader_epoch=part.leader_epoch,
        partition_epoch=part.partition_epoch,
        new_isr=(*part.isr, joiner),
        new_isr_broker_epochs=(*(image.brokers[b].broker_epoch for b in part.isr), epoch),
    )


def test_alter_partition_refuses_a_replicas_previous_incarnation() -> None:
    """KIP-903: the leader saw the follower caught up, but that follower has since
    restarted; the request names the epoch it fetched with, which is no longer current."""
    image, topic_id = three_replicas()
    first, second, third = partition(image, topic_id).replicas
    old_epoch = image.brokers[third].broker_epoch
    image = restart(image, third, clean=False)
    image = unfence(image, third)
    stale = alter_partition(image, expansion(image, topic_id, third, old_epoch))
    assert stale.response.error_code == ErrorCode.INELIGIBLE_REPLICA and stale.records == ()
    current = image.brokers[third].broker_epoch
    accepted = alter_partition(image, expansion(image, topic_id, third, current))
    assert accepted.response.error_code == ErrorCode.NONE
    assert partition(apply(image, accepted), topic_id).isr == (first, second, third)


def test_alter_partition_refuses_a_joiner_in_controlled_shutdown() -> None:
    image, topic_id = three_replicas()
    third = partition(image, topic_id).replicas[2]
    image = restart(image, third, clean=False)
    image = unfence(image, third)
    registration = image.brokers[third]
    shutting = attrs.evolve(
        image,
        brokers={**image.brokers, third: attrs.evolve(registration, in_controlled_shutdown=True)},
    )
    refused = alter_partition(
        shutting, expansion(shutting, topic_id, third, registration.broker_epoch)
    )
    assert refused.response.error_code == ErrorCode.INELIGIBLE_REPLICA


def test_the_elr_empties_once_the_isr_is_back_at_the_minimum() -> None:
    image, topic_id = three_replicas()
    first, second, third = partition(image, topic_id).replicas
    image = fence(image, first)
    image = fence(image, third)
    assert partition(image, topic_id).elr == (third,)
    image = unfence(image, first)
    grown = alter_partition(
        image, expansion(image, topic_id, first, image.brokers[first].broker_epoch)
    )
    image = apply(image, grown)
    part = partition(image, topic_id)
    assert set(part.isr) == {first, second} and part.elr == ()


def test_images_with_an_elr_survive_a_snapshot() -> None:
    image, topic_id = three_replicas()
    image = fence(image, partition(image, topic_id).replicas[0])
    image = fence(image, partition(image, topic_id).replicas[2])
    assert partition(image, topic_id).elr
    records = [decode_record(encode_record(r)) for r in image.to_records()]
    rebuilt = replay(EMPTY_IMAGE, list(enumerate(records)))
    assert rebuilt.digest() == image.digest() and partition(rebuilt, topic_id).elr


def test_a_version_0_partition_record_decodes_with_an_empty_elr() -> None:
    old = cbor2.dumps([PartitionRecord.TYPE, 0, "id", 0, [1, 2], [1, 2], 1, 0, 0])
    record = decode_record(old)
    assert isinstance(record, PartitionRecord) and record.elr == () and record.isr == (1, 2)
