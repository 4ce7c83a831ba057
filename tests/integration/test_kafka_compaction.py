"""Compaction with Kafka's clients against a 3-node pykraft cluster whose cleaners look
every 200 ms (issue 16): a compacted topic made, described and read across its gaps,
and a group's coordinator SIGKILLed after its `__consumer_offsets` partition was
cleaned on every replica."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.listeners import BROKER_LISTENER
from broker.local_cluster import LocalCluster

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from tests.integration.test_kafka_groups import (  # noqa: E402
    WAIT_S,
    create_topic,
    kafka_python_member,
    produce,
    wait_until,
)


@pytest.fixture(scope="module")
def compacting_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Small __consumer_offsets segments and a cleaner that looks every 200 ms."""
    root = tmp_path_factory.mktemp("kafka-groups-compacted")
    with LocalCluster(
        str(root),
        combined=3,
        offsets_topic_num_partitions=3,
        offsets_topic_segment_bytes=2048,
        log_cleaner_backoff_ms=200,
    ) as running:
        running.start_all()
        yield running


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_group_resumes_after_sigkill_of_its_coordinator_on_a_cleaned_offsets_topic(
    compacting_cluster: LocalCluster,
) -> None:
    """Many commits over small segments; every replica of the group's offsets partition
    is cleaned; the coordinator's broker is SIGKILLed and the new leader loads the
    group from its own cleaned replica: a new member resumes from the last commits."""
    from confluent_kafka.admin import AdminClient
    from kafka.structs import OffsetAndMetadata

    from broker.groups import partition_for

    cluster = compacting_cluster
    bootstrap = cluster.bootstrap_servers()
    topic, group = "group-compacted", "readers-compacted"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, range(100))
    member, consumer = kafka_python_member(bootstrap, topic, group)
    wait_until(lambda: len(member.values) >= 100, "the records were not read", [member])
    member.halt()
    ends = {tp: consumer.position(tp) for tp in consumer.assignment()}
    for step in range(150):  # the same keys again and again: a lot for the cleaner
        consumer.commit({tp: OffsetAndMetadata(min(step, end), "", -1) for tp, end in ends.items()})
    consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
    consumer.close()

    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    offsets = metadata.topics["__consumer_offsets"].partitions
    index = partition_for(group, len(offsets))
    coordinator = offsets[index].leader

    def cleaned_everywhere() -> bool:
        return all(
            os.path.exists(
                os.path.join(
                    cluster.configs[node].data_dir,
                    f"__consumer_offsets-{index}",
                    "cleaner-offset-checkpoint",
                )
            )
            for node in offsets[index].replicas
        )

    wait_until(cleaned_everywhere, "the offsets partition was not cleaned on every replica", [])
    cluster.kill(coordinator)
    try:
        survivors = ",".join(
            "{}:{}".format(*cluster.address(node_id, BROKER_LISTENER))
            for node_id in cluster.broker_ids
            if node_id != coordinator
        )
        produce(survivors, topic, range(100, 130))
        later, later_consumer = kafka_python_member(survivors, topic, group)
        wait_until(lambda: len(later.values) >= 30, "the later records were not read", [later])
        time.sleep(1)
        later.halt()
        later_consumer.close()
        assert sorted(later.values) == sorted(b"%d" % i for i in range(100, 130))
    finally:
        cluster.start(coordinator)


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_kafka_clients_read_a_compacted_topic_across_its_gaps(
    compacting_cluster: LocalCluster,
) -> None:
    """A compacted topic made and described with kafka-python's admin; keyless records
    refused (INVALID_RECORD); repeated keys over small segments, cleaned by the brokers'
    own cleaner: a consumer from the beginning reads each key's last value once."""
    from kafka import TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import InvalidRecordError

    bootstrap = compacting_cluster.bootstrap_servers()
    topic = "compacted-values"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        configs = {"cleanup.policy": "compact", "segment.bytes": "4096"}
        answer = admin.create_topics([NewTopic(topic, 1, 3, topic_configs=configs)])
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
        entries: dict[str, Any] = {}

        def described() -> bool:
            resource = ConfigResource(ConfigResourceType.TOPIC, topic)
            answer = admin.describe_configs([resource], config_filter="all")
            entries.update(*next(iter(answer.values())).values())
            return "cleanup.policy" in entries  # once the broker asked knows the topic

        wait_until(described, "DescribeConfigs never showed the topic", [])
        assert entries["cleanup.policy"]["value"] == "compact"
        assert entries["min.cleanable.dirty.ratio"]["value"] == "0.5"  # defaults
        assert entries["delete.retention.ms"]["value"] == "86400000"
    finally:
        admin.close()
    # Batches well below segment.bytes (a larger one is refused as too large).
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, batch_size=1024
    )
    try:
        producer.send(topic, key=b"k0", value=b"first").get(timeout=WAIT_S)
        with pytest.raises(InvalidRecordError):
            producer.send(topic, value=b"no key").get(timeout=WAIT_S)
        keys = [b"k%d" % k for k in range(5)]
        for round_ in range(40):
            for key in keys:
                producer.send(topic, key=key, value=b"%s-%d" % (key, round_))
        for key in keys:
            producer.send(topic, key=key, value=b"%s-final" % key)
        for filler in range(400):  # the finals leave the active segment
            producer.send(topic, key=b"filler", value=b"%d" % filler)
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()

    def read_from_the_start() -> list[tuple[bytes, bytes]]:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
            end = consumer.end_offsets([partition])[partition]
            read: list[tuple[bytes, bytes]] = []
            deadline = time.monotonic() + 30
            while consumer.position(partition) < end and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    read.extend((r.key, r.value) for r in records)
            return read
        finally:
            consumer.close()

    def compacted() -> bool:
        read = [(key, value) for key, value in read_from_the_start() if key != b"filler"]
        return read == [(key, b"%s-final" % key) for key in keys]

    wait_until(compacted, "the topic was not compacted to each key's last value", [])
