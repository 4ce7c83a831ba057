"""`pykraft transactions list | describe` and `pykraft producers` against librdkafka's
transactional producer with a transaction open, then committed (issue 17, item 5)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from broker.local_cluster import LocalCluster
from client.cli import main as pykraft
from tests.integration.test_kafka_clients import FAILOVER_SETTINGS, WAIT_S, create_topic

confluent_kafka = pytest.importorskip("confluent_kafka")

TOPIC = "txn-cli"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("txn-cli")
    with LocalCluster(str(root), combined=1, **FAILOVER_SETTINGS) as running:
        running.start_all()
        create_topic(running.bootstrap_servers(), TOPIC, 2, factor=1)
        yield running


def cli(bootstrap: str, *args: str) -> str:
    out = io.StringIO()
    assert pykraft(["--bootstrap", bootstrap, *args], out=out) == 0, out.getvalue()
    return out.getvalue()


def test_open_and_committed_transactions_and_their_producers(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": "cli-writer", "linger.ms": 1}
    )
    producer.init_transactions(WAIT_S)
    producer.begin_transaction()
    for value in (b"a", b"b", b"c"):
        producer.produce(TOPIC, value=value, partition=1)
    assert producer.flush(WAIT_S) == 0

    listed = cli(bootstrap, "transactions", "list")
    (row,) = [line.split() for line in listed.splitlines() if line.startswith("cli-writer")]
    producer_id = int(row[1])
    assert row[2] == "Ongoing"
    described = cli(bootstrap, "transactions", "describe", "cli-writer")
    assert "State: Ongoing" in described and f"ProducerId: {producer_id}" in described
    assert f"Partitions: {TOPIC}-1" in described
    rows = [line.split() for line in cli(bootstrap, "producers", TOPIC, "1").splitlines()[1:]]
    assert [(int(r[0]), int(r[2]), r[4]) for r in rows] == [(producer_id, 2, "0")]

    producer.commit_transaction(WAIT_S)
    assert "State: CompleteCommit" in cli(bootstrap, "transactions", "describe", "cli-writer")
    rows = [line.split() for line in cli(bootstrap, "producers", TOPIC, "1").splitlines()[1:]]
    assert [(int(r[0]), r[4]) for r in rows] == [(producer_id, "-")]  # no open transaction
    assert cli(bootstrap, "producers", TOPIC, "0").splitlines()[1:] == []


def test_an_unknown_transactional_id_is_one_line_and_exit_1(cluster: LocalCluster) -> None:
    out = io.StringIO()
    code = pykraft(
        ["--bootstrap", cluster.bootstrap_servers(), "transactions", "describe", "nobody"],
        out=out,
    )
    assert code != 0
