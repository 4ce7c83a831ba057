"""Idempotent producers of Kafka's clients against a 3-node pykraft cluster (issue 17).

InitProducerId hands out ids from the controller's blocks; partitions answer a retried
batch with its first offsets and write nothing; the state survives a SIGKILL of the
broker. kafka-python runs with its defaults (enable_idempotence=True, acks=all, 5 in
flight) and confluent-kafka with enable.idempotence=true through a SIGKILLed leader.
"""

from __future__ import annotations

import glob
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.local_cluster import LocalCluster
from client.protocol.kafka import decode_response, messages
from storage.fs import OsFileSystem
from storage.producer_state import list_snapshot_offsets
from storage.records import RecordInput, build_batch, iter_batches
from tests.integration.test_kafka_clients import (
    FAILOVER_SETTINGS,
    WAIT_S,
    _ask,
    _frame,
    _read_frame,
    confluent_consume,
    create_topic,
)

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

INIT_PRODUCER_ID, PRODUCE, METADATA, API_VERSIONS = 22, 0, 3, 18
INVALID_REQUEST = 42
COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR = 14, 15, 16
UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER = 3, 6
RECORDS = 10_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("idempotent-clients")
    with LocalCluster(str(root), combined=3, **FAILOVER_SETTINGS) as running:
        running.start_all()
        yield running


def init_producer_ids(
    address: tuple[str, int], count: int, version: int = 4, **fields: Any
) -> list[Any]:
    """`count` InitProducerId answers, the requests pipelined on one connection."""
    request = messages.InitProducerIdRequest(
        transactional_id=fields.get("transactional_id"),
        transaction_timeout_ms=60_000,
        producer_id=fields.get("producer_id", -1),
        producer_epoch=fields.get("producer_epoch", -1),
    )
    answers = []
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(b"".join(_frame(INIT_PRODUCER_ID, version, request, c) for c in range(count)))
        for _ in range(count):
            body = _read_frame(sock)
            assert body is not None
            answers.append(decode_response(body, INIT_PRODUCER_ID, version)[1])
    return answers


def fresh_ids(address: tuple[str, int], count: int) -> list[int]:
    answers = init_producer_ids(address, count)
    assert {(a.error_code, a.producer_epoch) for a in answers} == {(0, 0)}, answers[:3]
    return [a.producer_id for a in answers]


def leader_of(cluster: LocalCluster, topic: str, partition: int = 0) -> int:
    Topic = messages.MetadataRequest.MetadataRequestTopic
    deadline = time.monotonic() + WAIT_S
    while True:
        for node in cluster.broker_ids:
            if not cluster.is_running(node):
                continue
            try:
                answer = _ask(
                    cluster.address(node, "PLAINTEXT"),
                    METADATA,
                    12,
                    messages.MetadataRequest(topics=(Topic(name=topic),)),
                )
            except OSError:
                continue
            (found,) = answer.topics
            if found.error_code != 0 or len(found.partitions) <= partition:
                continue  # not in this node's image yet
            leader = found.partitions[partition].leader_id
            if leader >= 0 and cluster.is_running(leader):
                return leader
        assert time.monotonic() < deadline, f"{topic}-{partition} has no live leader"
        time.sleep(0.2)


def produce(
    address: tuple[str, int], topic: str, batch: bytes, *, partition: int = 0
) -> tuple[int, int]:
    P = messages.ProduceRequest
    answer = _ask(
        address,
        PRODUCE,
        9,
        P(
            acks=-1,
            timeout_ms=30_000,
            topic_data=(
                P.TopicProduceData(
                    name=topic,
                    partition_data=(P.PartitionProduceData(index=partition, records=batch),),
                ),
            ),
        ),
    )
    (result,) = answer.responses[0].partition_responses
    return result.error_code, result.base_offset


def produce_once_led(address: tuple[str, int], topic: str, batch: bytes) -> tuple[int, int]:
    """`produce`, retried while the broker does not lead the partition yet (its image
    may lag the one that named it leader)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = produce(address, topic, batch)
        if answer[0] not in (UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER):
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def producer_batch(pid: int, epoch: int, sequence: int, count: int = 2) -> bytes:
    return build_batch(
        [RecordInput(timestamp=int(time.time() * 1000), value=b"%d" % (sequence + i)) for i in range(count)],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=sequence,
    )  # fmt: skip


def stored_batches(cluster: LocalCluster, node: int, topic: str, partition: int) -> list[Any]:
    directory = os.path.join(cluster.configs[node].data_dir, f"{topic}-{partition}")
    headers = []
    for path in sorted(glob.glob(os.path.join(directory, "*.log"))):
        with open(path, "rb") as file:
            headers += [header for _, header in iter_batches(file.read(), validate=False)]
    return headers


# --------------------------------------------------------------------------- InitProducerId


def test_init_producer_id_at_every_version_from_every_broker(cluster: LocalCluster) -> None:
    any_broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    versions = _ask(any_broker, API_VERSIONS, 3, messages.ApiVersionsRequest())
    advertised = {k.api_key: (k.min_version, k.max_version) for k in versions.api_keys}
    assert advertised[INIT_PRODUCER_ID] == (0, 4)
    ids = []
    for node in cluster.broker_ids:
        address = cluster.address(node, "PLAINTEXT")
        for version in range(5):
            (answer,) = init_producer_ids(address, 1, version)
            assert (answer.error_code, answer.producer_epoch) == (0, 0), (node, version)
            ids.append(answer.producer_id)
    assert len(set(ids)) == len(ids) and min(ids) >= 0
    # KIP-360: v3+ naming an id and its epoch bumps the epoch of that id.
    (bumped,) = init_producer_ids(any_broker, 1, 3, producer_id=ids[0], producer_epoch=0)
    assert (bumped.error_code, bumped.producer_id, bumped.producer_epoch) == (0, ids[0], 1)
    # An id never handed out gets a fresh one instead.
    (fresh,) = init_producer_ids(any_broker, 1, 4, producer_id=10**15, producer_epoch=3)
    assert (fresh.error_code, fresh.producer_epoch) == (0, 0)
    assert fresh.producer_id not in ids and fresh.producer_id != 10**15
    # A transactional id goes to its transaction coordinator: this broker may not be it
    # (NOT_COORDINATOR), or it is still creating `__transaction_state` or loading it.
    (routed,) = init_producer_ids(any_broker, 1, 4, transactional_id="tx")
    assert routed.error_code in (
        0,
        COORDINATOR_LOAD_IN_PROGRESS,
        COORDINATOR_NOT_AVAILABLE,
        NOT_COORDINATOR,
    ), routed
    (empty,) = init_producer_ids(any_broker, 1, 4, transactional_id="")
    assert empty.error_code == INVALID_REQUEST


def test_a_retried_batch_is_answered_with_its_offset_and_stored_once(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "retried", 1)
    (pid,) = fresh_ids(cluster.address(cluster.broker_ids[0], "PLAINTEXT"), 1)
    leader = cluster.address(leader_of(cluster, "retried"), "PLAINTEXT")
    offsets = [produce(leader, "retried", producer_batch(pid, 0, seq)) for seq in range(0, 10, 2)]
    assert offsets == [(0, offset) for offset in range(0, 10, 2)]
    for seq, offset in zip(range(0, 10, 2), range(0, 10, 2), strict=True):
        assert produce(leader, "retried", producer_batch(pid, 0, seq)) == (0, offset)
    assert produce(leader, "retried", producer_batch(pid, 0, 20))[0] == 45  # a gap
    assert produce(leader, "retried", producer_batch(pid, 0, 10)) == (0, 10)
    assert len(stored_batches(cluster, leader_of(cluster, "retried"), "retried", 0)) == 6
    for node in cluster.broker_ids:  # the followers copied no duplicate either
        assert len(stored_batches(cluster, node, "retried", 0)) <= 6


@pytest.mark.lab
def test_producer_ids_stay_unique_across_blocks_and_a_controller_failover(
    cluster: LocalCluster,
) -> None:
    brokers = cluster.broker_ids
    before = {node: fresh_ids(cluster.address(node, "PLAINTEXT"), 1_100) for node in brokers}
    every = [pid for ids in before.values() for pid in ids]
    assert len(set(every)) == len(every)
    metadata = _ask(
        cluster.address(brokers[0], "PLAINTEXT"), METADATA, 12, messages.MetadataRequest(topics=())
    )
    controller = metadata.controller_id
    assert controller in brokers
    cluster.kill(controller)
    try:
        after: list[int] = []
        deadline = time.monotonic() + WAIT_S
        for node in (b for b in brokers if b != controller):
            address = cluster.address(node, "PLAINTEXT")
            mine: list[int] = []
            while len(mine) < 1_100:  # past the end of the block it held: a new one
                answers = init_producer_ids(address, 100)
                mine += [a.producer_id for a in answers if a.error_code == 0]
                assert time.monotonic() < deadline, "no producer ids after the failover"
            after += mine
        assert not set(after) & set(every) and len(set(after)) == len(after)
    finally:
        cluster.start(controller)


# --------------------------------------------------------------------------- real clients


def test_kafka_python_defaults_produce_10000_records_read_back_exactly_once(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "idem", 3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)  # idempotent by default
    assert producer.config["enable_idempotence"]
    try:
        futures = [
            producer.send("idem", key=b"%d" % (seq % 97), value=b"%d" % seq)
            for seq in range(RECORDS)
        ]
        producer.flush(WAIT_S)
        sent = [future.get(timeout=WAIT_S) for future in futures]
    finally:
        producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=30_000
    )
    try:
        consumer.assign([TopicPartition("idem", p) for p in range(3)])
        consumer.seek_to_beginning()
        records = []
        deadline = time.monotonic() + WAIT_S
        while len(records) < RECORDS and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records += batch
    finally:
        consumer.close()
    values = [int(r.value) for r in records]
    assert sorted(values) == list(range(RECORDS))  # every record, exactly once
    for partition in range(3):
        mine = [
            int(r.value)
            for r in sorted(records, key=lambda r: r.offset)
            if r.partition == partition
        ]
        assert mine == sorted(mine), partition  # the producer's order
        assert {m.offset for m in sent if m.partition == partition} == {
            r.offset for r in records if r.partition == partition
        }
    # The batches carry a producer id: idempotence was really in use.
    leader = leader_of(cluster, "idem")
    assert {
        h.producer_id >= 0 and h.base_sequence >= 0
        for h in stored_batches(cluster, leader, "idem", 0)
    } == {True}


def test_a_sigkilled_broker_restarts_with_its_producer_state(cluster: LocalCluster) -> None:
    """RF 1: only the restarted broker's own state (snapshot + tail) can answer."""
    bootstrap = cluster.bootstrap_servers()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        admin.create_topics([NewTopic("recovered", 1, 1, topic_configs={"segment.bytes": "2048"})])
    finally:
        admin.close()
    node = leader_of(cluster, "recovered")
    address = cluster.address(node, "PLAINTEXT")
    (pid,) = fresh_ids(address, 1)
    assert (
        produce_once_led(address, "recovered", build_batch([RecordInput(timestamp=1, value=b"")]))[
            0
        ]
        == 0
    )
    answers = [
        produce(address, "recovered", producer_batch(pid, 0, seq, 4)) for seq in range(0, 200, 4)
    ]
    assert [code for code, _ in answers] == [0] * 50
    directory = os.path.join(cluster.configs[node].data_dir, "recovered-0")
    assert list_snapshot_offsets(OsFileSystem(), directory), "no snapshot on roll"
    cluster.kill(node)
    cluster.start(node)
    assert leader_of(cluster, "recovered") == node
    end = answers[-1][1] + 4
    # Each of the last five batches is answered with its first offset, not written again.
    retries = zip(range(180, 200, 4), answers[-5:], strict=True)
    (seq, (_, offset)), *others = retries
    assert produce_once_led(address, "recovered", producer_batch(pid, 0, seq, 4)) == (0, offset)
    for seq, (_, offset) in others:
        assert produce(address, "recovered", producer_batch(pid, 0, seq, 4)) == (0, offset)
    assert produce(address, "recovered", producer_batch(pid, 0, 200, 4)) == (0, end)
    assert len(stored_batches(cluster, node, "recovered", 0)) == 52


@pytest.mark.lab
def test_confluent_idempotent_producer_through_a_sigkilled_partition_leader(tmp_path: Any) -> None:
    """enable.idempotence with 5 in flight, acks=all: every acknowledged record read back,
    no duplicate, the producer's order kept per partition, through a leader's SIGKILL."""
    with LocalCluster(str(tmp_path), combined=3, **FAILOVER_SETTINGS) as failing:
        failing.start_all()
        bootstrap = failing.bootstrap_servers()
        create_topic(bootstrap, "idem-failover", 3)
        victim = leader_of(failing, "idem-failover")
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "max.in.flight.requests.per.connection": 5,
                "linger.ms": 5,
                "message.timeout.ms": 90_000,
                "partitioner": "murmur2_random",
            }
        )
        acked: list[tuple[int, int, int]] = []  # (partition, offset, sequence)
        failed: list[Any] = []

        def on_delivery(error: Any, message: Any) -> None:
            if error is None:
                acked.append((message.partition(), message.offset(), int(message.value())))
            else:
                failed.append(error)

        total = 6000
        for sequence in range(total):
            while True:
                try:
                    producer.produce(
                        "idem-failover", key=b"%d" % (sequence % 101), value=b"%d" % sequence,
                        on_delivery=on_delivery,
                    )  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            if sequence == total // 3:
                assert producer.flush(WAIT_S) == 0
                failing.kill(victim)
            time.sleep(0.0005)  # the rest goes on while the leader is gone
        producer.flush(WAIT_S)
        assert (len(acked), failed) == (total, []), failed[:3]
        records = confluent_consume(bootstrap, "idem-failover", 3, total)
        values = [int(m.value()) for m in records]
        assert sorted(values) == list(range(total))  # each once: no duplicate, none lost
        assert {(p, o) for p, o, _ in acked} == {(m.partition(), m.offset()) for m in records}
        for partition in range(3):
            mine = [
                int(m.value())
                for m in sorted(records, key=lambda m: m.offset())
                if m.partition() == partition
            ]
            assert mine == sorted(mine), partition
