"""The group coordinator's pure core: Kafka's classic group protocol and the records
of `__consumer_offsets` (no trio, no I/O, no clock: the broker's driver wires it in)."""

from broker.groups.coordinator import Effects, GroupConfig, GroupCoordinator
from broker.groups.group import ALLOWED_TRANSITIONS, ClassicGroup, GroupState
from broker.groups.hashing import java_string_hash, partition_for
from broker.groups.records import GroupRecord

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ClassicGroup",
    "Effects",
    "GroupConfig",
    "GroupCoordinator",
    "GroupRecord",
    "GroupState",
    "java_string_hash",
    "partition_for",
]
