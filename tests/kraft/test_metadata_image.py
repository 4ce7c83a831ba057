"""Metadata records and the image: round trips, refusals, and replay equivalences."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kraft.metadata.image import EMPTY_IMAGE, MetadataDelta, MetadataReplayError, replay
from kraft.metadata.records import (
    BrokerRegistrationChangeRecord,
    ConfigRecord,
    FeatureLevelRecord,
    Listener,
    MetadataRecordError,
    NoOpRecord,
    PartitionChangeRecord,
    PartitionRecord,
    ProducerIdsRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    UnregisterBrokerRecord,
    decode_record,
    encode_record,
)


def broker(broker_id: int, epoch: int, *, fenced: bool = False) -> RegisterBrokerRecord:
    return RegisterBrokerRecord(
        broker_id=broker_id,
        broker_epoch=epoch,
        incarnation_id=f"inc-{broker_id}-{epoch}",
        listeners=(Listener(name="PLAINTEXT", host="127.0.0.1", port=9000 + broker_id),),
        rack=None if broker_id % 2 else "rack-a",
        fenced=fenced,
    )


def test_every_record_type_round_trips() -> None:
    samples = [
        broker(1, 5),
        BrokerRegistrationChangeRecord(broker_id=1, broker_epoch=5, fenced=False),
        UnregisterBrokerRecord(broker_id=1, broker_epoch=5),
        TopicRecord(name="orders", topic_id="t-1"),
        PartitionRecord(
            topic_id="t-1",
            partition=0,
            replicas=(1, 2),
            isr=(1, 2),
            leader=1,
            leader_epoch=0,
            partition_epoch=0,
        ),
        PartitionChangeRecord(topic_id="t-1", partition=0, isr=(1,)),
        RemoveTopicRecord(topic_id="t-1"),
        ConfigRecord(
            resource_type="topic", resource_name="orders", name="retention.ms", value=None
        ),
        ProducerIdsRecord(broker_id=1, broker_epoch=5, next_producer_id=1000),
        FeatureLevelRecord(name="metadata.version", level=1),
        NoOpRecord(),
    ]
    for record in samples:
        assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\xff\xff", "not CBOR"),
        (cbor2.dumps({"a": 1}), "must be"),
        (cbor2.dumps([99, 0]), "unknown metadata record type"),
        (cbor2.dumps([3, 7, "orders", "t-1"]), "version 7"),
        (cbor2.dumps([3, 0, "orders"]), "needs 2 fields"),
        (cbor2.dumps([3, 0, 5, "t-1"]), "TopicRecord.name"),
        (cbor2.dumps([4, 0, "t", 0, [1, "x"], [1], 1, 0, 0]), "PartitionRecord.replicas"),
    ],
)
def test_bad_record_values_are_refused(value: bytes, message: str) -> None:
    with pytest.raises(MetadataRecordError, match=message):
        decode_record(value)


def base_image():
    return replay(
        EMPTY_IMAGE,
        list(
            enumerate(
                [
                    broker(1, 0),
                    broker(2, 1),
                    broker(3, 2),
                    TopicRecord(name="orders", topic_id="t-1"),
                    PartitionRecord(
                        topic_id="t-1",
                        partition=0,
                        replicas=(1, 2, 3),
                        isr=(1, 2, 3),
                        leader=1,
                        leader_epoch=0,
                        partition_epoch=0,
                    ),
                ]
            )
        ),
    )


def test_leader_change_bumps_both_epochs_and_isr_change_only_the_partition_epoch() -> None:
    image = base_image()
    image = replay(image, [(5, PartitionChangeRecord(topic_id="t-1", partition=0, isr=(1, 2)))])
    part = image.topic("orders").partitions[0]
    assert (part.isr, part.leader_epoch, part.partition_epoch) == ((1, 2), 0, 1)
    image = replay(
        image, [(6, PartitionChangeRecord(topic_id="t-1", partition=0, leader=2, isr=(2,)))]
    )
    part = image.topic("orders").partitions[0]
    assert (part.leader, part.isr, part.leader_epoch, part.partition_epoch) == (2, (2,), 1, 2)
    assert image.offset == 6


@pytest.mark.parametrize(
    "record",
    [
        PartitionRecord(
            topic_id="nope",
            partition=0,
            replicas=(1,),
            isr=(1,),
            leader=1,
            leader_epoch=0,
            partition_epoch=0,
        ),
        PartitionChangeRecord(topic_id="t-1", partition=0, leader=4),  # not in the ISR
        PartitionChangeRecord(topic_id="t-1", partition=9, isr=(1,)),
        TopicRecord(name="orders", topic_id="t-2"),
        BrokerRegistrationChangeRecord(broker_id=1, broker_epoch=99, fenced=True),
        broker(1, 0),  # not a newer epoch
        ProducerIdsRecord(broker_id=1, broker_epoch=0, next_producer_id=0),
    ],
)
def test_records_that_contradict_the_image_are_refused(record) -> None:
    with pytest.raises(MetadataReplayError):
        replay(base_image(), [(9, record)])


@st.composite
def record_histories(draw):
    """Valid histories: each record fits the state the ones before it built."""
    records = []
    brokers: dict[int, int] = {}
    topics: dict[str, dict[int, tuple[tuple[int, ...], tuple[int, ...], int]]] = {}
    names: dict[str, str] = {}
    next_pid = 0
    for step in range(draw(st.integers(1, 40))):
        kind = draw(
            st.sampled_from(
                [
                    "broker",
                    "fence",
                    "topic",
                    "change",
                    "remove",
                    "config",
                    "pids",
                    "feature",
                    "noop",
                ]
            )
        )
        offset = len(records)
        if kind == "broker" or not brokers:
            broker_id = draw(st.integers(1, 5))
            brokers[broker_id] = offset
            records.append(broker(broker_id, offset, fenced=draw(st.booleans())))
        elif kind == "fence":
            broker_id = draw(st.sampled_from(sorted(brokers)))
            records.append(
                BrokerRegistrationChangeRecord(
                    broker_id=broker_id, broker_epoch=brokers[broker_id], fenced=draw(st.booleans())
                )
            )
        elif kind == "topic":
            topic_id = f"t-{step}"
            names[topic_id] = f"topic-{step}"
            records.append(TopicRecord(name=names[topic_id], topic_id=topic_id))
            topics[topic_id] = {}
            for index in range(draw(st.integers(1, 3))):
                replicas = tuple(
                    draw(
                        st.lists(
                            st.sampled_from(sorted(brokers)), min_size=1, max_size=3, unique=True
                        )
                    )
                )
                topics[topic_id][index] = (replicas, replicas, replicas[0])
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
        elif kind == "change" and topics:
            topic_id = draw(st.sampled_from(sorted(topics)))
            index = draw(st.sampled_from(sorted(topics[topic_id])))
            replicas, isr, _leader = topics[topic_id][index]
            new_leader = draw(st.sampled_from(isr))
            new_isr = tuple(
                sorted(set(draw(st.lists(st.sampled_from(isr), max_size=3))) | {new_leader})
            )
            topics[topic_id][index] = (replicas, new_isr, new_leader)
            records.append(
                PartitionChangeRecord(
                    topic_id=topic_id, partition=index, isr=new_isr, leader=new_leader
                )
            )
        elif kind == "remove" and topics:
            topic_id = draw(st.sampled_from(sorted(topics)))
            del topics[topic_id]
            records.append(RemoveTopicRecord(topic_id=topic_id))
        elif kind == "config":
            name = draw(st.sampled_from(["retention.ms", "segment.bytes"]))
            value = draw(st.none() | st.sampled_from(["1", "1000"]))
            records.append(
                ConfigRecord(resource_type="broker", resource_name="1", name=name, value=value)
            )
        elif kind == "pids":
            next_pid += draw(st.integers(1, 1000))
            records.append(
                ProducerIdsRecord(broker_id=1, broker_epoch=0, next_producer_id=next_pid)
            )
        elif kind == "feature":
            records.append(
                FeatureLevelRecord(name="metadata.version", level=draw(st.integers(1, 3)))
            )
        else:
            records.append(NoOpRecord())
    return list(enumerate(records))


def same_content(a, b) -> bool:
    return (a.brokers, a.topics, a.topic_ids, a.configs, a.next_producer_id, a.features) == (
        b.brokers,
        b.topics,
        b.topic_ids,
        b.configs,
        b.next_producer_id,
        b.features,
    ) and a.digest() == b.digest()


@settings(max_examples=150, deadline=None)
@given(history=record_histories())
def test_snapshot_records_rebuild_an_equal_image_at_every_prefix(history) -> None:
    image = EMPTY_IMAGE
    for prefix_end in range(len(history)):
        offset, record = history[prefix_end]
        delta = MetadataDelta(image)
        delta.replay(decode_record(encode_record(record)), offset)
        image = delta.apply()
        from_scratch = replay(EMPTY_IMAGE, history[: prefix_end + 1])
        assert same_content(image, from_scratch) and image.offset == from_scratch.offset == offset
        from_snapshot = replay(EMPTY_IMAGE, list(enumerate(image.to_records())))
        assert same_content(from_snapshot, image)
