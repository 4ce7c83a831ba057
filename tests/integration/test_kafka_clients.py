"""Kafka's own clients against a 3-node pykraft cluster (issue 15; decision 0011).

kafka-python, confluent-kafka (librdkafka), aiokafka and kcat talk to the PLAINTEXT
listeners that Metadata advertises, through Kafka's binary protocol. One cluster of
3 combined nodes (OS processes) serves the whole module. Producers run with
idempotence off: InitProducerId is not built yet, so it is not advertised.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.cluster_plan import free_ports
from broker.local_cluster import LocalCluster
from client.partitioner import partition_for_key
from client.protocol.kafka import decode_response, encode_request, messages
from client.protocol.rpc import NATIVE_REQUEST_FIRST_BYTE
from storage.records import RecordInput, build_batch, iter_records

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")
aiokafka = pytest.importorskip("aiokafka")

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer  # noqa: E402
from confluent_kafka import TopicPartition as CTopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

RECORDS = 10_000
WAIT_S = 120  # wide: other machines are slower, and this one is shared
DATA = os.path.join(os.path.dirname(__file__), "..", "data", "murmur2_partitions.json")
KCAT = shutil.which("kcat") or shutil.which("kafkacat")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("kafka-clients")
    with LocalCluster(str(root), combined=3) as running:
        running.start_all()
        yield running


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


def test_metadata_from_each_client(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    advertised = {node_id: cluster.address(node_id, "PLAINTEXT") for node_id in cluster.broker_ids}
    create_topic(bootstrap, "meta", 3)

    # confluent-kafka (librdkafka)
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    assert {b.id: (b.host, b.port) for b in metadata.brokers.values()} == advertised
    assert metadata.controller_id in advertised
    meta = metadata.topics["meta"]
    assert sorted(meta.partitions) == [0, 1, 2]
    assert all(len(p.replicas) == 3 and p.leader in advertised for p in meta.partitions.values())

    # kafka-python
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_cluster()
        assert described["cluster_id"] == cluster.cluster_id
        assert {(b["host"], b["port"]) for b in described["brokers"]} == set(advertised.values())
        (topic,) = admin.describe_topics(["meta"])
        assert topic["error_code"] == 0 and len(topic["partitions"]) == 3
        assert all(p["leader_epoch"] >= 0 for p in topic["partitions"])
    finally:
        admin.close()

    # aiokafka (asyncio, in its own loop)
    async def aiokafka_metadata() -> tuple[set[int], set[int] | None]:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            assert "meta" in await consumer.topics()
            metadata = await consumer._client.fetch_all_metadata()
            return {b.nodeId for b in metadata.brokers()}, metadata.partitions_for_topic("meta")
        finally:
            await consumer.stop()

    brokers, partitions = asyncio.run(aiokafka_metadata())
    assert brokers == set(advertised)
    assert partitions == {0, 1, 2}


def test_kafka_python_acks_all_produce_and_consume(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "kafka-python", 3)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    try:
        futures = [
            producer.send("kafka-python", key=b"%d" % (i % 97), value=b"value-%d" % i)
            for i in range(RECORDS)
        ]
        producer.flush(timeout=WAIT_S)
        offsets = [future.get(timeout=WAIT_S) for future in futures]
    finally:
        producer.close()
    assert len(offsets) == RECORDS
    records = kafka_python_consume(bootstrap, "kafka-python", 3, RECORDS)
    assert len(records) == RECORDS
    assert sorted(r.value for r in records) == sorted(b"value-%d" % i for i in range(RECORDS))
    for partition in range(3):
        sent = [int(r.value[6:]) for r in records if r.partition == partition]
        assert sent == sorted(sent)  # in order per partition
        got = [r.offset for r in records if r.partition == partition]
        assert got == list(range(len(got)))


def test_confluent_kafka_acks_all_produce_and_consume(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "confluent", 3)
    items = [(b"%d" % (i % 89), b"value-%d" % i) for i in range(RECORDS)]
    confluent_produce(bootstrap, "confluent", items)
    records = confluent_consume(bootstrap, "confluent", 3, RECORDS)
    assert len(records) == RECORDS
    assert sorted(m.value() for m in records) == sorted(v for _, v in items)
    # Read back by the other client too.
    assert len(kafka_python_consume(bootstrap, "confluent", 3, RECORDS)) == RECORDS


def test_keyed_records_land_where_kafkas_partitioner_puts_them(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    partitions = 6
    create_topic(bootstrap, "keyed", partitions)
    with open(DATA, encoding="utf-8") as file:
        keys = [bytes.fromhex(k["key_hex"]) for k in json.load(file)["keys"]]
    keys = [k for k in keys if k] + [b"key-%d" % i for i in range(200)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    try:
        for key in keys:
            producer.send("keyed", key=key, value=b"kafka-python")
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()
    confluent_produce(bootstrap, "keyed", [(key, b"confluent") for key in keys])
    records = kafka_python_consume(bootstrap, "keyed", partitions, 2 * len(keys))
    assert len(records) == 2 * len(keys)
    for record in records:
        assert record.partition == partition_for_key(record.key, partitions), record


@pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)")
def test_kcat_list_produce_consume(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "kcat", 1)
    assert KCAT is not None

    def kcat(*args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            [KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True, timeout=WAIT_S
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    listing = json.loads(kcat("-L", "-J"))
    assert sorted(b["id"] for b in listing["brokers"]) == cluster.broker_ids
    (topic,) = [t for t in listing["topics"] if t["topic"] == "kcat"]
    assert len(topic["partitions"]) == 1

    lines = [f"line-{i}" for i in range(100)]
    kcat("-P", "-t", "kcat", stdin="\n".join(lines).encode() + b"\n")
    assert kcat("-C", "-t", "kcat", "-o", "beginning", "-e").splitlines() == lines

    # -C without -e: a long-polling consumer that prints what arrives, then is stopped.
    with subprocess.Popen(
        [KCAT, "-b", bootstrap, "-C", "-t", "kcat", "-o", "beginning", "-c", "101"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as follower:
        try:
            kcat("-P", "-t", "kcat", stdin=b"late\n")
            out, _ = follower.communicate(timeout=WAIT_S)
        finally:
            if follower.poll() is None:
                follower.kill()
    assert out.decode().splitlines() == [*lines, "late"]


def test_list_offsets_by_timestamp(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "by-time", 1)
    base_ms = 1_700_000_000_000
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    try:
        for i in range(100):
            producer.send("by-time", value=b"%d" % i, timestamp_ms=base_ms + 1000 * i)
            if i % 10 == 9:
                producer.flush(timeout=WAIT_S)  # several batches
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition("by-time", 0)
        found = consumer.offsets_for_times(
            {partition: base_ms + 41_500}  # between the 42nd and 43rd record
        )[partition]
        assert (found.offset, found.timestamp) == (42, base_ms + 42_000)
        assert consumer.offsets_for_times({partition: base_ms + 10**9})[partition] is None
        assert consumer.beginning_offsets([partition])[partition] == 0
        assert consumer.end_offsets([partition])[partition] == 100
    finally:
        consumer.close()


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


def test_a_malformed_kafka_frame_closes_only_its_connection(cluster: LocalCluster) -> None:
    host, port = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    api_versions = _frame(18, 3, messages.ApiVersionsRequest(client_software_name="raw"))
    with (
        socket.create_connection((host, port), timeout=30) as good,
        socket.create_connection((host, port), timeout=30) as bad,
        socket.create_connection((host, port), timeout=30) as huge,
        socket.create_connection((host, port), timeout=30) as newer,
    ):
        good.sendall(api_versions)
        assert _read_frame(good) is not None
        # A Metadata v12 frame whose body is cut short.
        metadata = _frame(3, 12, messages.MetadataRequest(topics=None))
        bad.sendall(struct.pack(">i", 10) + metadata[4:14])
        assert _read_frame(bad) is None
        # A size over socket.request.max.bytes (100 MiB): refused before any body.
        huge.sendall(struct.pack(">i", 200 * 1024 * 1024) + b"\x00\x03")
        assert _read_frame(huge) is None
        # ApiVersions of a version the broker does not know: a v0 answer with
        # UNSUPPORTED_VERSION and the ranges it serves.
        unknown = bytearray(api_versions)
        struct.pack_into(">h", unknown, 6, 99)
        newer.sendall(bytes(unknown))
        body = _read_frame(newer)
        assert body is not None
        _, answer = decode_response(body, 18, 0)
        assert answer.error_code == 35
        assert {k.api_key: (k.min_version, k.max_version) for k in answer.api_keys}[0] == (0, 9)
        # v4: the codec reads it, but it is not served: the same v0 answer.
        v4 = bytearray(api_versions)
        struct.pack_into(">h", v4, 6, 4)
        newer.sendall(bytes(v4))
        body = _read_frame(newer)
        assert body is not None and decode_response(body, 18, 0)[1].error_code == 35
        # The first connection is still served, and pipelined answers come in order.
        good.sendall(b"".join(_frame(18, 3, messages.ApiVersionsRequest(), c) for c in range(5)))
        for correlation_id in range(5):
            body = _read_frame(good)
            assert body is not None
            header, answer = decode_response(body, 18, 3)
            assert header.correlation_id == correlation_id and answer.error_code == 0
    assert metadata[4] != NATIVE_REQUEST_FIRST_BYTE  # what the listener sniffs


def test_pykraft_server_default_then_kcat_list(tmp_path: Any) -> None:
    """The embedded default (one combined node) answers Kafka's clients at once."""
    broker_port, controller_port = free_ports(2)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(broker_port),
            "--controller-port",
            str(controller_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + WAIT_S
        said = []
        for line in server.stdout:
            said.append(line)
            if b"ready" in line:
                break
            assert time.monotonic() < deadline
        assert said and b"ready" in said[-1], b"".join(said).decode()  # not exited first
        bootstrap = f"127.0.0.1:{broker_port}"
        if KCAT is not None:
            done = subprocess.run(
                [KCAT, "-b", bootstrap, "-L"], capture_output=True, timeout=WAIT_S
            )
            assert done.returncode == 0, done.stderr.decode()
            assert f"broker 1 at {bootstrap}" in done.stdout.decode()
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
        assert list(metadata.brokers) == [1]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _ask(address: tuple[str, int], api_key: int, version: int, request: Any) -> Any:
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(_frame(api_key, version, request))
        body = _read_frame(sock)
    assert body is not None, (api_key, version)
    return decode_response(body, api_key, version)[1]


def test_every_served_version_of_every_api(cluster: LocalCluster) -> None:
    """Raw requests at each version advertised: the version-dependent fields are right."""
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "versions", 1)
    any_broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    M = messages
    Topic = M.MetadataRequest.MetadataRequestTopic
    for version in range(13):
        answer = _ask(any_broker, 3, version, M.MetadataRequest(topics=(Topic(name="versions"),)))
        (topic,) = answer.topics
        (part,) = topic.partitions
        assert (topic.error_code, topic.name, part.error_code) == (0, "versions", 0), version
        assert len(answer.brokers) == 3 and len(part.replica_nodes) == 3
        assert (topic.topic_id.int != 0) == (version >= 10)
        assert (part.leader_epoch >= 0) == (version >= 7)
        assert (answer.cluster_id == cluster.cluster_id) == (version >= 2)
        assert (answer.controller_id in cluster.broker_ids) == (version >= 1)
        leader = cluster.address(part.leader_id, "PLAINTEXT")
        leader_epoch = part.leader_epoch
    # Produce v3-9 to the leader: each appends one batch of one record.
    P = M.ProduceRequest
    for count, version in enumerate(range(3, 10)):
        batch = build_batch([RecordInput(timestamp=1_000 + version, value=b"v%d" % version)])
        answer = _ask(
            leader,
            0,
            version,
            P(
                acks=-1,
                timeout_ms=30_000,
                topic_data=(
                    P.TopicProduceData(
                        name="versions",
                        partition_data=(P.PartitionProduceData(index=0, records=batch),),
                    ),
                ),
            ),
        )
        (result,) = answer.responses[0].partition_responses
        assert (result.error_code, result.base_offset) == (0, count), version
    F = M.FetchRequest
    for version in range(4, 13):
        answer = _ask(
            leader,
            1,
            version,
            F(
                replica_id=-1,
                max_wait_ms=100,
                min_bytes=1,
                max_bytes=1 << 20,
                topics=(
                    F.FetchTopic(
                        topic="versions",
                        partitions=(
                            F.FetchPartition(
                                partition=0, fetch_offset=0, partition_max_bytes=1 << 20
                            ),
                        ),
                    ),
                ),
            ),
        )
        (data,) = answer.responses[0].partitions
        assert (data.error_code, data.high_watermark, data.last_stable_offset) == (0, 7, 7)
        assert data.log_start_offset == (0 if version >= 5 else -1)
        assert [r.value for r in iter_records(data.records)][:1] == [b"v3"], version
    L = M.ListOffsetsRequest
    for version in range(1, 8):
        specs = [(-2, 0), (-1, 7), (1_005, 2)] + ([(-3, None)] if version >= 7 else [])
        answer = _ask(
            leader,
            2,
            version,
            L(
                replica_id=-1,
                topics=(
                    L.ListOffsetsTopic(
                        name="versions",
                        partitions=tuple(
                            L.ListOffsetsPartition(partition_index=0, timestamp=t) for t, _ in specs
                        ),
                    ),
                ),
            ),
        )
        got = [(p.error_code, p.offset) for p in answer.topics[0].partitions]
        expected = [(0, o) if o is not None else (35, -1) for _, o in specs]
        assert got == expected, version
    OE = M.OffsetForLeaderEpochRequest
    for version in range(2, 5):
        answer = _ask(
            leader,
            23,
            version,
            OE(
                replica_id=-1,
                topics=(
                    OE.OffsetForLeaderTopic(
                        topic="versions",
                        partitions=(
                            OE.OffsetForLeaderPartition(
                                partition=0,
                                current_leader_epoch=leader_epoch,
                                leader_epoch=leader_epoch,
                            ),
                        ),
                    ),
                ),
            ),
        )
        (result,) = answer.topics[0].partitions
        assert (result.error_code, result.leader_epoch, result.end_offset) == (
            0,
            leader_epoch,
            7,
        ), version
    for version in range(2):
        answer = _ask(any_broker, 60, version, M.DescribeClusterRequest())
        assert answer.error_code == 0 and answer.cluster_id == cluster.cluster_id
        assert sorted(b.broker_id for b in answer.brokers) == cluster.broker_ids
    D = M.DeleteRecordsRequest
    for version in range(3):
        answer = _ask(
            leader,
            21,
            version,
            D(
                timeout_ms=30_000,
                topics=(
                    D.DeleteRecordsTopic(
                        name="versions",
                        partitions=(
                            D.DeleteRecordsPartition(partition_index=0, offset=version + 1),
                        ),
                    ),
                ),
            ),
        )
        (result,) = answer.topics[0].partitions
        assert (result.error_code, result.low_watermark) == (0, version + 1)
    C = M.CreateTopicsRequest
    for version in range(2, 8):
        name = f"created-v{version}"
        answer = _ask(
            any_broker,
            19,
            version,
            C(
                timeout_ms=30_000,
                topics=(C.CreatableTopic(name=name, num_partitions=1, replication_factor=3),),
            ),
        )
        (result,) = answer.topics
        assert (result.name, result.error_code) == (name, 0), result
        assert (result.topic_id.int != 0) == (version >= 7)
        assert result.num_partitions == (1 if version >= 5 else -1)
    CP = M.CreatePartitionsRequest
    for version in range(4):
        answer = _ask(
            any_broker,
            37,
            version,
            CP(
                timeout_ms=30_000,
                topics=(CP.CreatePartitionsTopic(name=f"created-v{version + 2}", count=2),),
            ),
        )
        assert [r.error_code for r in answer.results] == [0], answer
    DT = M.DeleteTopicsRequest
    for version in range(1, 7):
        name = f"created-v{version + 1}"
        request = (
            DT(timeout_ms=30_000, topics=(DT.DeleteTopicState(name=name),))
            if version >= 6
            else DT(timeout_ms=30_000, topic_names=(name,))
        )
        answer = _ask(any_broker, 20, version, request)
        assert [(r.name, r.error_code) for r in answer.responses] == [(name, 0)], answer

    IA = M.IncrementalAlterConfigsRequest
    for version in range(2):
        answer = _ask(
            any_broker,
            44,
            version,
            IA(
                resources=(
                    IA.AlterConfigsResource(
                        resource_type=2,
                        resource_name="versions",
                        configs=(
                            IA.AlterableConfig(
                                name="retention.ms", config_operation=0, value="60000"
                            ),
                        ),
                    ),
                    IA.AlterConfigsResource(
                        resource_type=2,
                        resource_name="versions",
                        configs=(IA.AlterableConfig(name="no.such.config", value="1"),),
                    ),
                    IA.AlterConfigsResource(resource_type=8, resource_name="1"),  # broker logger
                )
            ),
        )
        assert [r.error_code for r in answer.responses] == [0, 40, 42], answer
    DQ = M.DescribeQuorumRequest
    for version in range(2):
        answer = _ask(
            any_broker,
            55,
            version,
            DQ(
                topics=(
                    DQ.TopicData(
                        topic_name="__cluster_metadata",
                        partitions=(DQ.PartitionData(partition_index=0),),
                    ),
                )
            ),
        )
        (quorum,) = answer.topics[0].partitions
        assert quorum.error_code == 0 and quorum.leader_id in cluster.controller_ids
        assert sorted(v.replica_id for v in quorum.current_voters) == cluster.controller_ids
        assert quorum.high_watermark > 0
        assert all((v.last_fetch_timestamp != -1) == (version >= 1) for v in quorum.current_voters)


def test_acks_0_and_a_fetch_naming_a_partition_twice(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "acks0", 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=0, enable_idempotence=False)
    try:
        for i in range(100):
            producer.send("acks0", value=b"%d" % i)
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()
    records = kafka_python_consume(bootstrap, "acks0", 1, 100)
    assert [r.value for r in records] == [b"%d" % i for i in range(100)]

    F = messages.FetchRequest
    twice = F.FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20)
    request = F(
        replica_id=-1,
        max_wait_ms=0,
        max_bytes=1 << 20,
        topics=(F.FetchTopic(topic="acks0", partitions=(twice, twice)),),
    )
    answer = _ask(cluster.address(cluster.broker_ids[0], "PLAINTEXT"), 1, 12, request)
    assert answer.error_code == 42  # INVALID_REQUEST, for the whole fetch
    assert [p.error_code for p in answer.responses[0].partitions] == [42, 42]


FAILOVER_SETTINGS = {
    "election_timeout_ms": 500,
    "fetch_timeout_ms": 1000,
    "request_timeout_ms": 1000,
    "broker_session_timeout_ms": 3000,
    "broker_heartbeat_interval_ms": 300,
}


def test_confluent_producer_through_a_sigkilled_partition_leader(tmp_path: Any) -> None:
    """Every record librdkafka saw acknowledged (acks=all) is read back, in order per
    partition (one request in flight per connection, so retries keep the order)."""
    with LocalCluster(str(tmp_path), combined=3, **FAILOVER_SETTINGS) as failing:
        failing.start_all()
        bootstrap = failing.bootstrap_servers()
        create_topic(bootstrap, "failover", 3)
        host, port = failing.address(failing.broker_ids[0], "PLAINTEXT")
        Topic = messages.MetadataRequest.MetadataRequestTopic
        answer = _ask(
            (host, port), 3, 12, messages.MetadataRequest(topics=(Topic(name="failover"),))
        )
        victim = answer.topics[0].partitions[0].leader_id
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "max.in.flight.requests.per.connection": 1,
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
            producer.produce(
                "failover", key=b"%d" % (sequence % 101), value=b"%d" % sequence,
                on_delivery=on_delivery,
            )  # fmt: skip
            producer.poll(0)
            if sequence == total // 3:
                assert producer.flush(WAIT_S) == 0
                failing.kill(victim)
            time.sleep(0.0005)  # the rest goes on while the leader is gone
        producer.flush(WAIT_S)
        # Retried through the failover, not lost (message.timeout.ms is far off).
        assert (len(acked), failed) == (total, []), failed[:3]
        records = confluent_consume(bootstrap, "failover", 3, len(acked))
        read = {(m.partition(), int(m.value())) for m in records}
        assert {(p, s) for p, _, s in acked} <= read
        for partition in range(3):
            first_seen: list[int] = []
            seen: set[int] = set()
            for message in sorted(
                (m for m in records if m.partition() == partition), key=lambda m: m.offset()
            ):
                sequence = int(message.value())
                if sequence not in seen:
                    seen.add(sequence)
                    first_seen.append(sequence)
            assert first_seen == sorted(first_seen), partition  # duplicates only, never reordered


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_batches_compressed_by_each_client_are_read_back_by_every_client(
    cluster: LocalCluster, codec: str
) -> None:
    """Issue 15 item 6: the broker stores batches as sent; each client reads them."""
    bootstrap = cluster.bootstrap_servers()
    topic = f"compressed-{codec}"
    create_topic(bootstrap, topic, 2)
    items = [(b"k%d" % (i % 7), b"%s value %d " % (codec.encode(), i) * 4) for i in range(500)]
    confluent_produce(bootstrap, topic, items, compression=codec)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        compression_type=codec,
        linger_ms=5,
    )
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()
    wanted = sorted(v for _, v in items) * 2
    assert sorted(m.value() for m in confluent_consume(bootstrap, topic, 2, 1000)) == sorted(wanted)
    assert sorted(r.value for r in kafka_python_consume(bootstrap, topic, 2, 1000)) == sorted(
        wanted
    )
    # And pykraft's own consumer (native protocol, same stored batches).
    from client.sync import Consumer as PykraftConsumer

    with PykraftConsumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in range(2)])
        got: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while len(got) < 1000 and time.monotonic() < deadline:
            got += [r.value or b"" for r in consumer.poll(timeout_s=1)]
    assert sorted(got) == sorted(wanted)


def test_describe_configs_from_each_admin_client(cluster: LocalCluster) -> None:
    """DescribeConfigs: what was set, and Kafka's defaults for the rest."""
    from confluent_kafka.admin import ConfigResource
    from kafka.admin import ConfigResource as KafkaConfigResource
    from kafka.admin import ConfigResourceType

    bootstrap = cluster.bootstrap_servers()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        answer = admin.create_topics(
            [NewTopic("configured", 1, 3, topic_configs={"retention.ms": "3600000"})]
        )
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
        # Each broker answers DescribeConfigs from its own image: wait until all have it.
        deadline = time.monotonic() + WAIT_S
        for address in bootstrap.split(","):
            host, port = address.split(":")
            while not _has_leaders(host, int(port), "configured", 1):
                assert time.monotonic() < deadline, f"configured is not known on {address}"
                time.sleep(0.1)
        described = admin.describe_configs(
            [KafkaConfigResource(ConfigResourceType.TOPIC, "configured")], config_filter="all"
        )
        (entries,) = next(iter(described.values())).values()
        assert entries["retention.ms"]["value"] == "3600000", entries
        assert entries["cleanup.policy"]["value"] == "delete"  # a default
        assert entries["min.insync.replicas"]["value"] == "1"
    finally:
        admin.close()
    confluent = AdminClient({"bootstrap.servers": bootstrap})
    futures = confluent.describe_configs([ConfigResource("topic", "configured")])
    (configs,) = [future.result(timeout=WAIT_S) for future in futures.values()]
    assert configs["retention.ms"].value == "3600000" and not configs["retention.ms"].is_default
    assert configs["segment.bytes"].value == "1073741824" and configs["segment.bytes"].is_default
    missing = confluent.describe_configs([ConfigResource("topic", "no-such-topic")])
    with pytest.raises(confluent_kafka.KafkaException):
        next(iter(missing.values())).result(timeout=WAIT_S)


def _wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_elect_leaders_from_confluent_kafka_and_raw_requests(cluster: LocalCluster) -> None:
    """ElectLeaders v0-2, per partition. Leaders start as their preferred replicas, so
    a preferred election is not needed, nor an unclean one where a leader leads (the
    elections themselves are tests/kraft/test_elections.py's, on the controller)."""
    from confluent_kafka import ElectionType

    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "elect", 3)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    asked = [CTopicPartition("elect", p) for p in range(3)] + [CTopicPartition("elect", 9)]
    for election in (ElectionType.PREFERRED, ElectionType.UNCLEAN):
        found = admin.elect_leaders(election, asked).result(timeout=WAIT_S)
        codes = {
            tp.partition: None if error is None else error.code() for tp, error in found.items()
        }
        assert codes == {0: 84, 1: 84, 2: 84, 9: 3}, (election, codes)  # 84 NOT_NEEDED
    # Every partition: the ones needing no election are left out.
    assert admin.elect_leaders(ElectionType.PREFERRED, None).result(timeout=WAIT_S) == {}

    M = messages
    Request = M.ElectLeadersRequest
    asked_raw = (Request.TopicPartitions(topic="elect", partitions=(0, 2)),)
    broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    for version in range(3):
        answer = _ask(broker, 43, version, Request(topic_partitions=asked_raw, timeout_ms=30_000))
        assert answer.error_code == 0
        ((topic, results),) = [
            (r.topic, r.partition_result) for r in answer.replica_election_results
        ]
        assert topic == "elect"
        assert [(r.partition_id, r.error_code) for r in results] == [(0, 84), (2, 84)], version
    refused = _ask(broker, 43, 2, Request(election_type=7, topic_partitions=asked_raw))
    assert refused.error_code == 42  # INVALID_REQUEST: no such election type


def test_alter_configs_replaces_the_dynamic_set(cluster: LocalCluster) -> None:
    """Legacy AlterConfigs v0-2: the configs given become the resource's whole dynamic
    set (every other one returns to its default), or are only checked (validate_only)."""
    from kafka.admin import ConfigResource as KafkaConfigResource
    from kafka.admin import ConfigResourceType

    bootstrap = cluster.bootstrap_servers()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    M = messages
    Request = M.AlterConfigsRequest

    def described() -> dict[str, str]:
        answer = _ask(
            broker,
            32,
            4,
            M.DescribeConfigsRequest(
                resources=(
                    M.DescribeConfigsRequest.DescribeConfigsResource(
                        resource_type=2, resource_name="altered", configuration_keys=None
                    ),
                )
            ),
        )
        (result,) = answer.results
        assert result.error_code == 0, result
        return {c.name: c.value for c in result.configs if c.config_source == 1}  # dynamic

    def alter(version: int, configs: dict[str, str], validate_only: bool = False) -> Any:
        entries = tuple(Request.AlterableConfig(name=k, value=v) for k, v in configs.items())
        resource = Request.AlterConfigsResource(
            resource_type=2, resource_name="altered", configs=entries
        )
        answer = _ask(
            broker, 33, version, Request(resources=(resource,), validate_only=validate_only)
        )
        (response,) = answer.responses
        return response

    try:
        answer = admin.create_topics(
            [
                NewTopic(
                    "altered",
                    1,
                    3,
                    topic_configs={"retention.ms": "3600000", "max.message.bytes": "2000000"},
                )
            ]
        )
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
        wanted = {"retention.ms": "3600000", "max.message.bytes": "2000000"}
        _wait_until(lambda: _has_leaders(*broker, "altered", 1), "no topic altered")
        _wait_until(lambda: described() == wanted, "created configs not described")
        # Only checked: nothing changes.
        assert alter(0, {"retention.ms": "1000"}, validate_only=True).error_code == 0
        # A bad value refuses the whole resource.
        refused = alter(1, {"retention.ms": "7200000", "max.message.bytes": "lots"})
        assert refused.error_code == 40 and refused.error_message, refused  # INVALID_CONFIG
        assert described() == wanted
        # Only retention.ms given: max.message.bytes goes back to its default.
        assert alter(2, {"retention.ms": "7200000"}).error_code == 0
        _wait_until(lambda: described() == {"retention.ms": "7200000"}, "not replaced")
        # kafka-python forced onto AlterConfigs.
        result = admin.alter_configs(
            [
                KafkaConfigResource(
                    ConfigResourceType.TOPIC, "altered", configs={"segment.bytes": "1048576"}
                )
            ],
            incremental=False,
        )
        assert "altered" in str(result) and "Error" not in str(result), result
        _wait_until(lambda: described().get("segment.bytes") == "1048576", "kafka-python's set")
    finally:
        admin.close()


def test_list_offsets_max_timestamp(cluster: LocalCluster) -> None:
    """ListOffsets -3 (KIP-734, v7): the first record with the largest timestamp, found
    from the segments' maxima; before v7 it is refused per partition."""
    from confluent_kafka.admin import OffsetSpec

    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "max-time", 1)
    base_ms = 1_700_000_000_000
    largest = {37, 80}  # a tie: the first one is the answer
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    try:
        for i in range(100):
            stamp = base_ms + (10**7 if i in largest else 1000 * i)
            producer.send("max-time", value=b"%d" % i, timestamp_ms=stamp)
            if i % 10 == 9:
                producer.flush(timeout=WAIT_S)  # several batches
    finally:
        producer.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partition = CTopicPartition("max-time", 0)
    futures = admin.list_offsets({partition: OffsetSpec.max_timestamp()})
    found = futures[partition].result(timeout=WAIT_S)
    assert (found.offset, found.timestamp) == (37, base_ms + 10**7)

    M = messages
    Request = M.ListOffsetsRequest
    asked = (
        Request.ListOffsetsTopic(
            name="max-time",
            partitions=(Request.ListOffsetsPartition(partition_index=0, timestamp=-3),),
        ),
    )
    leader = _leader_address(cluster, "max-time")
    for version, wanted in ((7, (0, 37, base_ms + 10**7)), (6, (35, -1, -1))):
        answer = _ask(leader, 2, version, Request(replica_id=-1, topics=asked))
        (part,) = answer.topics[0].partitions
        assert (part.error_code, part.offset, part.timestamp) == wanted, version


def _leader_address(cluster: LocalCluster, topic: str) -> tuple[str, int]:
    Topic = messages.MetadataRequest.MetadataRequestTopic
    any_broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    answer = _ask(any_broker, 3, 12, messages.MetadataRequest(topics=(Topic(name=topic),)))
    return cluster.address(answer.topics[0].partitions[0].leader_id, "PLAINTEXT")
