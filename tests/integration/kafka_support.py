"""Helpers of the tests of Kafka's clients against pykraft clusters (issue 15): topics
created and awaited, records produced and consumed by each client, raw requests
through the Kafka codec."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import pytest

from broker.local_cluster import LocalCluster
from client.protocol.kafka import decode_response, encode_request, messages

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")
aiokafka = pytest.importorskip("aiokafka")

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer  # noqa: E402
from confluent_kafka import TopicPartition as CTopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

RECORDS = 10_000
WAIT_S = 120  # wide: other machines are slower, and this one is shared


def create_topic(bootstrap: str, name: str, partitions: int, factor: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        answer = admin.create_topics([NewTopic(name, partitions, factor)])
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
    finally:
        admin.close()
    # Every broker's image has it, with a leader for every partition.
    deadline = time.monotonic() + WAIT_S
    for address in bootstrap.split(","):
        host, port = address.split(":")
        while not _has_leaders(host, int(port), name, partitions):
            assert time.monotonic() < deadline, f"{name} has no leaders on {address}"
            time.sleep(0.1)


def _has_leaders(host: str, port: int, name: str, partitions: int) -> bool:
    Topic = messages.MetadataRequest.MetadataRequestTopic
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(_frame(3, 12, messages.MetadataRequest(topics=(Topic(name=name),))))
        body = _read_frame(sock)
    assert body is not None
    (topic,) = decode_response(body, 3, 12)[1].topics
    return (
        topic.error_code == 0
        and len(topic.partitions) == partitions
        and all(p.error_code == 0 and p.leader_id >= 0 for p in topic.partitions)
    )


def kafka_python_consume(bootstrap: str, topic: str, partitions: int, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=30_000
    )
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records = []
        deadline = time.monotonic() + WAIT_S
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def confluent_consume(bootstrap: str, topic: str, partitions: int, count: int) -> list[Any]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        consumer.assign([CTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        records = []
        deadline = time.monotonic() + WAIT_S
        while len(records) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1):
                assert message.error() is None, message.error()
                records.append(message)
        return records
    finally:
        consumer.close()


def confluent_produce(
    bootstrap: str, topic: str, items: list[tuple[bytes, bytes]], compression: str = "none"
) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            # Kafka's Java partitioner (librdkafka's default is CRC32 based).
            "partitioner": "murmur2_random",
            "compression.type": compression,
        }
    )
    failures: list[Any] = []
    delivered = [0]

    def on_delivery(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error)
        else:
            delivered[0] += 1

    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(WAIT_S) == 0
    assert not failures, failures[:3]
    assert delivered[0] == len(items)


def _frame(api_key: int, version: int, request: Any, correlation_id: int = 7) -> bytes:
    header = messages.RequestHeader(
        request_api_key=api_key,
        request_api_version=version,
        correlation_id=correlation_id,
        client_id="raw",
    )
    return bytes(encode_request(header, request))


def _read_frame(sock: socket.socket) -> bytes | None:
    """One response frame's body, or None if the broker closed the connection."""
    size = _read_exactly(sock, 4)
    return None if size is None else _read_exactly(sock, struct.unpack(">i", size)[0])


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _ask(address: tuple[str, int], api_key: int, version: int, request: Any) -> Any:
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(_frame(api_key, version, request))
        body = _read_frame(sock)
    assert body is not None, (api_key, version)
    return decode_response(body, api_key, version)[1]


def _wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _leader_address(cluster: LocalCluster, topic: str) -> tuple[str, int]:
    Topic = messages.MetadataRequest.MetadataRequestTopic
    any_broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    answer = _ask(any_broker, 3, 12, messages.MetadataRequest(topics=(Topic(name=topic),)))
    return cluster.address(answer.topics[0].partitions[0].leader_id, "PLAINTEXT")


def _topics_seen_by_every_client(bootstrap: str) -> list[set[str]]:
    """The topic names in Metadata, as confluent-kafka, kafka-python, aiokafka and a raw
    request to each broker see them."""
    seen = [set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics)]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        seen.append(set(admin.list_topics()))
    finally:
        admin.close()

    async def aiokafka_topics() -> set[str]:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            return set(await consumer.topics())
        finally:
            await consumer.stop()

    seen.append(asyncio.run(aiokafka_topics()))
    for address in bootstrap.split(","):
        host, port = address.split(":")
        answer = _ask((host, int(port)), 3, 12, messages.MetadataRequest(topics=None))
        seen.append({t.name for t in answer.topics})
    return seen
