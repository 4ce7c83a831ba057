"""The transaction coordinator's driver on brokers in one trio process, over Kafka's
protocol: init, add partitions, commit and abort with markers at the partitions,
fencing by a second InitProducerId, the timeout abort, and a coordinator failover."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from broker.cluster_plan import plan_cluster
from broker.groups import GroupCoordinator, GroupRecord
from broker.groups.records import OffsetCommitKey, OffsetCommitValue
from broker.groups.txn_offsets import TxnReplay, complete
from broker.kafka_txn_apis import TransactionVerifier
from broker.txn_driver import TRANSACTION_STATE_TOPIC
from client.kafka_connection import KafkaConnection
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from storage.records import (
    ControlRecordType,
    RecordInput,
    build_batch,
    build_control_batch,
    iter_batches,
    iter_records,
    parse_control_record_key,
)
from tests.broker.test_controller_cluster import FAST, InProcessCluster, create_topics_body
from tests.broker.test_data_plane import topic_ready

STATE_PARTITIONS = (
    3  # 50 partitions of __transaction_state at RF 3 make three in-process brokers slow
)
SETTINGS = {
    **FAST,
    "replica_lag_time_max_ms": 60_000,
    "transaction_state_num_partitions": STATE_PARTITIONS,
}
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


def offsets_batch(
    base_offset: int, producer_id: int, group: str, offset: int, *, transactional: bool = True
) -> bytes:
    key, value = GroupRecord(
        key=OffsetCommitKey(group_id=group, topic="in", partition=0),
        value=OffsetCommitValue(offset=offset, leader_epoch=-1, metadata="", commit_timestamp_ms=1),
    ).to_wire()
    return build_batch(
        [RecordInput(timestamp=1, key=key, value=value)],
        base_offset=base_offset,
        producer_id=producer_id if transactional else -1,
        producer_epoch=0 if transactional else -1,
        base_sequence=0 if transactional else -1,
        is_transactional=transactional,
    )


def marker(base_offset: int, producer_id: int, committed: bool) -> bytes:
    kind = ControlRecordType.COMMIT if committed else ControlRecordType.ABORT
    return build_control_batch(
        kind,
        b"\x00\x00\x00\x00\x00\x00",
        timestamp=1,
        base_offset=base_offset,
        producer_id=producer_id,
        producer_epoch=0,
        is_transactional=True,
    )


def test_a_load_takes_transactional_offsets_at_their_commit_and_drops_aborted_ones() -> None:
    """The order a group coordinator replays `__consumer_offsets` in: a committed
    transaction's offsets at its marker, an aborted one's never, an open one's pending."""
    log = b"".join(
        [
            offsets_batch(0, 7, "g", 10),  # committed below, after a plain commit
            offsets_batch(1, -1, "g", 5, transactional=False),
            offsets_batch(2, 8, "g", 99),  # aborted
            marker(3, 8, committed=False),
            marker(4, 7, committed=True),
            offsets_batch(5, 9, "h", 42),  # still open
        ]
    )
    records: list[GroupRecord] = []
    replay = TxnReplay()
    for position, header in iter_batches(log):
        if header.is_control:
            replay.marker(header, log, position, records)
            continue
        for record in iter_records(log, position):
            read = GroupRecord.from_wire(record.key, record.value)
            if header.is_transactional:
                replay.hold(header.producer_id, read)
            else:
                records.append(read)
    taken = [r.value.offset for r in records if isinstance(r.value, OffsetCommitValue)]
    assert taken == [5, 10]  # the transaction's offset wins: its marker came later
    pending = replay.pending()
    assert pending.has("h", "in", 0) and not pending.has("g", "in", 0)
    coordinator = GroupCoordinator.replay(records, 0, rng=random.Random(0))
    assert coordinator.groups["g"].offsets[("in", 0)].offset == 10
    complete(coordinator, pending, 9, True, now_ms=2)
    assert coordinator.groups["h"].offsets[("in", 0)].offset == 42
    assert not pending.by_producer


async def partitions_ready(cluster: InProcessCluster, name: str, count: int) -> None:
    """A topic of `count` partitions at RF 3, each with its leader's replica ready."""
    node = max(cluster.servers)
    answer = await cluster.call(node, ApiKey.CREATE_TOPICS, create_topics_body(name, count, 3))
    assert answer["topics"][0]["error_code"] == ErrorCode.NONE, answer
    while True:
        leaders = [
            s
            for s in cluster.servers.values()
            for index in range(count)
            if s.replicas is not None
            and (name, index) in s.replicas.partitions
            and s.replicas.partitions[(name, index)].is_leader
        ]
        if len(leaders) == count:
            return
        await trio.sleep(0.05)


@pytest.mark.slow
async def test_a_prepared_commit_is_completed_by_the_next_coordinator(nursery, tmp_path) -> None:
    """The coordinator dies after PrepareCommit is durable and before any marker is
    sent: its successor finds the transaction prepared and sends the markers itself."""
    with trio.fail_after(120):
        cluster = await started(nursery, tmp_path)
        await partitions_ready(cluster, "out", 2)
        tid = "prepared"
        node = await find_coordinator(cluster, tid)
        driver = cluster.servers[node].transactions
        assert driver is not None

        async def never_sent(*args: Any) -> None:
            await trio.sleep_forever()

        driver._send_markers = never_sent  # type: ignore[method-assign]
        connection = connect(cluster, node)
        first = await retrying(lambda: connection.request(init(tid), version=4, timeout_s=10))
        pid = first.producer_id
        await connection.request(add(tid, pid, 0, "out", (0, 1)), version=3, timeout_s=10)
        ended = await connection.request(end(tid, pid, 0, True), version=3, timeout_s=10)
        assert ended.error_code == ErrorCode.NONE
        assert (await describe(connection, tid)).transaction_state == "PrepareCommit"
        await connection.aclose()
        cluster.servers[node].kill()
        del cluster.servers[node]

        successor = await find_coordinator(cluster, tid)
        connection = connect(cluster, successor)
        await wait_state(connection, tid, "CompleteCommit")
        await connection.aclose()
        for index in (0, 1):
            while not control_batches(cluster, "out", index):  # a new leader may lag
                await trio.sleep(0.05)
            assert control_batches(cluster, "out", index) == [(pid, "COMMIT")]


@pytest.mark.slow
async def test_bad_transaction_requests_get_codes_and_the_node_serves_on(nursery, tmp_path) -> None:
    with trio.fail_after(90):
        cluster = await started(nursery, tmp_path, nodes=1)
        await topic_ready(cluster, "out", 1)
        node = await find_coordinator(cluster, "bad")
        connection = connect(cluster, node)

        async def refused(request: Any, version: int) -> int:
            with pytest.raises(KafkaError) as error:
                await connection.request(request, version=version, timeout_s=10)
            return error.value.code

        assert await refused(init("bad", 0), 4) == ErrorCode.INVALID_TRANSACTION_TIMEOUT
        assert await refused(init("bad", 10**9), 4) == ErrorCode.INVALID_TRANSACTION_TIMEOUT
        half_claim = kafka.InitProducerIdRequest(
            transactional_id="bad", transaction_timeout_ms=1000, producer_id=5, producer_epoch=-1
        )
        assert await refused(half_claim, 3) == ErrorCode.INVALID_REQUEST
        assert await refused(end("never-seen", 1, 0, True), 3) == (
            ErrorCode.INVALID_PRODUCER_ID_MAPPING
        )
        ok = await retrying(lambda: connection.request(init("bad"), version=4, timeout_s=10))
        negative = await connection.request(
            add("bad", ok.producer_id, 0, "out", (-1,)), version=3, timeout_s=10
        )
        assert add_codes(negative) == [ErrorCode.INVALID_REQUEST]
        unknown = await describe(connection, "never-seen")
        assert unknown.error_code == ErrorCode.TRANSACTIONAL_ID_NOT_FOUND
        Request = kafka.TxnOffsetCommitRequest
        no_producer = Request(
            transactional_id="bad",
            group_id="g",
            producer_id=-1,
            producer_epoch=-1,
            topics=(
                Request.TxnOffsetCommitRequestTopic(
                    name="in",
                    partitions=(Request.TxnOffsetCommitRequestPartition(committed_offset=3),),
                ),
            ),
        )
        groups = cluster.servers[node].groups
        assert groups is not None
        await groups.ensure_topic()  # what the client's FindCoordinator for "g" does
        for _ in range(200):  # the group coordinator loads __consumer_offsets meanwhile
            answer = await connection.request(no_producer, version=3, timeout_s=10)
            (code,) = [p.error_code for t in answer.topics for p in t.partitions]
            if code not in RETRIABLE:
                break
            await trio.sleep(0.05)
        assert code == ErrorCode.INVALID_RECORD
        # And the node still serves a transaction.
        added = await connection.request(
            add("bad", ok.producer_id, 0, "out", (0,)), version=3, timeout_s=10
        )
        assert add_codes(added) == [ErrorCode.NONE]
        await connection.aclose()
