"""read_committed with real clients against pykraft (issue 17, item 3).

librdkafka's transactional producer writes an aborted transaction, a committed one,
and leaves a third open. kcat (read_committed, to the end: the last stable offset)
and a kafka-python read_committed consumer see only the committed records;
kafka-python read_uncommitted sees every record, and so does pykraft's consumer in
each mode; ListOffsets' latest is the LSO for
read_committed and the high-water mark otherwise. A broker SIGKILLed with a
transaction open restarts with the LSO still held at the transaction's start, and
the producer's commit after the restart releases it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.local_cluster import LocalCluster
from tests.integration.test_kafka_clients import FAILOVER_SETTINGS, WAIT_S, create_topic

confluent_kafka = pytest.importorskip("confluent_kafka")
kafka = pytest.importorskip("kafka")

from confluent_kafka import Producer  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402

TOPIC = "rc-out"


def transactional_producer(bootstrap: str, transactional_id: str) -> Any:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 120_000,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(WAIT_S)
    return producer


def write(producer: Any, values: list[bytes], *, end: str | None) -> None:
    producer.begin_transaction()
    for value in values:
        producer.produce(TOPIC, value=value, partition=0)
    producer.flush(WAIT_S)
    if end == "commit":
        producer.commit_transaction(WAIT_S)
    elif end == "abort":
        producer.abort_transaction(WAIT_S)


def kafka_python_read(bootstrap: str, isolation: str, count: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        consumer_timeout_ms=5_000,
    )
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while len(values) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                values.extend(record.value for record in batch)
        # A little longer: nothing more may come (an aborted record would show here).
        for batch in consumer.poll(timeout_ms=2000).values():
            values.extend(record.value for record in batch)
        return values
    finally:
        consumer.close()


def pykraft_read(bootstrap: str, isolation: str) -> list[bytes]:
    """pykraft's own consumer, from the beginning to the end it is given (the LSO for
    read_committed: ListOffsets latest)."""
    from client.sync import Consumer as BlockingConsumer

    with BlockingConsumer(
        bootstrap, auto_offset_reset="earliest", isolation_level=isolation
    ) as consumer:
        tp = (TOPIC, 0)
        consumer.assign([tp])
        end = consumer.list_offsets({tp: -1})[tp]
        values: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while consumer.position(tp) < end and time.monotonic() < deadline:
            values.extend(r.value or b"" for r in consumer.poll(1.0))
        return values


def end_offset(bootstrap: str, isolation: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
    try:
        tp = TopicPartition(TOPIC, 0)
        return int(consumer.end_offsets([tp])[tp])
    finally:
        consumer.close()


def kcat_read_committed(bootstrap: str) -> list[bytes]:
    done = subprocess.run(
        [
            "kcat",
            "-C",
            "-b",
            bootstrap,
            "-t",
            TOPIC,
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-X",
            "isolation.level=read_committed",
            "-f",
            "%s\\n",
        ],
        capture_output=True,
        timeout=WAIT_S,
        check=True,
    )
    return [line for line in done.stdout.split(b"\n") if line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("read-committed")
    with LocalCluster(str(root), combined=1, **FAILOVER_SETTINGS) as running:
        running.start_all()
        create_topic(running.bootstrap_servers(), TOPIC, 1, factor=1)
        yield running


def test_read_committed_clients_see_only_committed_records(cluster: LocalCluster) -> None:
    if subprocess.run(["which", "kcat"], capture_output=True).returncode != 0:
        pytest.skip("kcat is not installed")
    bootstrap = cluster.bootstrap_servers()
    producer = transactional_producer(bootstrap, "rc-1")
    write(producer, [b"aborted-0", b"aborted-1"], end="abort")
    write(producer, [b"committed-0", b"committed-1"], end="commit")
    write(producer, [b"open-0"], end=None)
    try:
        committed = [b"committed-0", b"committed-1"]
        assert kcat_read_committed(bootstrap) == committed
        assert kafka_python_read(bootstrap, "read_committed", 2) == committed
        assert pykraft_read(bootstrap, "read_committed") == committed
        assert pykraft_read(bootstrap, "read_uncommitted") == [
            b"aborted-0",
            b"aborted-1",
            *committed,
            b"open-0",
        ]
        everything = kafka_python_read(bootstrap, "read_uncommitted", 5)
        assert everything == [b"aborted-0", b"aborted-1", *committed, b"open-0"]
        # aborted 0-1, ABORT 2, committed 3-4, COMMIT 5, open 6: the LSO is 6.
        assert end_offset(bootstrap, "read_committed") == 6
        assert end_offset(bootstrap, "read_uncommitted") == 7
        producer.commit_transaction(WAIT_S)
        assert end_offset(bootstrap, "read_committed") == 8
        assert kcat_read_committed(bootstrap) == [*committed, b"open-0"]
    finally:
        producer.flush(5)


@pytest.mark.lab
def test_a_broker_killed_mid_transaction_restarts_with_its_lso(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    before = end_offset(bootstrap, "read_uncommitted")
    assert end_offset(bootstrap, "read_committed") == before  # nothing open
    producer = transactional_producer(bootstrap, "rc-killed")
    write(producer, [b"held-0", b"held-1"], end=None)
    assert end_offset(bootstrap, "read_committed") == before
    (node,) = cluster.broker_ids
    cluster.kill(node)
    cluster.start(node)
    # The producer state came back from the log: the transaction still holds the LSO.
    deadline = time.monotonic() + WAIT_S
    while True:  # until the partition has its leader again
        try:
            high_watermark = end_offset(bootstrap, "read_uncommitted")
            break
        except kafka.errors.KafkaError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert high_watermark == before + 2
    assert end_offset(bootstrap, "read_committed") == before
    producer.commit_transaction(WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while end_offset(bootstrap, "read_committed") != before + 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert kcat_read_committed(bootstrap)[-2:] == [b"held-0", b"held-1"]
