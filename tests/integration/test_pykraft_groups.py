"""pykraft's own consumer in groups against a 3-node pykraft cluster (issue 16, items 6-7).

Members are trio tasks of the test (one process), except the one SIGKILLed, which is a
process of its own running the blocking facade. Each member polls in a loop of its own:
a rebalance completes inside a poll.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from broker.local_cluster import LocalCluster
from client import cli
from client.admin import Admin, NewTopic
from client.consumer import Consumer
from client.producer import Producer

PARTITIONS = 6
WAIT_S = 120
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_MS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("pykraft-groups")
    with LocalCluster(str(root), combined=3, offsets_topic_num_partitions=6) as running:
        running.start_all()
        yield running


async def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    async with Admin(bootstrap) as admin:
        await admin.create_topics([NewTopic(name, partitions=partitions, replication_factor=3)])


async def produce(bootstrap: str, topic: str, values: range) -> None:
    async with Producer(bootstrap, acks="all", linger_ms=2) as producer:
        for i in values:
            await producer.send(topic, b"%d" % i, key=b"%d" % i)
        await producer.flush()


class Recorder:
    """A rebalance listener that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def on_assigned(self, partitions: list[tuple[str, int]]) -> None:
        self.calls.append(("assigned", partitions))

    def on_revoked(self, partitions: list[tuple[str, int]]) -> None:
        self.calls.append(("revoked", partitions))

    def on_lost(self, partitions: list[tuple[str, int]]) -> None:
        self.calls.append(("lost", partitions))


class Member:
    def __init__(self, bootstrap: str, group: str, topic: str, **settings: Any) -> None:
        settings.setdefault("enable_auto_commit", False)
        self.consumer = Consumer(
            bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            fetch_max_wait_ms=200,
            **settings,
        )
        self.listener = Recorder()
        self.consumer.subscribe([topic], self.listener)
        self.values: list[bytes] = []
        self.assigned: set[tuple[str, int]] = set()
        self.stop = trio.Event()
        self.stopped = trio.Event()

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                records = await self.consumer.poll(0.3)
                self.assigned = set(self.consumer.assignment())
                for record in records:
                    # Only what the member owns: a record of a partition revoked is a bug.
                    assert (record.topic, record.partition) in self.assigned
                    self.values.append(record.value or b"")
        finally:
            self.stopped.set()

    async def halt(self) -> None:
        self.stop.set()
        await self.stopped.wait()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.05)


def read_at_least(members: list[Member], count: int) -> bool:
    return sum(len(m.values) for m in members) >= count


def split(members: list[Member], partitions: int = PARTITIONS) -> bool:
    sets = [m.assigned for m in members]
    union: set[tuple[str, int]] = set().union(*sets)
    return all(sets) and sum(map(len, sets)) == partitions == len(union)


@pytest.mark.lab  # four joins and two 1 s quiet waits: ~14 s here
async def test_a_group_of_three_reads_everything_once_commits_and_a_new_member_resumes(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-once", "pk-once-readers"
    await create_topic(bootstrap, topic)
    async with trio.open_nursery() as nursery:
        members = [Member(bootstrap, group, topic) for _ in range(3)]
        for member in members:
            nursery.start_soon(member.run)
        await wait_until(lambda: split(members), "the group did not split the partitions")
        assert sorted(len(m.assigned) for m in members) == [2, 2, 2]
        await produce(bootstrap, topic, range(600))
        await wait_until(lambda: sum(len(m.values) for m in members) >= 600, "not all read")
        await trio.sleep(1)  # a duplicate would show now
        for member in members:
            await member.halt()
        consumed = [v for m in members for v in m.values]
        assert sorted(consumed) == sorted(b"%d" % i for i in range(600))
        for member in members:  # every commit before anyone leaves (a leave rebalances)
            await member.consumer.commit()
        committed = await members[0].consumer.committed(members[0].assigned)
        assert all(offset is not None and offset > 0 for offset in committed.values())
        for member in members:
            await member.consumer.close()

        await produce(bootstrap, topic, range(600, 660))
        later = Member(bootstrap, group, topic)
        nursery.start_soon(later.run)
        await wait_until(lambda: len(later.values) >= 60, "the later records were not read")
        await trio.sleep(1)
        await later.halt()
        await later.consumer.close()
    assert sorted(later.values) == sorted(b"%d" % i for i in range(600, 660))


async def test_auto_commit_commits_what_poll_returned_and_a_closed_members_partitions_move(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-auto", "pk-auto-readers"
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, range(300))
    async with trio.open_nursery() as nursery:
        settings = {"enable_auto_commit": True, "auto_commit_interval_ms": 200}
        members = [Member(bootstrap, group, topic, **settings) for _ in range(3)]
        for member in members:
            nursery.start_soon(member.run)
        await wait_until(lambda: split(members), "no split")
        leaving = members.pop()
        await leaving.halt()
        await leaving.consumer.close()  # a final commit, on_revoked, LeaveGroup
        assert leaving.listener.calls[-1][0] == "revoked"
        await wait_until(lambda: split(members), "the closed member's partitions did not move")
        await wait_until(lambda: sum(len(m.values) for m in [*members, leaving]) >= 300, "read")
        await trio.sleep(1)  # past an auto-commit interval and a poll
        everything = [v for m in [*members, leaving] for v in m.values]
        # At least once: a partition moved after a commit of what had been returned.
        assert set(everything) == {b"%d" % i for i in range(300)}
        positions = {
            tp: await m.consumer.position(tp) for m in members for tp in sorted(m.assigned)
        }
        committed = await members[0].consumer.committed(positions)
        assert committed == positions
        for member in members:
            await member.halt()
            await member.consumer.close()


async def test_cooperative_sticky_rebalances_incrementally(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-sticky", "pk-sticky-readers"
    await create_topic(bootstrap, topic)
    settings = {"partition_assignment_strategy": ["cooperative-sticky"]}
    async with trio.open_nursery() as nursery:
        members = [Member(bootstrap, group, topic, **settings) for _ in range(2)]
        for member in members:
            nursery.start_soon(member.run)
        await wait_until(lambda: split(members), "no split of two")
        before = [set(m.assigned) for m in members]
        marks = [len(m.listener.calls) for m in members]
        newcomer = Member(bootstrap, group, topic, **settings)
        members.append(newcomer)
        nursery.start_soon(newcomer.run)
        await wait_until(
            lambda: split(members) and sorted(len(m.assigned) for m in members) == [2, 2, 2],
            "no incremental split of three",
        )
        for member, had, mark in zip(members[:2], before, marks, strict=True):
            revoked = [set(p) for kind, p in member.listener.calls[mark:] if kind == "revoked"]
            # Each old member gave up only what moved, and kept the rest all along.
            assert len(revoked) == 1 and revoked[0] == had - member.assigned, member.listener.calls
            assert member.assigned < had
            assert not any(kind == "lost" for kind, _ in member.listener.calls)
        assert (
            newcomer.assigned == (before[0] | before[1]) - members[0].assigned - members[1].assigned
        )
        for member in members:
            await member.halt()
            await member.consumer.close()


async def test_a_mixed_group_of_pykraft_and_kafka_python_members(cluster: LocalCluster) -> None:
    kafka = pytest.importorskip("kafka")
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-mixed", "pk-mixed-readers"
    await create_topic(bootstrap, topic)
    theirs = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        partition_assignment_strategy=[kafka.coordinator.assignors.range.RangePartitionAssignor],
    )
    theirs.subscribe([topic])
    their_values: list[bytes] = []
    their_assigned: set[int] = set()
    stop = threading.Event()

    def poll_theirs() -> None:
        while not stop.is_set():
            for records in theirs.poll(timeout_ms=200).values():
                their_values.extend(r.value for r in records)
            their_assigned.clear()
            their_assigned.update(tp.partition for tp in theirs.assignment())

    thread = threading.Thread(target=poll_theirs, daemon=True)
    thread.start()
    try:
        async with trio.open_nursery() as nursery:
            ours = Member(bootstrap, group, topic, partition_assignment_strategy=["range"])
            nursery.start_soon(ours.run)
            await wait_until(
                lambda: len(ours.assigned) == 3 and len(their_assigned) == 3,
                "no split between pykraft and kafka-python",
            )
            assert {p for _, p in ours.assigned}.isdisjoint(their_assigned)
            await produce(bootstrap, topic, range(200))
            await wait_until(lambda: len(ours.values) + len(their_values) >= 200, "not read")
            await trio.sleep(1)
            await ours.halt()
            await ours.consumer.close()
    finally:
        stop.set()
        thread.join(WAIT_S)
        theirs.close()
    assert sorted(ours.values + their_values) == sorted(b"%d" % i for i in range(200))


MEMBER_SCRIPT = """
import sys
from client.sync import Consumer
consumer = Consumer(sys.argv[1], group_id=sys.argv[3], auto_offset_reset="earliest",
                    session_timeout_ms=int(sys.argv[4]), heartbeat_interval_ms=300)
consumer.subscribe([sys.argv[2]])
last = None
while True:
    consumer.poll(0.2)
    assigned = sorted(p for _, p in consumer.assignment())
    if assigned != last:
        print(",".join(map(str, assigned)), flush=True)
        last = assigned
"""


@pytest.mark.lab  # waits a session timeout
async def test_a_sigkilled_members_partitions_move_within_the_session_timeout(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-sigkill", "pk-sigkill-readers"
    await create_topic(bootstrap, topic)
    process = subprocess.Popen(
        [sys.executable, "-c", MEMBER_SCRIPT, bootstrap, topic, group, str(SESSION_TIMEOUT_MS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    theirs: dict[str, set[int]] = {"assigned": set()}

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            theirs["assigned"] = {int(p) for p in line.strip().split(",") if p}

    threading.Thread(target=read, daemon=True).start()
    try:
        async with trio.open_nursery() as nursery:
            member = Member(bootstrap, group, topic)
            nursery.start_soon(member.run)
            await wait_until(
                lambda: len(member.assigned) == 3 and len(theirs["assigned"]) == 3, "no split"
            )
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=WAIT_S)
            killed = time.monotonic()
            await wait_until(lambda: len(member.assigned) == PARTITIONS, "partitions did not move")
            moved_s = time.monotonic() - killed
            # The session timeout, then the rebalance the survivor joins at a heartbeat.
            assert moved_s < SESSION_TIMEOUT_MS / 1000 + 10, moved_s
            await member.halt()
            await member.consumer.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_cli(bootstrap: str, *args: str) -> str:
    import io

    out = io.StringIO()
    code = cli.main(["--bootstrap", bootstrap, *args], out=out)
    assert code == 0, (args, out.getvalue())
    return out.getvalue()


async def test_cli_lists_describes_resets_and_deletes_a_group(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-cli", "pk-cli-readers"
    await create_topic(bootstrap, topic, partitions=2)
    await produce(bootstrap, topic, range(40))
    async with trio.open_nursery() as nursery:
        member = Member(bootstrap, group, topic, client_id="cli-reader")
        nursery.start_soon(member.run)
        await wait_until(lambda: len(member.values) >= 40, "not read")
        await member.halt()
        await member.consumer.commit()
        listed = await trio.to_thread.run_sync(run_cli, bootstrap, "group", "list")
        assert group in listed and "Stable" in listed
        described = await trio.to_thread.run_sync(run_cli, bootstrap, "group", "describe", group)
        assert "cli-reader" in described and f"{topic}-0,{topic}-1" in described
        rows = [line.split() for line in described.splitlines() if line.startswith(topic)]
        assert sorted(int(r[2]) for r in rows) == sorted(int(r[3]) for r in rows)  # no lag
        assert sum(int(r[2]) for r in rows) == 40 and all(r[4] == "0" for r in rows)
        refused = await trio.to_thread.run_sync(
            cli.main,
            [
                "--bootstrap",
                bootstrap,
                "group",
                "reset-offsets",
                group,
                "--topic",
                topic,
                "--to-earliest",
                "--execute",
            ],
        )
        assert refused != 0  # a group with members is not reset
        await member.consumer.close()

    plan = await trio.to_thread.run_sync(
        run_cli, bootstrap, "group", "reset-offsets", group, "--topic", topic, "--to-earliest"
    )
    assert "dry run" in plan and [line.split()[-1] for line in plan.splitlines()[1:3]] == ["0", "0"]
    async with Admin(bootstrap) as admin:
        assert sum((await admin.list_group_offsets(group)).values()) == 40  # unchanged
    await trio.to_thread.run_sync(
        run_cli,
        bootstrap,
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to-offset",
        "5",
        "--execute",
    )
    async with Admin(bootstrap) as admin:
        assert await admin.list_group_offsets(group) == {(topic, 0): 5, (topic, 1): 5}
    await trio.to_thread.run_sync(
        run_cli,
        bootstrap,
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to-datetime",
        "2000-01-01T00:00:00",
        "--execute",
    )
    async with Admin(bootstrap) as admin:
        assert await admin.list_group_offsets(group) == {(topic, 0): 0, (topic, 1): 0}
    deleted = await trio.to_thread.run_sync(run_cli, bootstrap, "group", "delete", group)
    assert f"deleted group {group}" in deleted
    assert group not in await trio.to_thread.run_sync(run_cli, bootstrap, "group", "list")


def test_the_blocking_facade_subscribes_polls_and_commits(cluster: LocalCluster) -> None:
    from client import sync

    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-sync", "pk-sync-readers"
    trio.run(create_topic, bootstrap, topic, 2)
    trio.run(produce, bootstrap, topic, range(50))
    answers: list[tuple[dict[tuple[str, int], int], BaseException | None]] = []
    with sync.Consumer(
        bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    ) as consumer:
        listener = Recorder()
        consumer.subscribe([topic], listener)
        values: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while len(values) < 50:
            assert time.monotonic() < deadline, "the facade did not read everything"
            values += [r.value for r in consumer.poll(0.5)]
        assert sorted(values) == sorted(b"%d" % i for i in range(50))
        assert listener.calls[0] == ("assigned", [(topic, 0), (topic, 1)])
        consumer.commit_async(None, lambda offsets, error: answers.append((offsets, error)))
        while not answers:
            assert time.monotonic() < deadline, "the async commit did not call back"
            time.sleep(0.05)
        offsets, error = answers[0]
        assert error is None and sum(offsets.values()) == 50
        assert consumer.committed([(topic, 0), (topic, 1)]) == offsets
    assert listener.calls[-1] == ("revoked", [(topic, 0), (topic, 1)])  # close revokes


@pytest.mark.lab  # a broker SIGKILLed and started again
async def test_the_group_moves_with_its_coordinator_and_resumes_from_commits(
    cluster: LocalCluster,
) -> None:
    from broker.listeners import BROKER_LISTENER

    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-failover", "pk-failover-readers"
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, range(100))
    async with trio.open_nursery() as nursery:
        member = Member(
            bootstrap, group, topic, enable_auto_commit=True, auto_commit_interval_ms=100
        )
        nursery.start_soon(member.run)
        await wait_until(lambda: len(member.values) >= 100, "the first records were not read")
        await member.halt()
        await member.consumer.commit()
        coordinator = member.consumer._group.offsets.coordinator_id
        assert coordinator in cluster.broker_ids
        cluster.kill(coordinator)
        try:
            survivors = ",".join(
                "{}:{}".format(*cluster.address(node, BROKER_LISTENER))
                for node in cluster.broker_ids
                if node != coordinator
            )
            await produce(survivors, topic, range(100, 130))
            member.stop, member.stopped = trio.Event(), trio.Event()
            nursery.start_soon(member.run)  # on through the coordinator's move
            await wait_until(lambda: len(member.values) >= 130, "the later records were not read")
            await member.halt()
            assert member.consumer._group.offsets.coordinator_id != coordinator
            await member.consumer.close()
            later = Member(survivors, group, topic)
            nursery.start_soon(later.run)
            await produce(survivors, topic, range(130, 140))
            await wait_until(lambda: len(later.values) >= 10, "a new member did not resume")
            await trio.sleep(1)
            await later.halt()
            await later.consumer.close()
        finally:
            cluster.start(coordinator)
    assert set(member.values) == {b"%d" % i for i in range(130)}
    assert sorted(later.values) == sorted(b"%d" % i for i in range(130, 140))


async def test_a_pattern_subscription_follows_new_matching_topics(cluster: LocalCluster) -> None:
    import re

    bootstrap = cluster.bootstrap_servers()
    group = "pk-pattern-readers"
    await create_topic(bootstrap, "pk-pattern-a", partitions=2)
    await create_topic(bootstrap, "pk-other", partitions=1)
    async with trio.open_nursery() as nursery:
        member = Member(bootstrap, group, "unused", metadata_max_age_ms=500)
        member.consumer.subscribe(re.compile(r"pk-pattern-.*"), member.listener)
        nursery.start_soon(member.run)
        await wait_until(
            lambda: member.assigned == {("pk-pattern-a", 0), ("pk-pattern-a", 1)}, "no match"
        )
        await create_topic(bootstrap, "pk-pattern-b", partitions=1)
        await wait_until(lambda: ("pk-pattern-b", 0) in member.assigned, "a new topic not seen")
        assert not any(t == "pk-other" for t, _ in member.assigned)
        await member.halt()
        await member.consumer.close()


async def test_a_member_that_stops_polling_leaves_and_rejoins_losing_its_partitions(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-slow", "pk-slow-readers"
    await create_topic(bootstrap, topic, partitions=2)
    async with trio.open_nursery() as nursery:
        busy = Member(bootstrap, group, topic)
        slow = Member(bootstrap, group, topic, max_poll_interval_ms=2_000)
        for member in (busy, slow):
            nursery.start_soon(member.run)
        await wait_until(lambda: split([busy, slow], 2), "no split")
        await slow.halt()  # no poll for longer than its max_poll_interval_ms
        await wait_until(lambda: len(busy.assigned) == 2, "the slow member did not leave")
        slow.stop, slow.stopped = trio.Event(), trio.Event()
        nursery.start_soon(slow.run)
        await wait_until(lambda: split([busy, slow], 2), "the slow member did not rejoin")
        # It left on its own: what it had was lost, not revoked (nothing to commit).
        assert [kind for kind, _ in slow.listener.calls] == ["assigned", "lost", "assigned"]
        for member in (busy, slow):
            await member.halt()
            await member.consumer.close()


async def test_a_static_member_keeps_its_partitions_across_a_restart(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "pk-static", "pk-static-readers"
    await create_topic(bootstrap, topic, partitions=2)
    async with trio.open_nursery() as nursery:
        members = [
            Member(bootstrap, group, topic, group_instance_id=f"reader-{i}") for i in range(2)
        ]
        for member in members:
            nursery.start_soon(member.run)
        await wait_until(lambda: split(members, 2), "no split")
        before = members[1].assigned
        others_rebalances = members[0].consumer._group.member.rebalances
        await members[1].halt()
        await members[1].consumer.close()  # a static member does not leave (KIP-345)
        again = Member(bootstrap, group, topic, group_instance_id="reader-1")
        nursery.start_soon(again.run)
        await wait_until(lambda: again.assigned == before, "the instance did not get its own")
        await trio.sleep(1)
        assert members[0].consumer._group.member.rebalances == others_rebalances
        for member in (members[0], again):
            await member.halt()
            await member.consumer.close()
