"""Produce, fetch and replication on brokers running in one trio process."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio

from broker.cluster_plan import plan_cluster
from broker.server import Server
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode
from storage.records import RecordInput, build_batch, compute_crc, iter_records
from tests.broker.test_controller_cluster import FAST, InProcessCluster, create_topics_body

SETTINGS = {**FAST, "replica_lag_time_max_ms": 60_000}


def batch(values: list[bytes], timestamp: int = 1_000) -> bytes:
    return build_batch([RecordInput(timestamp=timestamp, value=v) for v in values])


def forged(batch: bytes, position: int, fmt: str, value: int) -> bytes:
    """`batch` with one header field changed and its CRC made valid again."""
    changed = bytearray(batch)
    struct.pack_into(fmt, changed, position, value)
    struct.pack_into(">I", changed, 17, compute_crc(changed))
    return bytes(changed)


def produce_body(topic: str, records: bytes, *, acks: int = -1, partition: int = 0, **extra: Any):
    return {
        "acks": acks,
        "timeout_ms": 5_000,
        "topics": [
            {"name": topic, "partitions": [{"partition": partition, "records": records, **extra}]}
        ],
    }


def fetch_body(topic: str, offset: int, *, partition: int = 0, wait_ms: int = 0, **extra: Any):
    return {
        "max_wait_ms": wait_ms,
        "topics": [
            {
                "name": topic,
                "partitions": [{"partition": partition, "fetch_offset": offset, **extra}],
            }
        ],
    }


def first(answer: dict[str, Any]) -> dict[str, Any]:
    return answer["topics"][0]["partitions"][0]


async def topic_ready(cluster: InProcessCluster, name: str, factor: int, **extra: Any) -> int:
    """Create a one-partition topic; its leader once every replica has the partition."""
    answer = await cluster.call(
        max(cluster.configs), ApiKey.CREATE_TOPICS, create_topics_body(name, 1, factor, **extra)
    )
    # A forwarded CreateTopics whose first attempt outlived its timeout on a busy machine
    # is tried again, and the retry finds the topic the first attempt made (as in Kafka).
    assert answer["topics"][0]["error_code"] in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS)
    while True:
        meta = await cluster.call(max(cluster.configs), ApiKey.METADATA, {"topics": [name]})
        parts = meta["topics"][0]["partitions"]
        if parts and all(
            (name, 0) in cluster.servers[r].replicas.partitions for r in parts[0]["replicas"]
        ):
            return parts[0]["leader"]
        await trio.sleep(0.01)


def values(records: bytes) -> list[bytes]:
    return [r.value or b"" for r in iter_records(records)] if records else []


async def read_all(cluster: InProcessCluster, node: int, topic: str) -> list[bytes]:
    found: list[bytes] = []
    offset = 0
    while True:
        part = first(await cluster.call(node, ApiKey.FETCH, fetch_body(topic, offset)))
        assert part["error_code"] == ErrorCode.NONE, part
        if not part["records"]:
            return found
        for record in iter_records(part["records"]):
            found.append(record.value or b"")
            offset = record.offset + 1


def log_bytes(server: Server, topic: str, end: int) -> bytes:
    log = server.replicas.partitions[(topic, 0)].log
    return bytes(log.read(0, 1 << 24, max_offset=end)) if end else b""


async def started(nursery, tmp_path, **kinds: int) -> InProcessCluster:
    cluster = InProcessCluster(nursery, plan_cluster(str(tmp_path), **kinds, **SETTINGS))
    await cluster.start_all()
    await cluster.wait_brokers_unfenced(len([c for c in cluster.configs.values() if c.is_broker]))
    return cluster


@pytest.mark.slow
async def test_acks_all_is_replicated_to_every_isr_member_byte_for_byte(nursery, tmp_path) -> None:
    with trio.fail_after(30):
        cluster = await started(nursery, tmp_path, combined=3)
        leader = await topic_ready(cluster, "t", 3)
        sent = [f"m{i}".encode() for i in range(200)]
        for start in range(0, 200, 20):
            answer = await cluster.call(
                leader, ApiKey.PRODUCE, produce_body("t", batch(sent[start : start + 20]))
            )
            assert first(answer)["error_code"] == ErrorCode.NONE
            assert first(answer)["base_offset"] == start
        assert await read_all(cluster, leader, "t") == sent
        hw = cluster.servers[leader].replicas.partitions[("t", 0)].high_watermark
        assert hw == 200
        # acks=all answered only once every ISR member had it: their logs hold it all.
        for server in cluster.servers.values():
            assert log_bytes(server, "t", 200) == log_bytes(cluster.servers[leader], "t", 200)


@pytest.mark.slow
async def test_an_unreplicated_tail_is_truncated_when_the_old_leader_returns(
    nursery, tmp_path
) -> None:
    with trio.fail_after(60):
        cluster = await started(nursery, tmp_path, controllers=1, brokers=3)
        leader = await topic_ready(cluster, "t", 3)
        for n in range(5):
            answer = await cluster.call(
                leader, ApiKey.PRODUCE, produce_body("t", batch([b"ok%d" % n]))
            )
            assert first(answer)["error_code"] == ErrorCode.NONE
        # The followers stop fetching; the leader takes acks=1 writes nobody else has.
        followers = [b for b in (2, 3, 4) if b != leader]
        for b in followers:
            cluster.servers[b].replicas.fetchers.remove(
                cluster.servers[b].replicas.partitions[("t", 0)]
            )
        answer = await cluster.call(
            leader, ApiKey.PRODUCE, produce_body("t", batch([b"lost"] * 3), acks=1)
        )
        assert first(answer)["error_code"] == ErrorCode.NONE
        old = cluster.servers[leader]
        assert old.replicas.partitions[("t", 0)].log.log_end_offset == 8
        old.kill()
        # The controller fences it when its session runs out; a follower takes over.
        while True:
            meta = await cluster.call(followers[0], ApiKey.METADATA, {"topics": ["t"]})
            new_leader = first(meta)["leader"]
            if new_leader in followers:
                break
            await trio.sleep(0.02)
        for b in followers:  # back to normal replication under the new leader
            part = cluster.servers[b].replicas.partitions[("t", 0)]
            if b != new_leader:
                cluster.servers[b].replicas.fetchers.add(part, new_leader)
        answer = await cluster.call(new_leader, ApiKey.PRODUCE, produce_body("t", batch([b"new"])))
        assert first(answer)["error_code"] == ErrorCode.NONE and first(answer)["base_offset"] == 5

        returned = await cluster.start(leader)
        part = None
        while part is None or part.log.log_end_offset != 6 or part.leader_id != new_leader:
            await trio.sleep(0.02)
            part = returned.replicas.partitions.get(("t", 0))
        leader_log = log_bytes(cluster.servers[new_leader], "t", 6)
        assert log_bytes(returned, "t", 6) == leader_log
        assert b"lost" not in leader_log
        assert await read_all(cluster, new_leader, "t") == [
            b"ok0",
            b"ok1",
            b"ok2",
            b"ok3",
            b"ok4",
            b"new",
        ]


@pytest.mark.slow
async def test_min_insync_replicas_refuses_acks_all_and_writes_nothing(nursery, tmp_path) -> None:
    with trio.fail_after(60):
        cluster = await started(nursery, tmp_path, controllers=1, brokers=3)
        leader = await topic_ready(cluster, "t", 3, configs=[["min.insync.replicas", "2"]])
        answer = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", batch([b"a"])))
        assert first(answer)["error_code"] == ErrorCode.NONE
        for b in (2, 3, 4):
            if b != leader:
                cluster.servers[b].kill()
        part = cluster.servers[leader].replicas.partitions[("t", 0)]
        while part.isr != (leader,):  # fenced brokers leave the ISR
            await trio.sleep(0.02)
        end = part.log.log_end_offset
        refused = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", batch([b"b"])))
        assert first(refused)["error_code"] == ErrorCode.NOT_ENOUGH_REPLICAS
        assert part.log.log_end_offset == end  # nothing written
        taken = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", batch([b"c"]), acks=1))
        assert first(taken)["error_code"] == ErrorCode.NONE


@pytest.mark.slow
async def test_bad_produce_and_fetch_requests_get_their_error_codes(nursery, tmp_path) -> None:
    with trio.fail_after(30):
        cluster = await started(nursery, tmp_path, combined=2)
        leader = await topic_ready(cluster, "t", 2, configs=[["max.message.bytes", "1000"]])
        follower = 1 if leader == 2 else 2
        good = batch([b"x"])
        corrupt = bytearray(good)
        corrupt[-1] ^= 0xFF  # a record byte: the CRC no longer matches
        cases = [
            (leader, produce_body("t", bytes(corrupt)), ErrorCode.CORRUPT_MESSAGE),
            (leader, produce_body("t", batch([b"y" * 2000])), ErrorCode.MESSAGE_TOO_LARGE),
            (leader, produce_body("t", b"\x00" * 10), ErrorCode.CORRUPT_MESSAGE),
            (
                leader,
                produce_body("t", forged(good, 23, ">i", 2**31 - 1)),
                ErrorCode.CORRUPT_MESSAGE,
            ),
            (leader, produce_body("t", forged(good, 21, ">h", 0x20)), ErrorCode.INVALID_RECORD),
            (
                leader,
                produce_body("t", forged(good, 21, ">h", 7)),
                ErrorCode.UNSUPPORTED_COMPRESSION_TYPE,
            ),
            (
                leader,
                produce_body("t", forged(good, 21, ">h", 3)),  # says lz4, is not
                ErrorCode.CORRUPT_MESSAGE,
            ),
            (follower, produce_body("t", good), ErrorCode.NOT_LEADER_OR_FOLLOWER),
            (leader, produce_body("nope", good), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
            (leader, produce_body("t", good, partition=7), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
            (
                leader,
                produce_body("t", good, current_leader_epoch=5),
                ErrorCode.UNKNOWN_LEADER_EPOCH,
            ),
        ]
        for node, body, code in cases:
            assert first(await cluster.call(node, ApiKey.PRODUCE, body))["error_code"] == code
        bad_acks = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", good, acks=2))
        assert bad_acks["error_code"] == ErrorCode.INVALID_REQUIRED_ACKS
        assert cluster.servers[leader].replicas.partitions[("t", 0)].log.log_end_offset == 0

        ok = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", good))
        assert first(ok)["error_code"] == ErrorCode.NONE
        beyond = first(await cluster.call(leader, ApiKey.FETCH, fetch_body("t", 5)))
        assert beyond["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE
        assert (beyond["log_start_offset"], beyond["log_end_offset"]) == (0, 1)
        negative = first(await cluster.call(leader, ApiKey.FETCH, fetch_body("t", -1)))
        assert negative["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE
        stale = first(
            await cluster.call(leader, ApiKey.FETCH, fetch_body("t", 0, current_leader_epoch=9))
        )
        assert stale["error_code"] == ErrorCode.UNKNOWN_LEADER_EPOCH
        malformed = await cluster.call(leader, ApiKey.FETCH, {"topics": "t"})
        assert malformed["error_code"] == ErrorCode.INVALID_REQUEST
        # ... and the broker serves well-formed requests as before.
        assert await read_all(cluster, leader, "t") == [b"x"]


@pytest.mark.slow
async def test_consumer_fetch_long_polls_until_data_arrives(nursery, tmp_path) -> None:
    with trio.fail_after(30):
        cluster = await started(nursery, tmp_path, combined=1)
        leader = await topic_ready(cluster, "t", 1)
        got: list[Any] = []

        async def consume() -> None:
            got.append(await cluster.call(leader, ApiKey.FETCH, fetch_body("t", 0, wait_ms=5_000)))

        nursery.start_soon(consume)
        await trio.sleep(0.2)
        assert got == []  # still waiting: nothing to read
        began = trio.current_time()
        await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", batch([b"late"])))
        while not got:
            await trio.sleep(0.005)
        assert trio.current_time() - began < 1.0
        assert values(first(got[0])["records"]) == [b"late"]


@pytest.mark.slow
async def test_list_offsets_and_delete_records(nursery, tmp_path) -> None:
    with trio.fail_after(30):
        cluster = await started(nursery, tmp_path, combined=1)
        leader = await topic_ready(cluster, "t", 1)
        for n, ts in enumerate((1_000, 2_000, 3_000)):
            await cluster.call(
                leader, ApiKey.PRODUCE, produce_body("t", batch([b"%d" % n] * 2, ts))
            )

        async def offset_at(timestamp: int) -> int:
            body = {
                "topics": [{"name": "t", "partitions": [{"partition": 0, "timestamp": timestamp}]}]
            }
            return first(await cluster.call(leader, ApiKey.LIST_OFFSETS, body))["offset"]

        assert await offset_at(-2) == 0
        assert await offset_at(-1) == 6
        assert await offset_at(1_500) == 2
        assert await offset_at(9_999) == -1
        body = {"topics": [{"name": "t", "partitions": [{"partition": 0, "offset": 4}]}]}
        deleted = first(await cluster.call(leader, ApiKey.DELETE_RECORDS, body))
        assert deleted == {"partition": 0, "error_code": 0, "low_watermark": 4}
        assert await offset_at(-2) == 4
        gone = first(await cluster.call(leader, ApiKey.FETCH, fetch_body("t", 0)))
        assert gone["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE
        too_far = {"topics": [{"name": "t", "partitions": [{"partition": 0, "offset": 99}]}]}
        refused = first(await cluster.call(leader, ApiKey.DELETE_RECORDS, too_far))
        assert refused["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE


async def test_a_client_cannot_pose_as_a_follower(nursery, tmp_path) -> None:
    """Issue 14, finding 4: follower fetches only on the REPLICATION listener, and even
    there an offset past the log end is never recorded as a follower's progress."""
    with trio.fail_after(30):
        cluster = await started(nursery, tmp_path, combined=3)
        leader = await topic_ready(cluster, "t", 3)
        answer = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", batch([b"a"])))
        assert first(answer)["error_code"] == ErrorCode.NONE
        partition = cluster.servers[leader].replicas.partitions[("t", 0)]
        follower = next(r for r in partition.replicas if r != leader)
        epoch = cluster.servers[follower].lifecycle.broker_epoch  # type: ignore[union-attr]
        spoof = fetch_body("t", 10**6, current_leader_epoch=partition.leader_epoch)
        spoof.update(replica_id=follower, broker_epoch=epoch)
        refused = await cluster.call(leader, ApiKey.FETCH, spoof)
        assert refused["error_code"] == ErrorCode.INVALID_REQUEST
        consumer_on_replication = await cluster.call(
            leader, ApiKey.FETCH, fetch_body("t", 0), listener="REPLICATION"
        )
        assert consumer_on_replication["error_code"] == ErrorCode.INVALID_REQUEST
        before = partition.followers[follower].log_end_offset
        beyond = await cluster.call(leader, ApiKey.FETCH, spoof, listener="REPLICATION")
        assert first(beyond)["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE
        assert partition.followers[follower].log_end_offset <= max(before, 1)
        assert partition.high_watermark <= partition.log.log_end_offset


async def test_a_consumer_meeting_a_corrupt_record_raises_once_naming_where(
    nursery, tmp_path
) -> None:
    """Issue 14, finding 6: never a loop on the same bytes."""
    from client.consumer import Consumer, CorruptRecord

    with trio.fail_after(60):
        cluster = await started(nursery, tmp_path, combined=1)
        leader = await topic_ready(cluster, "t", 1)
        good = batch([b"a", b"b"])
        garbage = bytearray(batch([b"c"]))
        garbage[61:] = b"\x07" * (len(garbage) - 61)  # the record's bytes: not a record
        struct.pack_into(">I", garbage, 17, compute_crc(garbage))
        for records in (good, bytes(garbage)):
            answer = await cluster.call(leader, ApiKey.PRODUCE, produce_body("t", records))
            assert first(answer)["error_code"] == ErrorCode.NONE
        host, port = cluster.configs[leader].listeners["PLAINTEXT"]
        async with Consumer(f"{host}:{port}", auto_offset_reset="earliest") as consumer:
            consumer.assign([("t", 0)])
            got = []
            while len(got) < 2:
                got += [r.value for r in await consumer.poll(timeout_s=5)]
            assert got == [b"a", b"b"]
            with pytest.raises(CorruptRecord) as caught:
                await consumer.poll(timeout_s=5)
            assert caught.value.offset == 2 and caught.value.tp == ("t", 0)
            consumer.seek(("t", 0), 3)  # past it: the consumer goes on
            assert await consumer.poll(timeout_s=0.5) == []
