"""The producer, consumer, admin and CLI against a 3-node cluster of real processes."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest
import trio

from broker.local_cluster import LocalCluster
from client import sync
from client.admin import Admin, NewTopic
from client.consumer import Consumer
from client.producer import Producer

SETTINGS = {
    "election_timeout_ms": 500,
    "fetch_timeout_ms": 1000,
    "request_timeout_ms": 1000,
    "broker_session_timeout_ms": 2000,
    "broker_heartbeat_interval_ms": 250,
}
RECORDS = 50_000
KEYS = 100


def check_per_key_order(values: list[bytes], acked: set[bytes]) -> int:
    """Every acked record is there; per key, first appearances in send order. Duplicates."""
    assert acked <= set(values), f"{len(acked - set(values))} acknowledged records are missing"
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for value in dict.fromkeys(values):
        key, seq = value.split(b":")
        by_key[key].append(int(seq))
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"key {key!r} out of order"
    return len(values) - len(set(values))


async def read_everything(bootstrap: str, topic: str, partitions: int, want: int) -> list[bytes]:
    found: list[bytes] = []
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in range(partitions)])
        with trio.fail_after(60):
            while len(found) < want:
                found += [r.value or b"" for r in await consumer.poll(1.0)]
    return found


@pytest.mark.slow
async def test_trio_producer_survives_a_leader_kill_and_the_consumer_reads_all(tmp_path) -> None:
    with LocalCluster(str(tmp_path), combined=3, **SETTINGS) as cluster:
        cluster.start_all()
        bootstrap = cluster.bootstrap_servers()
        async with Admin(bootstrap) as admin:
            await admin.create_topics([NewTopic("keyed", partitions=6, replication_factor=3)])
        acked: set[bytes] = set()
        with trio.fail_after(180):
            async with Producer(bootstrap, acks="all", max_in_flight=1, linger_ms=5) as producer:

                async def send_all() -> None:
                    pending = []
                    for seq in range(RECORDS):
                        key = b"k%d" % (seq % KEYS)
                        value = key + b":%d" % seq
                        pending.append((value, await producer.send("keyed", value, key=key)))
                        if len(pending) >= 2_000:
                            for v, delivery in pending:
                                await delivery  # raises if it was not delivered
                                acked.add(v)
                            pending.clear()
                    for v, delivery in pending:
                        await delivery
                        acked.add(v)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_all)
                    while len(acked) < RECORDS // 3:
                        await trio.sleep(0.01)
                    leader = producer.cluster.leader("keyed", 0)
                    assert leader is not None
                    cluster.kill(leader.leader)
                    killed = leader.leader
                    await trio.sleep(2.5)
                    cluster.start(killed)
            assert len(acked) == RECORDS
            assert producer.retries > 0  # the kill was felt, and retried through
            values = await read_everything(bootstrap, "keyed", 6, RECORDS)
        duplicates = check_per_key_order(values, acked)
        print(f"retries={producer.retries} duplicates={duplicates}")


@pytest.mark.slow
def test_the_blocking_facade_produces_and_consumes(tmp_path) -> None:
    with LocalCluster(str(tmp_path), combined=3, **SETTINGS) as cluster:
        cluster.start_all()
        bootstrap = cluster.bootstrap_servers()
        with sync.Admin(bootstrap) as admin:
            admin.create_topics([NewTopic("blocking", partitions=3, replication_factor=3)])
            assert [t.name for t in admin.describe_topics(["blocking"])] == ["blocking"]
        items = [(b"k%d" % (s % KEYS), b"k%d:%d" % (s % KEYS, s)) for s in range(RECORDS)]
        with sync.Producer(bootstrap, acks="all", max_in_flight=1) as producer:
            futures = []
            for start in range(0, RECORDS, 5_000):
                futures += producer.send_many("blocking", items[start : start + 5_000])
                if start == RECORDS // 2:
                    # Wait for what was sent, then kill partition 0's leader mid-run.
                    futures[-1].result(timeout=30)
                    with sync.Admin(bootstrap) as admin:
                        topic = admin.describe_topics(["blocking"])[0]
                    victim = topic.partitions[0].leader
                    cluster.kill(victim)
            producer.flush()
            metadata = [f.result(timeout=60) for f in futures]
            cluster.start(victim)
        assert len({(m.partition, m.offset) for m in metadata}) == RECORDS
        found: list[bytes] = []
        with sync.Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([("blocking", p) for p in range(3)])
            while len(found) < RECORDS:
                found += [r.value or b"" for r in consumer.poll(1.0)]
        check_per_key_order(found, {v for _, v in items})


def pykraft(bootstrap: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "--bootstrap", bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_the_cli_end_to_end(tmp_path) -> None:
    with LocalCluster(str(tmp_path), combined=3, **SETTINGS) as cluster:
        cluster.start_all()
        bootstrap = cluster.bootstrap_servers()
        created = pykraft(
            bootstrap, "topic", "create", "lines", "--partitions", "2", "--replication-factor", "3"
        )
        assert created.returncode == 0, created.stderr
        lines = [f"line {n}" for n in range(25)]
        produced = pykraft(
            bootstrap, "produce", "lines", "--partition", "1", stdin="\n".join(lines) + "\n"
        )
        assert produced.returncode == 0, produced.stderr
        consumed = pykraft(
            bootstrap, "consume", "lines", "--from-beginning", "--max-messages", "25"
        )
        assert consumed.returncode == 0, consumed.stderr
        assert consumed.stdout.splitlines() == lines
        quorum = pykraft(bootstrap, "quorum", "describe")
        assert quorum.returncode == 0
        leader = int(quorum.stdout.splitlines()[0].split()[-1])
        assert leader in (1, 2, 3)
        described = pykraft(bootstrap, "topic", "describe", "lines")
        assert "PartitionCount: 2" in described.stdout and "Isr:" in described.stdout
        for args in (("consume", "missing"), ("topic", "delete", "missing")):
            failed = pykraft(bootstrap, *args)
            assert failed.returncode != 0
            assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
            assert "Traceback" not in failed.stderr
    unreachable = pykraft("127.0.0.1:1", "topic", "list")
    assert unreachable.returncode != 0 and len(unreachable.stderr.strip().splitlines()) == 1
