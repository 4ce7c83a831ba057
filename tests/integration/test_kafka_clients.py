"""Kafka's own clients against a 3-node pykraft cluster (issue 15; decision 0011).

kafka-python, confluent-kafka (librdkafka), aiokafka and kcat talk to the PLAINTEXT
listeners that Metadata advertises, through Kafka's binary protocol. One cluster of
3 combined nodes (OS processes) serves the whole module. Producers here run with
idempotence off (test_idempotent_clients.py has the idempotent ones); admin clients and
raw requests at every served version are test_kafka_apis.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from client.protocol.kafka import decode_response, messages
from client.protocol.rpc import NATIVE_REQUEST_FIRST_BYTE
from tests.integration.kafka_support import (
    RECORDS,
    WAIT_S,
    _ask,
    _frame,
    _leader_address,
    _read_frame,
    confluent_consume,
    confluent_produce,
    create_topic,
    kafka_python_consume,
)

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")
aiokafka = pytest.importorskip("aiokafka")

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka import TopicPartition as CTopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "murmur2_partitions.json")
KCAT = shutil.which("kcat") or shutil.which("kafkacat")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("kafka-clients")
    with LocalCluster(str(root), combined=3) as running:
        running.start_all()
        yield running


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


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


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
        # The body's bytes sent anyway are never buffered: the node does not grow.
        rss_before = _rss_bytes(cluster.pid(cluster.broker_ids[0]))
        huge.sendall(struct.pack(">i", 200 * 1024 * 1024) + b"\x00\x03")
        with contextlib.suppress(OSError):  # the node closes as it reads the size
            for _ in range(64):
                huge.sendall(b"\x00" * (1 << 20))
        # Bytes sent after the node closed may come back as a reset: closed all the same.
        with contextlib.suppress(ConnectionResetError):
            assert _read_frame(huge) is None
        growth = _rss_bytes(cluster.pid(cluster.broker_ids[0])) - rss_before
        assert growth < 32 * 1024 * 1024, growth
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


def test_aiokafka_acks_all_produce_and_consume(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "aiokafka", 3)

    async def produce_then_consume() -> tuple[list[Any], list[Any]]:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
        )
        await producer.start()
        try:
            pending = [
                await producer.send("aiokafka", key=b"%d" % (i % 83), value=b"value-%d" % i)
                for i in range(RECORDS)
            ]
            acknowledged = await asyncio.wait_for(asyncio.gather(*pending), WAIT_S)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            assigned = [aiokafka.TopicPartition("aiokafka", p) for p in range(3)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            records: list[Any] = []
            deadline = time.monotonic() + WAIT_S
            while len(records) < RECORDS and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records.extend(batch)
            return list(acknowledged), records
        finally:
            await consumer.stop()

    acknowledged, records = asyncio.run(produce_then_consume())
    assert len(acknowledged) == RECORDS
    assert len(records) == RECORDS
    assert sorted(r.value for r in records) == sorted(b"value-%d" % i for i in range(RECORDS))
    for partition in range(3):
        sent = [int(r.value[6:]) for r in records if r.partition == partition]
        assert sent and sent == sorted(sent)  # in the order sent, per partition
        assert [r.offset for r in records if r.partition == partition] == list(range(len(sent)))
        acked = sorted(m.offset for m in acknowledged if m.partition == partition)
        assert acked == list(range(len(sent)))
