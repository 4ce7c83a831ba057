"""A coordinator's work is not cancelled with the connection that asked for it (issue 17).

`broker.kafka_connection` cancels the answers of a connection whose peer went away,
and a client whose request timed out closes its connection. Kafka finishes such a
request anyway; so must pykraft's coordinators: an EndTxn whose PrepareCommit was
appended must send its markers and complete the transaction even if its caller is
cancelled while the record is being replicated (else the transaction stays
PrepareCommit and every later call of its id is answered CONCURRENT_TRANSACTIONS
until the coordinator reloads), and a TxnOffsetCommit's wait for its records is the
group driver's, not its caller's.

Each test holds the replication wait of the coordinator's internal partition until
the caller's connection has closed and the broker has cancelled the caller.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
import trio

from broker.group_driver import GroupDriver
from broker.groups.messages import JoinGroupRequest, JoinGroupResponse, SyncGroupRequest
from broker.partition import Partition
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from tests.broker.test_data_plane import topic_ready
from tests.broker.test_txn_driver import (
    add,
    add_codes,
    connect,
    control_batches,
    end,
    find_coordinator,
    init,
    retrying,
    started,
    wait_state,
)


@pytest.fixture(autouse=True)
def connections_cancel_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The listener lets a request whose peer hung up run to its end (decision 0026);
    # these tests check the drivers' own guarantee (decision 0025), so the listener
    # cancels at once, as it did before.
    import broker.kafka_connection

    monkeypatch.setattr(broker.kafka_connection, "ANSWERS_AFTER_CLOSE_S", 0)


class Gate:
    """Holds `partition.wait_committed` until released; counts waits entered and
    those cancelled while held."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.original = partition.wait_committed
        self.entered = trio.Event()
        self.release = trio.Event()
        self.cancelled = 0

    async def wait_committed(self, offset: int, leader_epoch: int) -> None:
        self.entered.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        await self.original(offset, leader_epoch)

    def __enter__(self) -> Gate:
        self.partition.wait_committed = self.wait_committed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.partition.wait_committed = self.original  # type: ignore[method-assign]
        self.release.set()


def observe_cancelled(owner: Any, name: str) -> trio.Event:
    """Wrap `owner.<name>` (an async method): the event is set once a caller of it is
    cancelled (what the broker does to the answers of a connection that closed)."""
    original = getattr(owner, name)
    cancelled = trio.Event()

    async def observed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        except trio.Cancelled:
            cancelled.set()
            raise

    setattr(owner, name, observed)
    return cancelled


async def ask_then_hang_up(cluster: Any, node: int, request: Any, version: int, gate: Gate) -> None:
    """Send `request` on a connection of its own and close that connection while the
    coordinator waits for the request's records to be replicated."""
    connection = connect(cluster, node)

    async def ask() -> None:
        with contextlib.suppress(KafkaError):  # cancelled below: no answer is read
            await connection.request(request, version=version, timeout_s=60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await gate.entered.wait()
        nursery.cancel_scope.cancel()
    await connection.aclose()


@pytest.mark.slow
async def test_an_end_txn_whose_connection_closes_still_completes(nursery, tmp_path) -> None:
    with trio.fail_after(90):
        cluster = await started(nursery, tmp_path, nodes=1)
        await topic_ready(cluster, "out", 1)
        tid = "hung-up"
        node = await find_coordinator(cluster, tid)
        driver = cluster.servers[node].transactions
        assert driver is not None
        connection = connect(cluster, node)
        first = await retrying(lambda: connection.request(init(tid), version=4, timeout_s=10))
        pid = first.producer_id
        added = await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        assert add_codes(added) == [ErrorCode.NONE]

        slot = driver.slots[driver.partition_of(tid)]
        caller_cancelled = observe_cancelled(driver, "call")
        with Gate(slot.partition) as gate:
            await ask_then_hang_up(cluster, node, end(tid, pid, 0, True), 3, gate)
            await caller_cancelled.wait()  # the broker gave up on the answer
            gate.release.set()

        # The markers go out and the transaction completes, with no further call.
        with trio.move_on_after(30):
            await wait_state(connection, tid, "CompleteCommit")
        found = await connection.request(
            kafka.DescribeTransactionsRequest(transactional_ids=(tid,)), version=0, timeout_s=10
        )
        assert found.transaction_states[0].transaction_state == "CompleteCommit"
        assert control_batches(cluster, "out", 0) == [(pid, "COMMIT")]
        assert gate.cancelled == 0, "the PrepareCommit's replication wait was cancelled"
        # And the id serves its next transaction (no CONCURRENT_TRANSACTIONS).
        again = await connection.request(add(tid, pid, 0, "out", (0,)), version=3, timeout_s=10)
        assert add_codes(again) == [ErrorCode.NONE]
        await connection.aclose()


def join(client: str) -> JoinGroupRequest:
    return JoinGroupRequest(
        group_id="g",
        client_id=client,
        client_host="/127.0.0.1",
        session_timeout_ms=30_000,
        rebalance_timeout_ms=30_000,
        protocol_type="consumer",
        protocols=(("range", b"subscription"),),
        require_known_member_id=False,
    )


async def loaded_group_slot(driver: GroupDriver, group_id: str) -> Any:
    await driver.ensure_topic()
    while True:
        slot = driver.slots.get(driver.partition_of(group_id))
        if slot is not None and slot.coordinator is not None:
            return slot
        await trio.sleep(0.05)


@pytest.mark.slow
async def test_a_sync_group_leader_cancelled_still_hands_followers_their_assignment(
    nursery, tmp_path
) -> None:
    """The leader's SyncGroup carries its followers' replies: its caller cancelled
    while the group's record is replicated must not leave them waiting."""
    with trio.fail_after(90):
        cluster = await started(nursery, tmp_path, nodes=1)
        driver = cluster.servers[min(cluster.servers)].groups
        assert driver is not None
        slot = await loaded_group_slot(driver, "g")
        slot.coordinator.config = attrs.evolve(
            slot.coordinator.config, initial_rebalance_delay_ms=0
        )
        joins: dict[str, JoinGroupResponse] = {}

        async def join_as(client: str) -> None:
            answer = await driver.call("g", "join_group", join(client))
            assert isinstance(answer, JoinGroupResponse) and answer.error_code == 0, answer
            joins[client] = answer

        async with trio.open_nursery() as members:
            members.start_soon(join_as, "a")
            members.start_soon(join_as, "b")
        leader, follower = sorted(joins.values(), key=lambda r: r.member_id != r.leader)
        generation = leader.generation_id
        follower_answer: list[Any] = []

        async def follower_sync() -> None:
            request = SyncGroupRequest(
                group_id="g", generation_id=generation, member_id=follower.member_id
            )
            follower_answer.append(await driver.call("g", "sync_group", request))

        nursery.start_soon(follower_sync)
        while not slot.held:  # the follower's SyncGroup is held for the leader's
            await trio.sleep(0.01)
        leader_sync = SyncGroupRequest(
            group_id="g",
            generation_id=generation,
            member_id=leader.member_id,
            assignments=((leader.member_id, b"L"), (follower.member_id, b"F")),
        )
        with Gate(slot.partition) as gate:
            async with trio.open_nursery() as caller:
                caller.start_soon(driver.call, "g", "sync_group", leader_sync)
                await gate.entered.wait()
                caller.cancel_scope.cancel()  # as the broker does when the leader hangs up
            gate.release.set()
        with trio.move_on_after(30):
            while not follower_answer:
                await trio.sleep(0.01)
        assert follower_answer, "the follower never got its assignment"
        assert follower_answer[0].error_code == 0 and follower_answer[0].assignment == b"F"
        assert gate.cancelled == 0, "the group record's replication wait was cancelled"
