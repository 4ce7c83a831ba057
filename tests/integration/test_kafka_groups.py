"""Consumer groups of Kafka's own clients against a 3-node pykraft cluster (issue 16).

kafka-python, confluent-kafka (librdkafka) and aiokafka consumers `subscribe` in groups of
three on a 6-partition topic: the broker creates `__consumer_offsets` (6 partitions here)
on the first FindCoordinator, the group's coordinator (the leader of its partition)
assigns each partition to one member, the members consume every record once between
them, commit and close, and a new member of the same group resumes from the committed
offsets. librdkafka's cooperative-sticky assignor rebalances incrementally (KIP-429).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, cast

import pytest

from broker.listeners import BROKER_LISTENER
from broker.local_cluster import LocalCluster

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, KafkaError  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402
from kafka.errors import InvalidTopicError  # noqa: E402

PARTITIONS = 6
RECORDS = 400
LATER = 40
WAIT_S = 120
SESSION_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("kafka-groups")
    with LocalCluster(str(root), combined=3, offsets_topic_num_partitions=6) as running:
        running.start_all()
        yield running


def create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        answer = admin.create_topics([NewTopic(name, PARTITIONS, 3)])
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, values: range) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    try:
        for i in values:
            producer.send(topic, key=b"%d" % i, value=b"%d" % i)
        producer.flush(timeout=WAIT_S)
    finally:
        producer.close()


class Member:
    """One consumer polled by a thread of its own (a join blocks its poll)."""

    def __init__(self, poll: Callable[[], list[bytes]], assignment: Callable[[], set[int]]):
        self._poll = poll
        self._assignment = assignment
        self.values: list[bytes] = []
        self.assigned: set[int] = set()
        self.stop = threading.Event()
        self.idle = threading.Event()  # set: the thread no longer touches the consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.values.extend(self._poll())
                self.assigned = self._assignment()
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self.idle.set()

    def halt(self) -> None:
        self.stop.set()
        assert self.idle.wait(WAIT_S), "a member's poll did not return"
        assert self.error is None, self.error


def wait_until(condition: Callable[[], bool], what: str, members: list[Member]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        for member in members:
            assert member.error is None, member.error
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def wait_split(members: list[Member]) -> None:
    """Until each member holds some partitions and together all, none twice."""

    def split() -> bool:
        sets = [m.assigned for m in members]
        return (
            all(sets)
            and sum(map(len, sets)) == PARTITIONS
            and len(set().union(*sets)) == PARTITIONS
        )

    wait_until(split, f"no split: {[m.assigned for m in members]}", members)


def kafka_python_member(bootstrap: str, topic: str, group: str) -> tuple[Member, Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=1_000,
    )
    consumer.subscribe([topic])

    def poll() -> list[bytes]:
        batches = consumer.poll(timeout_ms=200)
        return [r.value for records in batches.values() for r in records]

    return Member(poll, lambda: {tp.partition for tp in consumer.assignment()}), consumer


def confluent_member(bootstrap: str, topic: str, group: str) -> tuple[Member, Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1_000,
        }
    )
    consumer.subscribe([topic])

    def poll() -> list[bytes]:
        values: list[bytes] = []
        for message in consumer.consume(num_messages=100, timeout=0.2):
            error = message.error()
            # A topic just created may not be in every broker's metadata yet.
            if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            assert error is None, error
            values.append(message.value() or b"")
        return values

    return Member(poll, lambda: {tp.partition for tp in consumer.assignment()}), consumer


def commit_kafka_python(consumer: Any) -> None:
    consumer.commit()


def commit_confluent(consumer: Any) -> None:
    consumer.commit(asynchronous=False)


@pytest.mark.parametrize(
    "client",
    [
        pytest.param((kafka_python_member, commit_kafka_python), id="kafka-python"),
        pytest.param(
            (confluent_member, commit_confluent), id="confluent-kafka", marks=pytest.mark.lab
        ),
    ],
)
def test_group_of_three_consumes_everything_once_and_resumes(
    cluster: LocalCluster, client: Any
) -> None:
    start, commit = client
    bootstrap = cluster.bootstrap_servers()
    name = start.__name__.split("_")[0]
    topic, group = f"group-{name}", f"readers-{name}"
    create_topic(bootstrap, topic)
    started = [start(bootstrap, topic, group) for _ in range(3)]
    members = [member for member, _ in started]
    wait_split(members)
    produce(bootstrap, topic, range(RECORDS))
    wait_until(
        lambda: sum(len(m.values) for m in members) >= RECORDS,
        "not everything was consumed",
        members,
    )
    time.sleep(1)  # anything more (a duplicate) would show now
    for member in members:
        member.halt()
    consumed = [value for member in members for value in member.values]
    assert sorted(consumed) == sorted(b"%d" % i for i in range(RECORDS))  # each once
    assert sum(len(m.assigned) for m in members) == PARTITIONS  # no partition twice
    for _, consumer in started:
        commit(consumer)  # all before any leaves (a leave starts a rebalance)
    for _, consumer in started:
        consumer.close()

    produce(bootstrap, topic, range(RECORDS, RECORDS + LATER))
    third, third_consumer = start(bootstrap, topic, group)
    wait_until(lambda: len(third.values) >= LATER, "the later records were not read", [third])
    time.sleep(1)
    third.halt()
    third_consumer.close()
    assert sorted(third.values) == sorted(b"%d" % i for i in range(RECORDS, RECORDS + LATER))


def test_clients_cannot_create_reserved_topics(cluster: LocalCluster) -> None:
    admin = KafkaAdminClient(
        bootstrap_servers=cluster.bootstrap_servers(), request_timeout_ms=30_000
    )
    try:
        try:
            answer = admin.create_topics([NewTopic("__mine", 1, 1)], validate_only=False)
        except InvalidTopicError:
            return
        assert [t["error_code"] for t in answer["topics"]] == [InvalidTopicError.errno], answer
    finally:
        admin.close()


MEMBER_SCRIPT = """
import sys
from kafka import KafkaConsumer
consumer = KafkaConsumer(bootstrap_servers=sys.argv[1], group_id=sys.argv[3],
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=int(sys.argv[4]), heartbeat_interval_ms=1000)
consumer.subscribe([sys.argv[2]])
last = None
while True:
    consumer.poll(timeout_ms=200)
    assigned = sorted(tp.partition for tp in consumer.assignment())
    if assigned != last:
        print(",".join(map(str, assigned)), flush=True)
        last = assigned
"""


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_sigkilled_members_partitions_move_within_the_session_timeout(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "group-sigkill", "readers-sigkill"
    create_topic(bootstrap, topic)
    process = subprocess.Popen(
        [sys.executable, "-c", MEMBER_SCRIPT, bootstrap, topic, group, str(SESSION_TIMEOUT_MS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    other: dict[str, set[int]] = {"assigned": set()}

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            other["assigned"] = {int(p) for p in line.strip().split(",") if p}

    threading.Thread(target=read, daemon=True).start()
    member, consumer = kafka_python_member(bootstrap, topic, group)
    try:
        stand_in = Member(lambda: [], lambda: other["assigned"])
        wait_split([member, stand_in])
        stand_in.halt()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=WAIT_S)
        killed = time.monotonic()
        wait_until(lambda: len(member.assigned) == PARTITIONS, "partitions did not move", [member])
        moved_s = time.monotonic() - killed
        # The session timeout, then a rebalance the survivor joins at its next heartbeat.
        assert moved_s < SESSION_TIMEOUT_MS / 1000 + 5, moved_s
        member.halt()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        member.stop.set()
        member.idle.wait(WAIT_S)
        consumer.close()


@pytest.mark.lab  # a CI step of its own: the default suite's budget
def test_group_resumes_after_sigkill_of_its_coordinators_broker(cluster: LocalCluster) -> None:
    """The coordinator's broker is SIGKILLed after a commit: the partition's new leader
    loads the group from its replica of `__consumer_offsets`, and a new member resumes
    from the committed offsets."""
    from confluent_kafka.admin import AdminClient

    from broker.groups import partition_for

    bootstrap = cluster.bootstrap_servers()
    topic, group = "group-failover", "readers-failover"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, range(100))
    member, consumer = kafka_python_member(bootstrap, topic, group)
    wait_until(lambda: len(member.values) >= 100, "the first records were not read", [member])
    member.halt()
    assert sorted(member.values) == sorted(b"%d" % i for i in range(100))
    consumer.commit()
    consumer.close()

    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    offsets = metadata.topics["__consumer_offsets"].partitions
    coordinator = offsets[partition_for(group, len(offsets))].leader
    cluster.kill(coordinator)
    try:
        survivors = ",".join(
            "{}:{}".format(*cluster.address(node_id, BROKER_LISTENER))
            for node_id in cluster.broker_ids
            if node_id != coordinator
        )
        produce(survivors, topic, range(100, 130))
        later, later_consumer = kafka_python_member(survivors, topic, group)
        wait_until(lambda: len(later.values) >= 30, "the later records were not read", [later])
        time.sleep(1)
        later.halt()
        later_consumer.close()
        assert sorted(later.values) == sorted(b"%d" % i for i in range(100, 130))
    finally:
        cluster.start(coordinator)


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_admin_clients_list_describe_fetch_offsets_and_delete_groups(
    cluster: LocalCluster,
) -> None:
    bootstrap = cluster.bootstrap_servers()
    topic, group = "group-admin", "readers-admin"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, range(20))
    member, consumer = kafka_python_member(bootstrap, topic, group)
    wait_until(lambda: len(member.values) >= 20, "the records were not read", [member])
    member.halt()
    consumer.commit()
    from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def listed() -> set[str]:
        return {g.group_id for g in admin.list_consumer_groups().result(timeout=WAIT_S).valid}

    def described() -> Any:
        return admin.describe_consumer_groups([group])[group].result(timeout=WAIT_S)

    def committed() -> list[int]:
        asked = [ConsumerGroupTopicPartitions(group)]
        answer = admin.list_consumer_group_offsets(asked)[group].result(timeout=WAIT_S)
        return [tp.offset for tp in answer.topic_partitions]

    assert group in listed()
    stable = described()
    assert stable.state == ConsumerGroupState.STABLE and len(stable.members) == 1, stable
    assert sum(committed()) == 20
    consumer.close()  # leaves: the group is Empty, with its offsets
    assert described().state == ConsumerGroupState.EMPTY
    admin.delete_consumer_groups([group])[group].result(timeout=WAIT_S)
    assert group not in listed()
    assert all(offset < 0 for offset in committed())


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_offset_fetch_v8_answers_many_groups_at_once(cluster: LocalCluster) -> None:
    """OffsetFetch v8 (KIP-709), sent raw: each group's offsets from its coordinator,
    NOT_COORDINATOR for the groups another broker coordinates."""
    from client.protocol.kafka import decode_response, encode_request, messages

    bootstrap = cluster.bootstrap_servers()
    topic = "group-v8"
    create_topic(bootstrap, topic)
    produce(bootstrap, topic, range(12))
    groups = [f"v8-{i}" for i in range(3)]
    for group in groups:
        member, consumer = kafka_python_member(bootstrap, topic, group)
        wait_until(
            partial(lambda m: len(m.values) >= 12, member), f"{group} read nothing", [member]
        )
        member.halt()
        consumer.commit()
        consumer.close()
    Request = messages.OffsetFetchRequest
    request = Request(
        groups=tuple(
            Request.OffsetFetchRequestGroup(
                group_id=group,
                topics=(Request.OffsetFetchRequestTopics(name=topic, partition_indexes=(0, 1)),),
            )
            for group in [*groups, "v8-unknown"]
        )
    )
    found: dict[str, list[int]] = {}
    for address in bootstrap.split(","):
        host, port = address.split(":")
        header = messages.RequestHeader(
            request_api_key=9, request_api_version=8, correlation_id=7, client_id="raw"
        )
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(bytes(encode_request(header, request)))
            reader = sock.makefile("rb")
            size = int.from_bytes(reader.read(4), "big")
            body = reader.read(size)
        assert len(body) == size
        for answer in decode_response(body, 9, 8)[1].groups:
            assert answer.error_code in (0, 16), answer  # NONE, NOT_COORDINATOR
            if answer.error_code == 0:
                found[answer.group_id] = [
                    p.committed_offset for t in answer.topics for p in t.partitions
                ]
    assert set(found) == {*groups, "v8-unknown"}, found
    assert found["v8-unknown"] == [-1, -1]
    for group in groups:
        assert len(found[group]) == 2 and sum(found[group]) > 0, found


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_aiokafka_group_of_three_consumes_everything_once_and_resumes(
    cluster: LocalCluster,
) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    import asyncio

    bootstrap = cluster.bootstrap_servers()
    topic, group = "group-aiokafka", "readers-aiokafka"
    create_topic(bootstrap, topic)

    def member() -> Any:
        return aiokafka.AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1_000,
        )

    async def poll(consumer: Any, values: list[bytes]) -> None:
        batches = await consumer.getmany(timeout_ms=200)
        values.extend(r.value for records in batches.values() for r in records)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        members = [member() for _ in range(3)]
        await asyncio.gather(*(m.start() for m in members))
        got: list[list[bytes]] = [[] for _ in members]

        async def poll_all() -> None:
            await asyncio.gather(*(poll(m, values) for m, values in zip(members, got, strict=True)))

        deadline = time.monotonic() + WAIT_S
        while True:
            await poll_all()
            sets = [{tp.partition for tp in m.assignment()} for m in members]
            if all(sets) and sum(map(len, sets)) == len(set().union(*sets)) == PARTITIONS:
                break
            assert time.monotonic() < deadline, sets
        await asyncio.to_thread(produce, bootstrap, topic, range(RECORDS))
        while sum(map(len, got)) < RECORDS:
            assert time.monotonic() < deadline, [len(v) for v in got]
            await poll_all()
        for _ in range(5):  # anything more (a duplicate) would show now
            await poll_all()
        await asyncio.gather(*(m.commit() for m in members))
        await asyncio.gather(*(m.stop() for m in members))
        await asyncio.to_thread(produce, bootstrap, topic, range(RECORDS, RECORDS + LATER))
        later_member, later = member(), cast(list[bytes], [])
        await later_member.start()
        try:
            while len(later) < LATER:
                assert time.monotonic() < deadline, len(later)
                await poll(later_member, later)
            for _ in range(5):
                await poll(later_member, later)
        finally:
            await later_member.stop()
        return [value for values in got for value in values], later

    consumed, later = asyncio.run(scenario())
    assert sorted(consumed) == sorted(b"%d" % i for i in range(RECORDS))
    assert sorted(later) == sorted(b"%d" % i for i in range(RECORDS, RECORDS + LATER))


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_offset_delete_refuses_subscribed_topics_until_the_group_is_empty(
    cluster: LocalCluster,
) -> None:
    """kafka-python's `delete_group_offsets` (OffsetDelete v0, KIP-496)."""
    from kafka import TopicPartition
    from kafka.errors import GroupIdNotFoundError, GroupSubscribedToTopicError, NoError
    from kafka.structs import OffsetAndMetadata

    bootstrap = cluster.bootstrap_servers()
    topic, other, group = "group-offset-delete", "group-offset-delete-other", "readers-delete"
    create_topic(bootstrap, topic)
    create_topic(bootstrap, other)
    produce(bootstrap, topic, range(20))
    member, consumer = kafka_python_member(bootstrap, topic, group)
    wait_until(lambda: len(member.values) >= 20, "the records were not read", [member])
    member.halt()
    consumer.commit()
    consumer.commit({TopicPartition(other, 0): OffsetAndMetadata(5, "", -1)})
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        subscribed, unsubscribed = TopicPartition(topic, 0), TopicPartition(other, 0)
        # Stable, and its member consumes `topic`: only `other`'s offset goes.
        answer = admin.delete_group_offsets(group, [subscribed, unsubscribed])
        assert answer == {subscribed: GroupSubscribedToTopicError, unsubscribed: NoError}
        left = admin.list_group_offsets(group)[group]
        assert unsubscribed not in left and subscribed in left
        with pytest.raises(GroupIdNotFoundError):
            admin.delete_group_offsets("no-such-group", [subscribed])
        consumer.close()  # the group is Empty now
        assert admin.delete_group_offsets(group, [subscribed]) == {subscribed: NoError}
        assert subscribed not in admin.list_group_offsets(group)[group]
    finally:
        admin.close()


@pytest.mark.lab  # a CI step of its own (`pytest -m lab`): the suite's budget
def test_confluent_cooperative_sticky_rebalances_incrementally(cluster: LocalCluster) -> None:
    """KIP-429 with librdkafka: when a third member joins two that share the topic, the
    two give up only what moves to it; nothing they keep is revoked and reassigned."""
    bootstrap = cluster.bootstrap_servers()
    topic, group = "group-cooperative", "readers-cooperative"
    create_topic(bootstrap, topic)
    events: list[tuple[int, str, set[int]]] = []
    lock = threading.Lock()

    def cooperative_member(index: int) -> tuple[Member, Any]:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": 1_000,
                "partition.assignment.strategy": "cooperative-sticky",
            }
        )

        def note(kind: str) -> Callable[[Any, list[Any]], None]:
            def callback(_consumer: Any, partitions: list[Any]) -> None:
                with lock:
                    events.append((index, kind, {tp.partition for tp in partitions}))

            return callback

        consumer.subscribe([topic], on_assign=note("assign"), on_revoke=note("revoke"))

        def poll() -> list[bytes]:
            message = consumer.poll(0.2)
            return [] if message is None or message.error() else [message.value() or b""]

        return Member(poll, lambda: {tp.partition for tp in consumer.assignment()}), consumer

    started = [cooperative_member(0), cooperative_member(1)]
    try:
        wait_split([m for m, _ in started])
        before = {i: set(m.assigned) for i, (m, _) in enumerate(started)}
        with lock:
            events.clear()
        started.append(cooperative_member(2))
        members = [m for m, _ in started]
        wait_split(members)
        after = {i: set(m.assigned) for i, (m, _) in enumerate(started)}
        with lock:
            seen = list(events)
        for index in (0, 1):
            revoked = set().union(*(p for i, kind, p in seen if i == index and kind == "revoke"))
            # Incremental: only the partitions that left this member were revoked...
            assert revoked == before[index] - after[index], (index, seen)
            # ...and what it kept was never handed to it again.
            assigned = set().union(*(p for i, kind, p in seen if i == index and kind == "assign"))
            assert assigned.isdisjoint(before[index] & after[index]), (index, seen)
        assert after[2] and after[2] == set().union(*(before[0] - after[0], before[1] - after[1]))
    finally:
        for member, _ in started:
            member.stop.set()
        for member, consumer in started:
            member.idle.wait(WAIT_S)
            consumer.close()
