"""MetadataImage (immutable) and MetadataDelta (its only builder), after Kafka's image/.

Every node, active controller or standby or broker, builds its image the same way:
replay committed records in log order into a delta, then `apply()` it. An image can
also be written out as records (`to_records`), which is what a snapshot holds, and
replaying those from empty gives an equal image. A record that contradicts the image
(a partition of an unknown topic, a change for a broker epoch that is gone) means the
log or the controller is wrong, and replay refuses it loudly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cbor2

from kraft.metadata.records import (
    NO_LEADER,
    BrokerRegistrationChangeRecord,
    ConfigRecord,
    FeatureLevelRecord,
    Listener,
    MetadataRecord,
    NoOpRecord,
    PartitionChangeRecord,
    PartitionRecord,
    ProducerIdsRecord,
    RegisterBrokerRecord,
    RemoveTopicRecord,
    TopicRecord,
    UnregisterBrokerRecord,
    encode_record,
)


class MetadataReplayError(ValueError):
    """A record does not fit the image it is replayed onto."""


# Kafka's feature `eligible.leader.replicas.version`: 1 turns KIP-966 on.
ELR_FEATURE = "eligible.leader.replicas.version"
MIN_INSYNC_REPLICAS_CONFIG = "min.insync.replicas"
DEFAULT_MIN_INSYNC_REPLICAS = 1  # Kafka's min.insync.replicas


@attrs.frozen(kw_only=True)
class BrokerRegistration:
    broker_id: int
    broker_epoch: int
    incarnation_id: str
    listeners: tuple[Listener, ...]
    rack: str | None
    fenced: bool
    in_controlled_shutdown: bool = False

    def listener(self, name: str) -> Listener | None:
        return next((entry for entry in self.listeners if entry.name == name), None)


@attrs.frozen(kw_only=True)
class PartitionRegistration:
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int
    elr: tuple[int, ...] = ()  # eligible leader replicas (KIP-966)


@attrs.frozen(kw_only=True)
class TopicImage:
    name: str
    topic_id: str
    partitions: Mapping[int, PartitionRegistration]


@attrs.frozen(kw_only=True)
class MetadataImage:
    offset: int = -1  # of the last record applied
    brokers: Mapping[int, BrokerRegistration] = attrs.field(factory=dict)
    topics: Mapping[str, TopicImage] = attrs.field(factory=dict)  # by topic id
    topic_ids: Mapping[str, str] = attrs.field(factory=dict)  # name -> topic id
    configs: Mapping[tuple[str, str], Mapping[str, str]] = attrs.field(factory=dict)
    next_producer_id: int = 0
    features: Mapping[str, int] = attrs.field(factory=dict)

    def topic(self, name: str) -> TopicImage | None:
        topic_id = self.topic_ids.get(name)
        return None if topic_id is None else self.topics[topic_id]

    def unfenced_brokers(self) -> list[int]:
        return sorted(b for b, reg in self.brokers.items() if not reg.fenced)

    @property
    def elr_enabled(self) -> bool:
        """KIP-966's eligible leader replicas, switched on by a feature level."""
        return self.features.get(ELR_FEATURE, 0) >= 1

    def topic_config(self, topic_name: str, name: str) -> str | None:
        return self.configs.get(("topic", topic_name), {}).get(name)

    def min_insync_replicas(self, topic_name: str) -> int:
        value = self.topic_config(topic_name, MIN_INSYNC_REPLICAS_CONFIG)
        return DEFAULT_MIN_INSYNC_REPLICAS if value is None else int(value)

    def to_records(self) -> list[MetadataRecord]:
        """Records that rebuild this image from empty (a snapshot's content)."""
        records: list[MetadataRecord] = []
        for name, level in sorted(self.features.items()):
            records.append(FeatureLevelRecord(name=name, level=level))
        for broker_id in sorted(self.brokers):
            reg = self.brokers[broker_id]
            records.append(
                RegisterBrokerRecord(
                    broker_id=broker_id,
                    broker_epoch=reg.broker_epoch,
                    incarnation_id=reg.incarnation_id,
                    listeners=reg.listeners,
                    rack=reg.rack,
                    fenced=reg.fenced,
                )
            )
            if reg.in_controlled_shutdown:
                records.append(
                    BrokerRegistrationChangeRecord(
                        broker_id=broker_id,
                        broker_epoch=reg.broker_epoch,
                        in_controlled_shutdown=True,
                    )
                )
        for topic_id in sorted(self.topics):
            topic = self.topics[topic_id]
            records.append(TopicRecord(name=topic.name, topic_id=topic_id))
            for index in sorted(topic.partitions):
                part = topic.partitions[index]
                records.append(
                    PartitionRecord(
                        topic_id=topic_id,
                        partition=index,
                        replicas=part.replicas,
                        isr=part.isr,
                        leader=part.leader,
                        leader_epoch=part.leader_epoch,
                        partition_epoch=part.partition_epoch,
                        elr=part.elr,
                    )
                )
        for (resource_type, resource_name), settings in sorted(self.configs.items()):
            for name, value in sorted(settings.items()):
                records.append(
                    ConfigRecord(
                        resource_type=resource_type,
                        resource_name=resource_name,
                        name=name,
                        value=value,
                    )
                )
        if self.next_producer_id:
            records.append(
                ProducerIdsRecord(
                    broker_id=-1, broker_epoch=-1, next_producer_id=self.next_producer_id
                )
            )
        return records

    def digest(self) -> str:
        """A hash of the content (not the offset): equal images have equal digests."""
        payload = [encode_record(record) for record in self.to_records()]
        return hashlib.sha256(cbor2.dumps(payload, canonical=True)).hexdigest()


EMPTY_IMAGE = MetadataImage()


class MetadataDelta:
    """Collects records on top of an image; `apply()` makes the next image."""

    def __init__(self, image: MetadataImage) -> None:
        self.image = image
        self._brokers = dict(image.brokers)
        self._topics = dict(image.topics)
        self._topic_ids = dict(image.topic_ids)
        self._configs = {key: dict(value) for key, value in image.configs.items()}
        self._next_producer_id = image.next_producer_id
        self._features = dict(image.features)
        self._offset = image.offset
        # The partitions of the topics this delta touched, writable: a topic's
        # TopicImage is rebuilt once, in apply(), not once per partition record
        # (which made loading a topic of n partitions cost n^2).
        self._partitions: dict[str, dict[int, PartitionRegistration]] = {}
        self.changed_topics: set[str] = set()  # topic ids created, changed or removed
        self.changed_brokers: set[int] = set()
        self.changed_configs: set[tuple[str, str]] = set()  # (resource type, name)
        self.changed_features = False

    def replay(self, record: MetadataRecord, offset: int) -> None:
        handler = _HANDLERS.get(type(record))
        if handler is None:
            raise MetadataReplayError(f"no replay rule for {type(record).__name__}")
        handler(self, record)
        self._offset = offset

    def apply(self) -> MetadataImage:
        topics = dict(self._topics)
        for topic_id, partitions in self._partitions.items():
            # A copy: this delta may replay more records after it is applied.
            topics[topic_id] = attrs.evolve(topics[topic_id], partitions=dict(partitions))
        return MetadataImage(
            offset=self._offset,
            brokers=dict(self._brokers),
            topics=topics,
            topic_ids=dict(self._topic_ids),
            configs={key: dict(value) for key, value in self._configs.items() if value},
            next_producer_id=self._next_producer_id,
            features=dict(self._features),
        )

    # -- one rule per record type

    def _register_broker(self, record: RegisterBrokerRecord) -> None:
        old = self._brokers.get(record.broker_id)
        if old is not None and old.broker_epoch >= record.broker_epoch:
            raise MetadataReplayError(
                f"broker {record.broker_id} registered with epoch {record.broker_epoch}, "
                f"not above its current {old.broker_epoch}"
            )
        self._brokers[record.broker_id] = BrokerRegistration(
            broker_id=record.broker_id,
            broker_epoch=record.broker_epoch,
            incarnation_id=record.incarnation_id,
            listeners=record.listeners,
            rack=record.rack,
            fenced=record.fenced,
        )
        self.changed_brokers.add(record.broker_id)

    def _current_broker(self, broker_id: int, broker_epoch: int) -> BrokerRegistration:
        reg = self._brokers.get(broker_id)
        if reg is None or reg.broker_epoch != broker_epoch:
            raise MetadataReplayError(f"no broker {broker_id} with epoch {broker_epoch}")
        return reg

    def _broker_change(self, record: BrokerRegistrationChangeRecord) -> None:
        reg = self._current_broker(record.broker_id, record.broker_epoch)
        if record.fenced is not None:
            reg = attrs.evolve(reg, fenced=record.fenced)
        if record.in_controlled_shutdown is not None:
            reg = attrs.evolve(reg, in_controlled_shutdown=record.in_controlled_shutdown)
        self._brokers[record.broker_id] = reg
        self.changed_brokers.add(record.broker_id)

    def _unregister_broker(self, record: UnregisterBrokerRecord) -> None:
        self._current_broker(record.broker_id, record.broker_epoch)
        del self._brokers[record.broker_id]
        self.changed_brokers.add(record.broker_id)

    def _topic(self, record: TopicRecord) -> None:
        if record.name in self._topic_ids or record.topic_id in self._topics:
            raise MetadataReplayError(f"topic {record.name} ({record.topic_id}) already exists")
        self._topics[record.topic_id] = TopicImage(
            name=record.name, topic_id=record.topic_id, partitions={}
        )
        self._partitions[record.topic_id] = {}
        self._topic_ids[record.name] = record.topic_id
        self.changed_topics.add(record.topic_id)

    def _topic_of(self, topic_id: str) -> TopicImage:
        topic = self._topics.get(topic_id)
        if topic is None:
            raise MetadataReplayError(f"no topic with id {topic_id}")
        return topic

    def _partitions_of(self, topic: TopicImage) -> Mapping[int, PartitionRegistration]:
        """The topic's partitions as this delta has them so far."""
        return self._partitions.get(topic.topic_id, topic.partitions)

    def _set_partition(self, topic: TopicImage, index: int, part: PartitionRegistration) -> None:
        if part.leader != NO_LEADER and part.leader not in part.isr:
            raise MetadataReplayError(
                f"{topic.name}-{index}: leader {part.leader} not in ISR {part.isr}"
            )
        if not set(part.isr) <= set(part.replicas):
            raise MetadataReplayError(
                f"{topic.name}-{index}: ISR {part.isr} not within {part.replicas}"
            )
        if not set(part.elr) <= set(part.replicas) or set(part.elr) & set(part.isr):
            raise MetadataReplayError(
                f"{topic.name}-{index}: ELR {part.elr} not within {part.replicas} "
                f"outside ISR {part.isr}"
            )
        partitions = self._partitions.get(topic.topic_id)
        if partitions is None:
            partitions = self._partitions[topic.topic_id] = dict(topic.partitions)
        partitions[index] = part
        self.changed_topics.add(topic.topic_id)

    def _partition(self, record: PartitionRecord) -> None:
        topic = self._topic_of(record.topic_id)
        if record.partition in self._partitions_of(topic):
            raise MetadataReplayError(f"{topic.name}-{record.partition} already exists")
        self._set_partition(
            topic,
            record.partition,
            PartitionRegistration(
                replicas=record.replicas,
                isr=record.isr,
                leader=record.leader,
                leader_epoch=record.leader_epoch,
                partition_epoch=record.partition_epoch,
                elr=record.elr,
            ),
        )

    def _partition_change(self, record: PartitionChangeRecord) -> None:
        topic = self._topic_of(record.topic_id)
        part = self._partitions_of(topic).get(record.partition)
        if part is None:
            raise MetadataReplayError(f"{topic.name}-{record.partition} does not exist")
        leader_changes = record.leader is not None and record.leader != part.leader
        self._set_partition(
            topic,
            record.partition,
            PartitionRegistration(
                replicas=record.replicas if record.replicas is not None else part.replicas,
                isr=record.isr if record.isr is not None else part.isr,
                leader=record.leader if record.leader is not None else part.leader,
                leader_epoch=part.leader_epoch + 1 if leader_changes else part.leader_epoch,
                partition_epoch=part.partition_epoch + 1,
                elr=record.elr if record.elr is not None else part.elr,
            ),
        )

    def _remove_topic(self, record: RemoveTopicRecord) -> None:
        topic = self._topic_of(record.topic_id)
        del self._topics[record.topic_id]
        self._partitions.pop(record.topic_id, None)
        del self._topic_ids[topic.name]
        self._configs.pop(("topic", topic.name), None)
        self.changed_topics.add(record.topic_id)

    def _config(self, record: ConfigRecord) -> None:
        self.changed_configs.add((record.resource_type, record.resource_name))
        settings = self._configs.setdefault((record.resource_type, record.resource_name), {})
        if record.value is None:
            settings.pop(record.name, None)
        else:
            settings[record.name] = record.value

    def _producer_ids(self, record: ProducerIdsRecord) -> None:
        if record.next_producer_id <= self._next_producer_id:
            raise MetadataReplayError(
                f"producer id block ends at {record.next_producer_id}, "
                f"not past {self._next_producer_id}"
            )
        self._next_producer_id = record.next_producer_id

    def _feature(self, record: FeatureLevelRecord) -> None:
        self._features[record.name] = record.level
        self.changed_features = True

    def _no_op(self, record: NoOpRecord) -> None:
        pass


_HANDLERS: dict[type, Callable[[MetadataDelta, Any], None]] = {
    RegisterBrokerRecord: MetadataDelta._register_broker,
    BrokerRegistrationChangeRecord: MetadataDelta._broker_change,
    UnregisterBrokerRecord: MetadataDelta._unregister_broker,
    TopicRecord: MetadataDelta._topic,
    PartitionRecord: MetadataDelta._partition,
    PartitionChangeRecord: MetadataDelta._partition_change,
    RemoveTopicRecord: MetadataDelta._remove_topic,
    ConfigRecord: MetadataDelta._config,
    ProducerIdsRecord: MetadataDelta._producer_ids,
    FeatureLevelRecord: MetadataDelta._feature,
    NoOpRecord: MetadataDelta._no_op,
}


def replay(image: MetadataImage, records: list[tuple[int, MetadataRecord]]) -> MetadataImage:
    """The image after (offset, record) pairs, in order."""
    delta = MetadataDelta(image)
    for offset, record in records:
        delta.replay(record, offset)
    return delta.apply()
