"""Transactions of a real client against a 3-node pykraft cluster (issue 17, item 2).

librdkafka's transactional producer (confluent-kafka): init_transactions finds the
coordinator (FindCoordinator key_type 1) and gets a producer id; an aborted then a
committed transaction over two partitions leave their records and their ABORT/COMMIT
markers in the logs, in that order, and a read_committed consumer returns only the
committed records; a second producer with the same transactional id fences the first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.local_cluster import LocalCluster
from client.protocol.kafka import messages
from tests.integration.kafka_support import _ask
from tests.integration.test_kafka_clients import FAILOVER_SETTINGS, WAIT_S, create_topic

confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer  # noqa: E402
from confluent_kafka import TopicPartition as CTopicPartition  # noqa: E402

TOPIC = "txn-out"
FIND_COORDINATOR = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("transactions")
    with LocalCluster(str(root), combined=3, **FAILOVER_SETTINGS) as running:
        running.start_all()
        create_topic(running.bootstrap_servers(), TOPIC, 2)
        yield running


def transactional_producer(bootstrap: str, transactional_id: str) -> Any:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60_000,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(WAIT_S)
    return producer


def read(bootstrap: str, isolation: str, until: int) -> list[tuple[int, bytes]]:
    """(partition, value) of every record up to the logs' end, as `isolation` sees them."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{isolation}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([CTopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(2)])
        found: list[tuple[int, bytes]] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + WAIT_S
        while len(at_end) < 2 or len(found) < until:
            assert time.monotonic() < deadline, (found, at_end)
            for message in consumer.consume(num_messages=100, timeout=1):
                error = message.error()
                if error is not None and error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                assert error is None, error
                found.append((message.partition(), message.value()))
            if len(at_end) == 2 and len(found) >= until:
                break
            if len(at_end) == 2:
                at_end.clear()  # the end moved (a marker or a record arrived): read on
        return found
    finally:
        consumer.close()


def test_abort_then_commit_over_two_partitions_and_read_committed(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    producer = transactional_producer(bootstrap, "txn-client-1")
    producer.begin_transaction()
    for partition in (0, 1):
        producer.produce(TOPIC, value=f"aborted-{partition}".encode(), partition=partition)
    producer.flush(WAIT_S)
    producer.abort_transaction(WAIT_S)
    producer.begin_transaction()
    for partition in (0, 1):
        producer.produce(TOPIC, value=f"committed-{partition}".encode(), partition=partition)
    producer.commit_transaction(WAIT_S)

    everything = read(bootstrap, "read_uncommitted", 4)
    assert sorted(everything) == sorted(
        [(p, f"{kind}-{p}".encode()) for p in (0, 1) for kind in ("aborted", "committed")]
    )
    per_partition = [[v for p, v in everything if p == partition] for partition in (0, 1)]
    assert per_partition == [[b"aborted-0", b"committed-0"], [b"aborted-1", b"committed-1"]]
    committed = read(bootstrap, "read_committed", 2)
    assert sorted(committed) == [(0, b"committed-0"), (1, b"committed-1")]


def test_a_second_producer_with_the_same_id_fences_the_first(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    first = transactional_producer(bootstrap, "txn-client-fenced")
    first.begin_transaction()
    first.produce(TOPIC, value=b"zombie", partition=0)
    first.flush(WAIT_S)
    second = transactional_producer(bootstrap, "txn-client-fenced")  # aborts the open one
    second.begin_transaction()
    second.produce(TOPIC, value=b"successor", partition=1)
    second.commit_transaction(WAIT_S)
    with pytest.raises(KafkaException) as fenced:
        first.commit_transaction(WAIT_S)
    error = fenced.value.args[0]
    assert error.fatal(), error
    assert error.code() in (
        confluent_kafka.KafkaError._FENCED,
        confluent_kafka.KafkaError.PRODUCER_FENCED,
        confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH,
    ), error


def test_offsets_sent_to_a_transaction_are_committed_with_it_or_not_at_all(
    cluster: LocalCluster,
) -> None:
    """Consume-transform-produce: the input offsets are the group's only once the
    transaction that carries them commits; an aborted one leaves them as they were."""
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "txn-in", 1)
    plain = Producer({"bootstrap.servers": bootstrap})
    for i in range(6):
        plain.produce("txn-in", value=f"in-{i}".encode(), partition=0)
    assert plain.flush(WAIT_S) == 0
    group = "ctp-group"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    producer = transactional_producer(bootstrap, "txn-client-ctp")
    source = CTopicPartition("txn-in", 0)
    try:
        consumer.assign([CTopicPartition("txn-in", 0, OFFSET_BEGINNING)])
        seen: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while len(seen) < 6:
            assert time.monotonic() < deadline, seen
            seen.extend(m for m in consumer.consume(num_messages=6, timeout=1) if not m.error())

        def transform(upto: int, commit: bool) -> None:
            producer.begin_transaction()
            producer.produce(TOPIC, value=f"out-{upto}".encode(), partition=0)
            offsets = [CTopicPartition("txn-in", 0, upto)]
            producer.send_offsets_to_transaction(
                offsets, consumer.consumer_group_metadata(), WAIT_S
            )
            if commit:
                producer.commit_transaction(WAIT_S)
            else:
                producer.abort_transaction(WAIT_S)

        def committed() -> int:
            # read_committed: librdkafka asks require_stable, and retries while the
            # transaction's markers are on their way (UNSTABLE_OFFSET_COMMIT).
            (found,) = consumer.committed([source], timeout=WAIT_S)
            return int(found.offset)

        transform(3, commit=True)
        assert committed() == 3
        transform(5, commit=False)
        assert committed() == 3  # the aborted transaction's offsets were dropped
        transform(6, commit=True)
        assert committed() == 6
    finally:
        consumer.close()


def coordinator_of(cluster: LocalCluster, transactional_id: str, alive: list[int]) -> int:
    """The node FindCoordinator (key_type 1) names, asked of a live node until it names
    a live one."""
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, f"no coordinator of {transactional_id!r}"
        address = cluster.address(alive[0], "PLAINTEXT")
        request = messages.FindCoordinatorRequest(key=transactional_id, key_type=1)
        answer = _ask(address, FIND_COORDINATOR, 3, request)
        if answer.error_code == 0 and answer.node_id in alive:
            return int(answer.node_id)
        time.sleep(0.1)


@pytest.mark.lab
def test_a_transaction_survives_a_sigkill_of_its_coordinator(tmp_path: Any) -> None:
    """librdkafka mid-transaction, its coordinator's broker SIGKILLed: the new
    coordinator has the open transaction (loaded from __transaction_state), the client
    finds it and commits, and read_committed sees every record of the transaction."""
    with LocalCluster(str(tmp_path), combined=3, **FAILOVER_SETTINGS) as running:
        running.start_all()
        bootstrap = running.bootstrap_servers()
        create_topic(bootstrap, TOPIC, 2)
        tid = "txn-client-failover"
        producer = transactional_producer(bootstrap, tid)
        producer.begin_transaction()
        for i in range(10):
            producer.produce(TOPIC, value=f"kept-{i}".encode(), partition=i % 2)
        assert producer.flush(WAIT_S) == 0
        victim = coordinator_of(running, tid, running.broker_ids)
        running.kill(victim)
        alive = [n for n in running.broker_ids if n != victim]
        successor = coordinator_of(running, tid, alive)
        assert successor != victim
        producer.commit_transaction(WAIT_S)
        survivors = ",".join(
            f"{h}:{p}" for h, p in (running.address(n, "PLAINTEXT") for n in alive)
        )
        committed = read(survivors, "read_committed", 10)
        assert sorted(v for _, v in committed) == sorted(f"kept-{i}".encode() for i in range(10))
