"""A delta keeps the partitions of the topics it touches writable until apply(): the
images it made before stay as they were, and record decoding keeps its checks."""

from __future__ import annotations

import cbor2
import pytest

from kraft.metadata.image import EMPTY_IMAGE, MetadataDelta, MetadataReplayError
from kraft.metadata.records import (
    Listener,
    MetadataRecordError,
    PartitionChangeRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    decode_record,
)


def partition(topic_id: str, index: int, leader: int = 1) -> PartitionRecord:
    return PartitionRecord(
        topic_id=topic_id,
        partition=index,
        replicas=(1, 2),
        isr=(1, 2),
        leader=leader,
        leader_epoch=0,
        partition_epoch=0,
    )


def brokers_delta() -> MetadataDelta:
    delta = MetadataDelta(EMPTY_IMAGE)
    for offset, broker_id in enumerate((1, 2)):
        listener = Listener(name="PLAINTEXT", host="127.0.0.1", port=9000 + broker_id)
        record = RegisterBrokerRecord(
            broker_id=broker_id,
            broker_epoch=offset,
            incarnation_id=f"inc-{broker_id}",
            listeners=(listener,),
            fenced=False,
        )
        delta.replay(record, offset)
    return delta


def test_an_applied_image_does_not_change_when_its_delta_replays_more() -> None:
    delta = brokers_delta()
    delta.replay(TopicRecord(name="orders", topic_id="t-1"), 2)
    delta.replay(partition("t-1", 0), 3)
    first = delta.apply()
    delta.replay(partition("t-1", 1), 4)
    delta.replay(PartitionChangeRecord(topic_id="t-1", partition=0, leader=2), 5)
    second = delta.apply()
    assert sorted(first.topics["t-1"].partitions) == [0]
    assert first.topics["t-1"].partitions[0].leader == 1
    assert sorted(second.topics["t-1"].partitions) == [0, 1]
    assert second.topics["t-1"].partitions[0].leader == 2


def test_partitions_replayed_in_one_delta_are_seen_by_the_next_records() -> None:
    delta = brokers_delta()
    delta.replay(TopicRecord(name="orders", topic_id="t-1"), 2)
    for index in range(1000):
        delta.replay(partition("t-1", index), 3 + index)
    with pytest.raises(MetadataReplayError, match="already exists"):
        delta.replay(partition("t-1", 999), 2000)
    delta.replay(PartitionChangeRecord(topic_id="t-1", partition=999, isr=(1,)), 2001)
    image = delta.apply()
    assert len(image.topics["t-1"].partitions) == 1000
    assert image.topics["t-1"].partitions[999].isr == (1,)


def test_a_topic_removed_and_made_again_in_one_delta_starts_empty() -> None:
    delta = brokers_delta()
    delta.replay(TopicRecord(name="orders", topic_id="t-1"), 2)
    delta.replay(partition("t-1", 0), 3)
    delta.replay(RemoveTopicRecord(topic_id="t-1"), 4)
    with pytest.raises(MetadataReplayError, match="no topic"):
        delta.replay(partition("t-1", 1), 5)
    delta.replay(TopicRecord(name="orders", topic_id="t-1"), 6)
    delta.replay(partition("t-1", 1), 7)
    image = delta.apply()
    assert sorted(image.topics["t-1"].partitions) == [1]


def test_an_older_version_without_the_newer_fields_decodes_with_their_defaults() -> None:
    record = decode_record(cbor2.dumps([4, 0, "t", 0, [1], [1], 1, 0, 0]))
    assert isinstance(record, PartitionRecord) and record.elr == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (cbor2.dumps([4, 1, "t", True, [1], [1], 1, 0, 0, []]), "PartitionRecord.partition"),
        (cbor2.dumps([4, 1, "t", 0, [True], [1], 1, 0, 0, []]), "PartitionRecord.replicas"),
        (cbor2.dumps([4, 0, "t", 0, [1], [1], 1, 0]), "needs 8 fields, got 6"),
        (cbor2.dumps([3, 0, None, "t-1"]), "TopicRecord.name: null"),
    ],
)
def test_field_checks_still_refuse_bad_values(value: bytes, message: str) -> None:
    with pytest.raises(MetadataRecordError, match=message):
        decode_record(value)
