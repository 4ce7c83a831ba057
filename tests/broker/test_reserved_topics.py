"""Names starting with `__` are the brokers' (issue 16): the controller refuses them
unless the CreateTopics is a broker's own (`internal`, as the group driver sends for
`__consumer_offsets`), and a native client cannot claim to be one."""

from __future__ import annotations

import pytest

from client.protocol.errors import ErrorCode

E = ErrorCode


def test_only_a_brokers_own_request_creates_a_topic_named_with_two_underscores() -> None:
    import random as random_module

    from kraft.controller.replication import CreateTopic, create_topics
    from kraft.metadata.image import BrokerRegistration, MetadataImage

    broker = BrokerRegistration(
        broker_id=1, broker_epoch=1, incarnation_id="i", listeners=(), rack=None, fenced=False
    )
    image = MetadataImage(brokers={1: broker})
    wanted = [CreateTopic(name="__consumer_offsets", partitions=1, replication_factor=1)]
    refused = create_topics(image, wanted, random_module.Random(0)).response
    assert [(o.error_code, "reserved" in o.message) for o in refused] == [
        (E.INVALID_TOPIC_EXCEPTION, True)
    ]
    created = create_topics(image, wanted, random_module.Random(0), internal=True).response
    assert [o.error_code for o in created] == [E.NONE]


@pytest.mark.slow
async def test_a_native_client_cannot_create_a_reserved_topic_even_claiming_to_be_internal(
    nursery, tmp_path
) -> None:
    import trio

    from client.protocol.apis import ApiKey
    from tests.broker.test_data_plane import started

    with trio.fail_after(60):
        cluster = await started(nursery, tmp_path, combined=1, offsets_topic_num_partitions=1)
        for claims_internal in (False, True):
            body = {
                "topics": [{"name": "__mine", "partitions": 1, "replication_factor": 1}],
                "internal": claims_internal,
            }
            answer = await cluster.call(1, ApiKey.CREATE_TOPICS, body)
            assert answer["topics"][0]["error_code"] == E.INVALID_TOPIC_EXCEPTION, answer
        driver = cluster.servers[1].groups
        assert driver is not None
        await driver.ensure_topic()  # the broker's own creation of __consumer_offsets
        assert cluster.servers[1].replicas.image.topic("__consumer_offsets") is not None
