"""Broken invariants stop a node; clean shutdowns are remembered; flush.messages syncs
before it answers (issue 13)."""

from __future__ import annotations

import os
import random

import attrs
import pytest
import trio

from broker import clean_shutdown
from broker.cluster_plan import plan_cluster
from broker.group_commit import GroupCommit
from broker.server import Server
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode
from client.protocol.rpc import RpcClient, RpcServer
from kraft.controller.quorum_controller import QuorumController
from kraft.controller.result import ControllerResult
from kraft.metadata.records import PartitionChangeRecord
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch
from tests.broker.test_controller_cluster import FAST, InProcessCluster


async def test_an_assertion_in_a_handler_stops_the_server() -> None:
    async def handler(api_key: int, version: int, body: object) -> object:
        if api_key == 1:
            raise ValueError("an ordinary bug: answered, the server keeps going")
        raise AssertionError("an invariant broke")

    server = RpcServer(handler, name="test")
    with trio.fail_after(10), pytest.RaisesGroup(AssertionError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            client = RpcClient("127.0.0.1", port, client_id="t", rng=random.Random(0))
            answer = await client.request(1, API_VERSION, {}, timeout_s=5)
            assert answer["error_code"] == ErrorCode.UNKNOWN_SERVER_ERROR
            with pytest.raises(Exception):  # noqa: B017 - the connection dies with the server
                await client.request(2, API_VERSION, {}, timeout_s=5)
            await trio.sleep_forever()  # the server's failure ends the nursery


async def test_a_node_whose_handler_breaks_an_invariant_stops(tmp_path, monkeypatch) -> None:
    async def broken(self: QuorumController, body: object) -> object:
        raise AssertionError("the image is not what it should be")

    monkeypatch.setattr(QuorumController, "_describe_image", broken)
    with trio.fail_after(60), pytest.RaisesGroup(AssertionError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(nursery, plan_cluster(str(tmp_path), combined=1, **FAST))
            server = await cluster.start(1)
            with pytest.raises(Exception):  # noqa: B017 - no answer: the node is going down
                await cluster.call(1, ApiKey.DESCRIBE_IMAGE, {}, listener="CONTROLLER")
            await server.stopped.wait()
            await trio.sleep_forever()


async def test_a_decision_that_does_not_replay_is_never_proposed(nursery, tmp_path) -> None:
    cluster = InProcessCluster(nursery, plan_cluster(str(tmp_path), combined=1, **FAST))
    with trio.fail_after(60):
        server = await cluster.start(1)
        await cluster.wait_brokers_unfenced(1)
    controller, node = server.controller, server.node
    assert controller is not None and node is not None
    end_before = node.log_end_offset
    # A change of a partition of a topic that does not exist: replay refuses it.
    bad = ControllerResult(
        records=(PartitionChangeRecord(topic_id="no-such-topic", partition=0, leader=1),),
        response=None,
    )
    with pytest.raises(Exception, match="invalid") as caught:
        await controller._write(lambda image, offset: bad)
    assert getattr(caught.value, "code", None) == ErrorCode.UNKNOWN_SERVER_ERROR
    assert node.log_end_offset == end_before and controller.invalid_results == 1
    # The controller still works.
    answer = await cluster.call(
        1,
        ApiKey.CREATE_TOPICS,
        {"topics": [{"name": "t", "partitions": 1, "replication_factor": 1}]},
    )
    assert answer["topics"][0]["error_code"] == ErrorCode.NONE


async def test_a_graceful_stop_leaves_the_marker_and_a_start_takes_it(tmp_path) -> None:
    (config,) = plan_cluster(str(tmp_path), combined=1, **FAST)
    cluster_id = "c"
    from broker.meta_properties import format_directory

    format_directory(config.data_dir, cluster_id=cluster_id, node_id=1)
    marker = os.path.join(config.data_dir, clean_shutdown.MARKER_FILE)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = Server(config, cluster_id=cluster_id, seed=1)
            await nursery.start(server.run)
            await server.lifecycle.unfenced.wait()  # type: ignore[union-attr]
            epoch = server.lifecycle.broker_epoch  # type: ignore[union-attr]
            assert not os.path.exists(marker)
            await server.stop()
        with open(marker) as file:
            assert file.read().strip() == str(epoch)
        async with trio.open_nursery() as nursery:
            server = Server(config, cluster_id=cluster_id, seed=2)
            await nursery.start(server.run)
            assert server.lifecycle.previous_broker_epoch == epoch  # type: ignore[union-attr]
            assert not os.path.exists(marker)  # a crash from here on is unclean
            server.kill()
        assert not os.path.exists(marker)  # a kill leaves none


def test_a_marker_that_is_not_an_epoch_counts_as_unclean(tmp_path) -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    file = fs.open("/d/" + clean_shutdown.MARKER_FILE)
    file.append(b"garbage")
    file.sync()
    assert clean_shutdown.take(fs, "/d") == clean_shutdown.UNCLEAN
    assert not fs.exists("/d/" + clean_shutdown.MARKER_FILE)


def batch(n: int) -> bytes:
    return build_batch([RecordInput(timestamp=1, key=None, value=b"v%d" % i) for i in range(n)])


async def test_group_commit_syncs_once_for_appends_that_arrive_meanwhile(tmp_path) -> None:
    log = SegmentedLog.open(str(tmp_path / "p-0"), LogConfig(flush_messages=1))
    commit = GroupCommit(log, blocking_io=True)
    first = log.append(batch(1), leader_epoch=0)
    results = []

    async def waiter(end: int) -> None:
        await commit.wait_durable(end)
        results.append(log.durable_end_offset >= end)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, first.last_offset + 1)
            await trio.sleep(0)  # the first fsync is under way in a worker thread
            later = [log.append(batch(1), leader_epoch=0) for _ in range(5)]
            for info in later:
                nursery.start_soon(waiter, info.last_offset + 1)
    assert results == [True] * 6 and log.durable_end_offset == log.log_end_offset
    assert commit.fsyncs <= 2  # the first, then one for all five that waited
    log.close()


async def test_flushed_appends_survive_a_crash_of_the_file_system() -> None:
    fs = MemoryFileSystem()
    log = SegmentedLog.open("/p-0", LogConfig(), fs=fs)
    commit = GroupCommit(log, blocking_io=False)
    synced = log.append(batch(3), leader_epoch=0)
    await commit.wait_durable(synced.last_offset + 1)
    log.append(batch(3), leader_epoch=0)  # never synced
    fs.crash(random.Random(0), tear=False)
    fs.close_handles()
    recovered = SegmentedLog.open("/p-0", LogConfig(), fs=fs)
    assert recovered.log_end_offset == synced.last_offset + 1


async def test_a_truncation_during_a_flush_never_vouches_for_what_came_after(tmp_path) -> None:
    log = SegmentedLog.open(str(tmp_path / "p-0"), LogConfig())
    log.append(batch(2), leader_epoch=0)
    log.append(batch(2), leader_epoch=0)
    pending = log.prepare_flush()
    assert pending is not None
    log.truncate_to(2)
    log.append(batch(4), leader_epoch=1)  # offsets 2-5 again, not synced
    pending.file.sync()
    log.complete_flush(pending)
    assert log.durable_end_offset == 2
    log.close()


async def test_a_restarting_broker_acts_on_no_image_older_than_its_registration() -> None:
    """A broker replaying its metadata log from the start must not lead what it led
    before its crash: it would serve its cut-short log to followers that still follow
    that leader epoch, and they would truncate committed records (the simulator found
    this with `--faults crash,kill-leader`)."""
    from broker.replica_manager import ReplicaManager
    from kraft.controller.replication import CreateTopic, create_topics
    from tests.kraft.test_replication_control import apply, cluster

    image = cluster(1)
    created = create_topics(
        image, [CreateTopic(name="t", partitions=1, replication_factor=1)], random.Random(0)
    )
    old = apply(image, created)  # broker 1 leads t-0 here
    registration_offset = old.offset + 5
    manager = ReplicaManager(
        broker_id=1,
        data_dir="/data",
        channel=None,  # type: ignore[arg-type]
        broker_epoch=lambda: registration_offset,
        fs=MemoryFileSystem(),
    )
    manager.on_metadata(None, old)
    assert manager.partitions == {} and not manager.caught_up
    caught_up = attrs.evolve(old, offset=registration_offset)
    manager.on_metadata(None, caught_up)
    assert manager.caught_up and manager.partition("t", 0).is_leader


async def test_a_partition_whose_log_could_not_be_opened_comes_back_by_itself(
    autojump_clock,
) -> None:
    """Disk full while a topic is created: the partition is missing, not lost for good."""
    from broker.replica_manager import ReplicaManager
    from kraft.controller.replication import CreateTopic, create_topics
    from tests.kraft.test_replication_control import apply, cluster

    image = cluster(1)
    created = create_topics(
        image, [CreateTopic(name="t", partitions=1, replication_factor=1)], random.Random(0)
    )
    image = apply(image, created)
    fs = MemoryFileSystem(capacity_bytes=0)
    fs.makedirs("/data")
    manager = ReplicaManager(
        broker_id=1,
        data_dir="/data",
        channel=None,  # type: ignore[arg-type]
        broker_epoch=lambda: 0,
        fs=fs,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.on_metadata(None, image)
        assert ("t", 0) not in manager.partitions
        await trio.sleep(5)
        assert ("t", 0) not in manager.partitions  # still full: still missing, no crash
        fs.capacity_bytes = None  # space freed
        await trio.sleep(5)
        assert manager.partition("t", 0).is_leader
        nursery.cancel_scope.cancel()
