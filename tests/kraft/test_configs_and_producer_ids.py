"""IncrementalAlterConfigs, topic config validation and producer id blocks."""

from __future__ import annotations

import random

from client.protocol.errors import ErrorCode
from kraft.controller.configs import (
    OP_APPEND,
    OP_DELETE,
    OP_SET,
    AlterConfigOp,
    AlterConfigsResource,
    incremental_alter_configs,
)
from kraft.controller.producer_ids import PRODUCER_ID_BLOCK_SIZE, allocate_producer_ids
from kraft.controller.replication import CreateTopic, create_topics
from kraft.metadata.image import EMPTY_IMAGE, replay
from tests.kraft.test_replication_control import apply, cluster


def topic_resource(*ops: AlterConfigOp, name: str = "t") -> AlterConfigsResource:
    return AlterConfigsResource(resource_type="topic", resource_name=name, ops=ops)


def with_topic():
    image = cluster()
    return apply(
        image,
        create_topics(
            image, [CreateTopic(name="t", partitions=1, replication_factor=1)], random.Random(0)
        ),
    )


def test_set_then_delete_a_topic_config() -> None:
    image = with_topic()
    result = incremental_alter_configs(
        image, [topic_resource(AlterConfigOp(name="retention.ms", op=OP_SET, value="1000"))]
    )
    assert [o.error_code for o in result.response] == [ErrorCode.NONE]
    image = apply(image, result)
    assert image.configs[("topic", "t")] == {"retention.ms": "1000"}
    image = apply(
        image,
        incremental_alter_configs(
            image, [topic_resource(AlterConfigOp(name="retention.ms", op=OP_DELETE))]
        ),
    )
    assert image.configs.get(("topic", "t"), {}) == {}


def test_a_bad_op_refuses_its_whole_resource_and_only_it() -> None:
    image = with_topic()
    good = AlterConfigOp(name="retention.ms", op=OP_SET, value="5")
    cases = [
        (topic_resource(good, AlterConfigOp(name="retention.bytes", op=OP_SET, value="x")), 40),
        (topic_resource(AlterConfigOp(name="no.such.config", op=OP_SET, value="1")), 40),
        (topic_resource(good, name="missing"), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        (topic_resource(AlterConfigOp(name="cleanup.policy", op=OP_APPEND, value="x")), 40),
        (topic_resource(good, good), ErrorCode.INVALID_REQUEST),
        (topic_resource(AlterConfigOp(name="retention.ms", op=OP_SET)), 40),
        (AlterConfigsResource(resource_type="group", resource_name="g", ops=()), 42),
    ]
    result = incremental_alter_configs(image, [case for case, _ in cases] + [topic_resource(good)])
    assert [o.error_code for o in result.response] == [code for _, code in cases] + [0]
    # Only the last, valid resource produced records.
    assert len(result.records) == 1 and result.records[0].value == "5"


def test_validate_only_writes_nothing() -> None:
    image = with_topic()
    result = incremental_alter_configs(
        image,
        [topic_resource(AlterConfigOp(name="retention.ms", op=OP_SET, value="7"))],
        validate_only=True,
    )
    assert result.records == () and result.response[0].error_code == ErrorCode.NONE


def test_create_topic_refuses_unknown_and_invalid_configs() -> None:
    image = cluster()
    result = create_topics(
        image,
        [
            CreateTopic(name="a", partitions=1, replication_factor=1, configs=(("bogus", "1"),)),
            CreateTopic(
                name="b", partitions=1, replication_factor=1, configs=(("retention.ms", "-5"),)
            ),
            CreateTopic(
                name="c", partitions=1, replication_factor=1, configs=(("retention.ms", "-1"),)
            ),
        ],
        random.Random(0),
    )
    assert [o.error_code for o in result.response] == [40, 40, 0]


def test_producer_id_blocks_never_overlap_and_need_a_current_epoch() -> None:
    image = cluster()
    seen: set[int] = set()
    for broker in (1, 2, 1, 3):
        result = allocate_producer_ids(image, broker, image.brokers[broker].broker_epoch)
        outcome = result.response
        assert outcome.error_code == ErrorCode.NONE and outcome.size == PRODUCER_ID_BLOCK_SIZE
        block = set(range(outcome.first_producer_id, outcome.first_producer_id + outcome.size))
        assert not block & seen
        seen |= block
        image = apply(image, result)
    stale = allocate_producer_ids(image, 1, image.brokers[1].broker_epoch + 1)
    assert stale.records == () and stale.response.error_code == ErrorCode.STALE_BROKER_EPOCH
    # The next block survives a snapshot round trip.
    rebuilt = replay(EMPTY_IMAGE, list(enumerate(image.to_records())))
    assert allocate_producer_ids(rebuilt, 2, 2).response.first_producer_id == max(seen) + 1
