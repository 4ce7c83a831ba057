"""The transaction coordinator's driver on brokers in one trio process, over Kafka's
protocol: init, add partitions, commit and abort with markers at the partitions,
fencing by a second InitProducerId, the timeout abort, and a coordinator failover."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from broker import txn_driver
from broker.cluster_plan import plan_cluster
from broker.kafka_txn_apis import TransactionVerifier
from broker.txn_driver import TRANSACTION_STATE_TOPIC
from client.kafka_connection import KafkaConnection
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from storage.records import iter_batches, iter_records, parse_control_record_key
from tests.broker.test_controller_cluster import FAST, InProcessCluster
from tests.broker.test_data_plane import topic_ready

SETTINGS = {**FAST, "replica_lag_time_max_ms": 60_000}
STATE_PARTITIONS = 3
RETRIABLE = frozenset(
    {
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.CONCURRENT_TRANSACTIONS,
        ErrorCode.NETWORK_EXCEPTION,
        ErrorCode.REQUEST_TIMED_OUT,
    }
)


@pytest.fixture(autouse=True)
def few_state_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    # 50 partitions of __transaction_state at RF 3 make three in-process brokers slow.
    monkeypatch.setattr(txn_driver, "TRANSACTION_STATE_NUM_PARTITIONS", STATE_PARTITIONS)


async def started(nursery: trio.Nursery, tmp_path: Any, nodes: int = 3) -> InProcessCluster:
    cluster = InProcessCluster(nursery, plan_cluster(str(tmp_path), combined=nodes, **SETTINGS))
    await cluster.start_all()
    await cluster.wait_brokers_unfenced(nodes)
    return cluster


def connect(cluster: InProcessCluster, node_id: int) -> KafkaConnection:
    host, port = cluster.configs[node_id].listeners["PLAINTEXT"]
    return KafkaConnection(host, port, client_id="txn-test", rng=random.Random(node_id))


async def find_coordinator(cluster: InProcessCluster, transactional_id: str) -> int:
    """The coordinator's node id, once the topic exists and the partition is loaded."""
    ask = connect(cluster, min(cluster.servers))
    try:
        while True:
            alive = [n for n, s in cluster.servers.items() if s.node and s.node.running]
            if ask.port != cluster.configs[alive[0]].listeners["PLAINTEXT"][1]:
                await ask.aclose()
                ask = connect(cluster, alive[0])
            try:
                answer = await ask.request(
                    kafka.FindCoordinatorRequest(key=transactional_id, key_type=1),
                    version=3,
                    timeout_s=10,
                )
            except KafkaError as error:
                assert error.code in RETRIABLE, error
                await trio.sleep(0.05)
                continue
            if answer.node_id in alive:
                driver = cluster.servers[answer.node_id].transactions
                assert driver is not None
                index = driver.partition_of(transactional_id)
                slot = driver.slots.get(index)
                if slot is not None and slot.coordinator is not None:
                    return int(answer.node_id)
            await trio.sleep(0.05)
    finally:
        await ask.aclose()


async def retrying(call: Any, *, retriable: frozenset[int] = frozenset()) -> Any:
    """Call until the error code is not retriable (bounded by the caller's timeout)."""
    again = RETRIABLE | retriable
    while True:
        try:
            answer = await call()
        except KafkaError as error:
            if error.code not in again:
                raise
        else:
            if getattr(answer, "error_code", ErrorCode.NONE) not in again:
                return answer
        await trio.sleep(0.05)


def init(tid: str, timeout_ms: int = 60_000) -> Any:
    return kafka.InitProducerIdRequest(transactional_id=tid, transaction_timeout_ms=timeout_ms)


def add(tid: str, producer_id: int, epoch: int, topic: str, partitions: tuple[int, ...]) -> Any:
    Request = kafka.AddPartitionsToTxnRequest
    return Request(
        v3_and_below_transactional_id=tid,
        v3_and_below_producer_id=producer_id,
        v3_and_below_producer_epoch=epoch,
        v3_and_below_topics=(Request.AddPartitionsToTxnTopic(name=topic, partitions=partitions),),
    )


def add_codes(answer: Any) -> list[int]:
    return [
        p.partition_error_code
        for topic in answer.results_by_topic_v3_and_below
        for p in topic.results_by_partition
    ]


def end(tid: str, producer_id: int, epoch: int, committed: bool) -> Any:
    return kafka.EndTxnRequest(
        transactional_id=tid, producer_id=producer_id, producer_epoch=epoch, committed=committed
    )


async def describe(connection: KafkaConnection, tid: str) -> Any:
    answer = await connection.request(
        kafka.DescribeTransactionsRequest(transactional_ids=(tid,)), version=0, timeout_s=10
    )
    (state,) = answer.transaction_states
    return state


async def wait_state(connection: KafkaConnection, tid: str, state: str) -> Any:
    while True:
        found = await describe(connection, tid)
        if found.error_code == ErrorCode.NONE and found.transaction_state == state:
            return found
        await trio.sleep(0.05)


def control_batches(cluster: InProcessCluster, topic: str, index: int) -> list[tuple[int, str]]:
    """(producer id, COMMIT or ABORT) of each control batch in the leader's log."""
    for server in cluster.servers.values():
        partition = server.replicas.partitions.get((topic, index)) if server.replicas else None
        if partition is not None and partition.is_leader:
            log = partition.log
            data = bytes(log.read(0, 1 << 24, max_offset=log.log_end_offset))
            found = []
            for position, header in iter_batches(data):
                if header.is_control:
                    (record,) = iter_records(data, position)
                    kind = parse_control_record_key(record.key)
                    found.append((header.producer_id, kind.name))
            return found
    raise AssertionError(f"no leader of {topic}-{index}")


@pytest.mark.slow
async def test_init_add_commit_abort_and_fence(nursery, tmp_path) -> None:
    with trio.fail_after(90):
        cluster = await started(nursery, tmp_path)
        await topic_ready(cluster, "out", 3)
        tid = "txn-a"
        # The first FindCoordinator creates __transaction_state.
        node = await find_coordinator(cluster, tid)
        server = cluster.servers[node]
        assert server.loader is not None
        assert server.loader.image.topic(TRANSACTION_STATE_TOPIC) is not None
        connection = connect(cluster, node)
        first = await retrying(lambda: connection.request(init(tid), version=4, timeout_s=10))
        assert first.error_code == ErrorCode.NONE and first.producer_epoch == 0
        pid = first.producer_id

        added = await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        assert add_codes(added) == [ErrorCode.NONE]
        ongoing = await describe(connection, tid)
        assert ongoing.transaction_state == "Ongoing"
        assert [(t.topic, tuple(t.partitions)) for t in ongoing.topics] == [("out", (0,))]
        ended = await connection.request(end(tid, pid, 0, False), version=3, timeout_s=10)
        assert ended.error_code == ErrorCode.NONE
        await wait_state(connection, tid, "CompleteAbort")

        await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        ended = await connection.request(end(tid, pid, 0, True), version=3, timeout_s=10)
        assert ended.error_code == ErrorCode.NONE
        await wait_state(connection, tid, "CompleteCommit")

        # The markers reached the partition's leader: ABORT then COMMIT of this producer.
        assert control_batches(cluster, "out", 0) == [(pid, "ABORT"), (pid, "COMMIT")]

        listed = await connection.request(kafka.ListTransactionsRequest(), version=1, timeout_s=10)
        assert [(s.transactional_id, s.transaction_state) for s in listed.transaction_states] == [
            (tid, "CompleteCommit")
        ]

        # A second InitProducerId fences the first producer: its epoch is behind.
        await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        second = await retrying(lambda: connection.request(init(tid), version=4, timeout_s=10))
        assert second.producer_id == pid and second.producer_epoch >= 1
        late = await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        assert add_codes(late) == [ErrorCode.PRODUCER_FENCED]
        with pytest.raises(KafkaError) as fenced:
            await connection.request(end(tid, pid, 0, True), version=2, timeout_s=10)
        assert fenced.value.code == ErrorCode.PRODUCER_FENCED
        with pytest.raises(KafkaError) as old_client:
            await connection.request(end(tid, pid, 0, True), version=1, timeout_s=10)
        assert old_client.value.code == ErrorCode.INVALID_PRODUCER_EPOCH  # before KIP-588
        await connection.aclose()


@pytest.mark.slow
async def test_a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced(
    nursery, tmp_path
) -> None:
    with trio.fail_after(90):
        cluster = await started(nursery, tmp_path, nodes=1)
        await topic_ready(cluster, "out", 1)
        tid = "slow"
        node = await find_coordinator(cluster, tid)
        connection = connect(cluster, node)
        first = await retrying(lambda: connection.request(init(tid, 300), version=4, timeout_s=10))
        pid = first.producer_id
        await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        aborted = await wait_state(connection, tid, "CompleteAbort")
        assert aborted.producer_epoch == 1  # bumped by the fence
        with pytest.raises(KafkaError) as late:
            await connection.request(end(tid, pid, 0, True), version=3, timeout_s=10)
        assert late.value.code == ErrorCode.PRODUCER_FENCED
        await connection.aclose()


@pytest.mark.slow
async def test_the_new_coordinator_resumes_after_a_kill(nursery, tmp_path) -> None:
    with trio.fail_after(120):
        cluster = await started(nursery, tmp_path)
        await topic_ready(cluster, "out", 3)
        tid = "failover"
        node = await find_coordinator(cluster, tid)
        connection = connect(cluster, node)
        first = await retrying(lambda: connection.request(init(tid), version=4, timeout_s=10))
        pid = first.producer_id
        await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        await connection.aclose()
        cluster.servers[node].kill()  # like SIGKILL: mid-transaction
        del cluster.servers[node]

        successor = await find_coordinator(cluster, tid)
        assert successor != node
        connection = connect(cluster, successor)
        loaded = await wait_state(connection, tid, "Ongoing")
        assert (loaded.producer_id, loaded.producer_epoch) == (pid, 0)
        ended = await retrying(
            lambda: connection.request(end(tid, pid, 0, True), version=3, timeout_s=10)
        )
        assert ended.error_code == ErrorCode.NONE
        await wait_state(connection, tid, "CompleteCommit")
        await connection.aclose()


@pytest.mark.slow
async def test_partition_leaders_verify_with_the_coordinator_local_and_remote(
    nursery, tmp_path
) -> None:
    """KIP-890 part 1: NONE only for a partition in the producer's open transaction."""
    with trio.fail_after(90):
        cluster = await started(nursery, tmp_path)
        await topic_ready(cluster, "out", 3)
        tid = "verified"
        node = await find_coordinator(cluster, tid)
        connection = connect(cluster, node)
        first = await retrying(lambda: connection.request(init(tid), version=4, timeout_s=10))
        pid = first.producer_id
        await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        await connection.aclose()
        other = next(n for n in cluster.servers if n != node)
        for asking in (node, other):  # the coordinator itself, then over Kafka's protocol
            driver = cluster.servers[asking].transactions
            assert driver is not None
            verifier = TransactionVerifier(driver)
            try:
                assert await verifier(tid, pid, 0, "out", 0) == ErrorCode.NONE
                assert await verifier(tid, pid, 0, "out", 1) == ErrorCode.INVALID_TXN_STATE
                assert await verifier(tid, pid, 1, "out", 0) == ErrorCode.INVALID_PRODUCER_EPOCH
                assert await verifier(tid, pid + 1, 0, "out", 0) == (
                    ErrorCode.INVALID_PRODUCER_ID_MAPPING
                )
                assert await verifier("unknown-id", pid, 0, "out", 0) == (
                    ErrorCode.INVALID_PRODUCER_ID_MAPPING
                )
            finally:
                await verifier.aclose()
