"""Producer, Consumer and Admin over Kafka's protocol against one in-process pykraft node:
every acks setting, the admin calls pykraft serves beyond Tansu's (CreatePartitions,
DescribeQuorum, ElectLeaders), per-topic errors, and the one native call (DescribeImage)."""

from __future__ import annotations

import pytest
import trio

from client.admin import Admin, NewTopic
from client.consumer import Consumer
from client.producer import Producer
from client.protocol.errors import ErrorCode, KafkaError

TIMEOUT_S = 60
RECORDS = 200


@pytest.fixture
async def bootstrap(nursery, tmp_path) -> str:
    from tests.broker.test_data_plane import started

    cluster = await started(nursery, tmp_path, combined=1)
    (config,) = cluster.configs.values()
    host, port = config.listeners["PLAINTEXT"]
    return f"{host}:{port}"


async def test_every_acks_setting_is_produced_and_read_back(bootstrap: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with Admin(bootstrap) as admin:
            await admin.create_topics([NewTopic("t", partitions=1)])
        sent = []
        for acks in ("all", 1, 0):
            async with Producer(bootstrap, acks=acks, compression="lz4") as producer:
                deliveries = [
                    await producer.send("t", b"%s-%d" % (str(acks).encode(), i), partition=0)
                    for i in range(RECORDS)
                ]
                await producer.flush()
            offsets = [(await d).offset for d in deliveries]
            if acks == 0:
                assert offsets == [-1] * RECORDS  # no answer, so no offset
            else:
                assert offsets == list(range(len(sent), len(sent) + RECORDS))
            sent += [b"%s-%d" % (str(acks).encode(), i) for i in range(RECORDS)]
        async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([("t", 0)])
            got: list[bytes] = []
            while len(got) < len(sent):
                got += [r.value or b"" for r in await consumer.poll(5.0)]
            assert got == sent
            assert await consumer.list_offsets({("t", 0): -1}) == {("t", 0): len(sent)}


async def test_admin_calls_beyond_the_common_ones(bootstrap: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with Admin(bootstrap) as admin:
            await admin.create_topics([NewTopic("grown", partitions=1)])
            await admin.create_partitions({"grown": 3})
            (topic,) = await admin.describe_topics(["grown"])
            assert len(topic.partitions) == 3
            with pytest.raises(KafkaError) as caught:
                await admin.create_topics([NewTopic("grown", partitions=1)])
            assert caught.value.code == ErrorCode.TOPIC_ALREADY_EXISTS
            await admin.alter_configs("grown", {"retention.ms": "3600000"})
            configs = await admin.describe_configs("grown")
            assert configs["retention.ms"] == "3600000"
            quorum = await admin.describe_quorum()
            assert quorum.leader_id >= 0 and [v.replica_id for v in quorum.voters] == [
                quorum.leader_id
            ]
            assert await admin.elect_preferred_leaders() == 0  # one replica: nothing to move
            image = await admin.describe_image()  # pykraft's own API, over the native codec
            assert image["topics"] == 1 and image["partitions"] == 3 and image["digest"]
            assert (await admin.describe_image(quorum.leader_id))["node_id"] == quorum.leader_id
            with pytest.raises(KafkaError) as caught:
                await admin.delete_topics(["missing"])
            assert caught.value.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
