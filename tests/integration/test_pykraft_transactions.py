"""pykraft's own producer, idempotent and transactional, against a 3-node cluster (issue 17, item 4).

An aborted then a committed transaction over two partitions: a read_committed pykraft
consumer and kcat see only the committed records. A second producer with the same
transactional id fences the first, whose every later call raises. Offsets sent to a
transaction move the group's committed offset only when it commits, and the
consume-transform-produce pipe turns an input topic into an output one exactly once.
In the lab: an idempotent producer with 5 requests in flight across a SIGKILL of
the partition's leader writes every record once, in order.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import trio

from broker.local_cluster import LocalCluster
from client.consumer import Consumer
from client.producer import Producer
from client.transaction_manager import (
    ProducerFenced,
    TransactionFatal,
    consumer_group_metadata,
)
from client.transactional_pipe import run_pipe
from tests.integration.test_kafka_clients import FAILOVER_SETTINGS, WAIT_S, create_topic

OUT, IN = "ptxn-out", "ptxn-in"


def to_output(record: Any) -> list[tuple[bytes | None, bytes | None]]:
    return [(record.key, b"out-" + (record.value or b""))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("pykraft-transactions")
    with LocalCluster(str(root), combined=3, **FAILOVER_SETTINGS) as running:
        running.start_all()
        create_topic(running.bootstrap_servers(), OUT, 2)
        create_topic(running.bootstrap_servers(), IN, 1)
        yield running


async def read_all(bootstrap: str, topic: str, partitions: int, isolation: str) -> list[bytes]:
    """Every record up to the end offsets (the LSO for read_committed), in partition order."""
    async with Consumer(bootstrap, isolation_level=isolation) as consumer:
        tps = [(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = await consumer.list_offsets({tp: -1 for tp in tps})
        found: dict[tuple[str, int], list[bytes]] = {tp: [] for tp in tps}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for record in await consumer.poll(1.0):
                found[(record.topic, record.partition)].append(record.value or b"")
        return [value for tp in tps for value in found[tp]]


def kcat_read_committed(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    done = subprocess.run(
        [
            *("kcat", "-C", "-b", bootstrap, "-t", topic, "-p", str(partition)),
            *("-o", "beginning", "-e", "-q", "-X", "isolation.level=read_committed"),
            *("-f", "%s\\n"),
        ],
        capture_output=True,
        timeout=WAIT_S,
        check=True,
    )
    return [line for line in done.stdout.split(b"\n") if line]


async def test_abort_then_commit_only_the_committed_records_are_read(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    with trio.fail_after(WAIT_S):
        async with Producer(bootstrap, transactional_id="pykraft-tx-1") as producer:
            await producer.init_transactions()
            assert producer.transactions is not None
            first_epoch, epochs = producer.transactions.epoch, []
            for end, prefix in (("abort", b"aborted"), ("commit", b"committed")):
                producer.begin_transaction()
                deliveries = [
                    await producer.send(OUT, b"%s-%d" % (prefix, i), partition=i % 2)
                    for i in range(10)
                ]
                await producer.flush()
                assert all(d.done() for d in deliveries)
                if end == "abort":
                    await producer.abort_transaction()
                else:
                    await producer.commit_transaction()
                epochs.append(producer.transactions.epoch)
        committed = await read_all(bootstrap, OUT, 2, "read_committed")
        everything = await read_all(bootstrap, OUT, 2, "read_uncommitted")
    # KIP-890 part 2 (EndTxn v5): every end bumps the epoch, so a late request of one
    # transaction is fenced in the next.
    assert epochs == [first_epoch + 1, first_epoch + 2]
    expected = [b"committed-%d" % i for i in range(0, 10, 2)]
    expected += [b"committed-%d" % i for i in range(1, 10, 2)]
    assert committed == expected
    assert len(everything) == 20 and set(committed) < set(everything)
    if subprocess.run(["which", "kcat"], capture_output=True).returncode == 0:
        assert kcat_read_committed(bootstrap, OUT, 0) == expected[:5]


async def test_a_second_producer_with_the_same_id_fences_the_first(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    with trio.fail_after(WAIT_S):
        async with Producer(bootstrap, transactional_id="pykraft-tx-fence") as zombie:
            await zombie.init_transactions()
            zombie.begin_transaction()
            await (await zombie.send(OUT, b"zombie", partition=0))
            async with Producer(bootstrap, transactional_id="pykraft-tx-fence") as successor:
                await successor.init_transactions()  # aborts the zombie's transaction
                with pytest.raises(ProducerFenced):
                    await zombie.send(OUT, b"late", partition=1)  # a new partition: refused
                    await zombie.commit_transaction()
                with pytest.raises(TransactionFatal):
                    await zombie.commit_transaction()
                successor.begin_transaction()
                await successor.send(OUT, b"successor", partition=0)
                await successor.commit_transaction()
            zombie.accumulator.take_queued()  # nothing left for the closing flush
        committed = await read_all(bootstrap, OUT, 1, "read_committed")
    assert b"successor" in committed and b"zombie" not in committed


async def test_closing_a_producer_inside_a_transaction_aborts_it(cluster: LocalCluster) -> None:
    """Closed with a transaction open: aborted at once (as Kafka's producer does), not
    left to the coordinator's transaction timeout while it holds the partition's LSO."""
    bootstrap = cluster.bootstrap_servers()
    tp = (OUT, 1)
    async with Producer(
        bootstrap, transactional_id="pykraft-tx-close", transaction_timeout_ms=900_000
    ) as producer:
        await producer.init_transactions()
        producer.begin_transaction()
        await (await producer.send(OUT, b"left-open", partition=1))
    with trio.fail_after(WAIT_S):
        async with (
            Consumer(bootstrap, isolation_level="read_committed") as committed,
            Consumer(bootstrap) as uncommitted,
        ):
            for consumer in (committed, uncommitted):
                consumer.assign([tp])
            while True:  # the abort marker puts the LSO at the high-water mark
                stable = (await committed.list_offsets({tp: -1}))[tp]
                if stable == (await uncommitted.list_offsets({tp: -1}))[tp]:
                    break
                await trio.sleep(0.1)
        assert b"left-open" not in await read_all(bootstrap, OUT, 2, "read_committed")


async def test_offsets_in_a_transaction_commit_with_it_and_the_pipe_is_exactly_once(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    tp = (IN, 0)
    with trio.fail_after(WAIT_S * 2):
        async with Producer(bootstrap) as plain:
            for i in range(30):
                await plain.send(IN, b"in-%02d" % i, partition=0)
        async with (
            Consumer(
                bootstrap,
                group_id="pykraft-pipe",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                isolation_level="read_committed",
            ) as consumer,
            Producer(bootstrap, transactional_id="pykraft-pipe-1") as producer,
        ):
            consumer.subscribe([IN])
            await producer.init_transactions()
            records: list = []
            while not records:
                records = await consumer.poll(1.0)
            producer.begin_transaction()
            await producer.send(OUT, b"never", partition=1)
            positions = consumer.consumed_positions([tp])
            await producer.send_offsets_to_transaction(positions, consumer_group_metadata(consumer))
            await producer.abort_transaction()
            await trio.sleep(1.0)  # time for an ABORT marker to be applied (a COMMIT's would be)
            assert (await consumer.committed([tp]))[tp] is None  # aborted: not moved
            consumer.seek(tp, records[0].offset)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        run_pipe, consumer, producer, OUT, to_output, stop=stop, poll_timeout_s=0.2
                    )
                )
                # The offsets become the group's once the COMMIT marker reaches them.
                while (await consumer.committed([tp]))[tp] != 30:
                    await trio.sleep(0.2)
                stop.set()
        outputs = [
            v for v in await read_all(bootstrap, OUT, 2, "read_committed") if v.startswith(b"out-")
        ]
    assert outputs == [b"out-in-%02d" % i for i in range(30)]  # each once, in order


@pytest.mark.lab
async def test_idempotent_retries_across_a_leader_kill_write_each_record_once(
    tmp_path: pytest.TempPathFactory,
) -> None:
    topic, count = "pidem", 3000
    with LocalCluster(str(tmp_path), combined=3, **FAILOVER_SETTINGS) as running:
        running.start_all()
        bootstrap = running.bootstrap_servers()
        create_topic(bootstrap, topic, 1)
        with trio.fail_after(WAIT_S * 2):
            async with Producer(
                bootstrap, max_in_flight=5, linger_ms=1, batch_size=512
            ) as producer:
                deliveries = []
                for i in range(count):
                    deliveries.append(await producer.send(topic, b"%05d" % i, partition=0))
                    if i == count // 3:
                        await producer.flush()
                        leader = producer.cluster.leader(topic, 0)
                        assert leader is not None
                        await trio.to_thread.run_sync(running.kill, leader.leader)
                offsets = [(await d).offset for d in deliveries]
            assert producer.retries > 0
            values = await read_all(bootstrap, topic, 1, "read_uncommitted")
    assert values == [b"%05d" % i for i in range(count)]  # 0 duplicates, order kept
    assert offsets == list(range(count))
