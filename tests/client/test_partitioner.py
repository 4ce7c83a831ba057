"""murmur2 partitioning agrees with the values a real Kafka client computed."""

from __future__ import annotations

import json
import pathlib

import pytest

from client.partitioner import murmur2, partition_for_key

GOLDEN = json.loads(
    (pathlib.Path(__file__).parent.parent / "data" / "murmur2_partitions.json").read_text()
)


@pytest.mark.parametrize("case", GOLDEN["keys"], ids=lambda case: case["key_hex"][:16] or "empty")
def test_murmur2_and_partition_match_kafka(case: dict) -> None:
    key = bytes.fromhex(case["key_hex"])
    assert murmur2(key) == case["murmur2"]
    for count, partition in case["partition"].items():
        assert partition_for_key(key, int(count)) == partition


def test_partition_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="partition count"):
        partition_for_key(b"k", 0)
