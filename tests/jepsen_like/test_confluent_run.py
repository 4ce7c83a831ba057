"""The queue workload through librdkafka (confluent-kafka) over Kafka's protocol, with a
partition leader and then the active controller killed: nothing acknowledged is lost
(issue 15, item 8: the lab drives Kafka's own clients)."""

from __future__ import annotations

import pytest

from tests.jepsen_like.test_runs import short_run


@pytest.mark.lab  # a CI step of its own: the default suite's budget
async def test_confluent_kafka_loses_nothing_acknowledged_when_leaders_die(tmp_path) -> None:
    stats = await short_run(
        tmp_path, client="confluent-kafka", scripted=("kill-leader", "kill-controller")
    )
    assert stats["valid"], stats["summary"]
    assert stats["lost"] == 0 and stats["inconsistent-offsets"] == 0
    assert stats["acknowledged"] > 500, stats["summary"]
