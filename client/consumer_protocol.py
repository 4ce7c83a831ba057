"""Kafka's consumer protocol: the bytes a group's members exchange through the coordinator.

The coordinator does not read them: a member's JoinGroup carries, per assignor it
offers, a ConsumerProtocolSubscription (the topics it wants, from v1 the partitions it
owns); the leader's SyncGroup carries one ConsumerProtocolAssignment per member. Both
follow Kafka's definitions (ConsumerProtocolSubscription.json and
ConsumerProtocolAssignment.json, versions 0-3, never flexible), so pykraft members can
share a group with librdkafka, kafka-python or Java members. As Kafka reads them, a
newer version than this code knows is read as the newest it knows (new versions only
append fields), and bytes after the known fields are ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

TopicPartition = tuple[str, int]

SUBSCRIPTION_VERSION = 1  # owned partitions (KIP-429); what cooperative rebalancing needs
ASSIGNMENT_VERSION = 1
_KNOWN_SUBSCRIPTION_VERSION = 3
_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")


class ConsumerProtocolError(ValueError):
    """Bytes that are not a consumer protocol subscription or assignment."""


@attrs.frozen
class Subscription:
    topics: tuple[str, ...]
    owned_partitions: tuple[TopicPartition, ...] = ()
    user_data: bytes | None = None
    generation_id: int = -1  # v2+
    rack_id: str | None = None  # v3+


@attrs.frozen
class Assignment:
    partitions: tuple[TopicPartition, ...]
    user_data: bytes | None = None


# ---------------------------------------------------------------------- writing


def _string(out: bytearray, value: str) -> None:
    data = value.encode()
    out += _I16.pack(len(data)) + data


def _nullable_bytes(out: bytearray, value: bytes | None) -> None:
    if value is None:
        out += _I32.pack(-1)
    else:
        out += _I32.pack(len(value)) + value


def _topic_partitions(out: bytearray, partitions: Iterable[TopicPartition]) -> None:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    out += _I32.pack(len(by_topic))
    for topic, indexes in by_topic.items():
        _string(out, topic)
        out += _I32.pack(len(indexes))
        for index in indexes:
            out += _I32.pack(index)


def encode_subscription(subscription: Subscription, version: int = SUBSCRIPTION_VERSION) -> bytes:
    if not 0 <= version <= _KNOWN_SUBSCRIPTION_VERSION:
        raise ValueError(f"ConsumerProtocolSubscription has no version {version}")
    out = bytearray(_I16.pack(version))
    out += _I32.pack(len(subscription.topics))
    for topic in subscription.topics:
        _string(out, topic)
    _nullable_bytes(out, subscription.user_data)
    if version >= 1:
        _topic_partitions(out, subscription.owned_partitions)
    if version >= 2:
        out += _I32.pack(subscription.generation_id)
    if version >= 3:
        if subscription.rack_id is None:
            out += _I16.pack(-1)
        else:
            _string(out, subscription.rack_id)
    return bytes(out)


def encode_assignment(assignment: Assignment, version: int = ASSIGNMENT_VERSION) -> bytes:
    out = bytearray(_I16.pack(version))
    _topic_partitions(out, assignment.partitions)
    _nullable_bytes(out, assignment.user_data)
    return bytes(out)


# ---------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def _take(self, codec: struct.Struct) -> int:
        if self.pos + codec.size > len(self.data):
            raise ConsumerProtocolError(f"ends at byte {len(self.data)}, a field was expected")
        (value,) = codec.unpack_from(self.data, self.pos)
        self.pos += codec.size
        return int(value)

    def i16(self) -> int:
        return self._take(_I16)

    def i32(self) -> int:
        return self._take(_I32)

    def _raw(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ConsumerProtocolError(f"a field of {size} bytes runs past the end")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> str:
        return self._raw(self.i16()).decode(errors="replace")

    def nullable_string(self) -> str | None:
        size = self.i16()
        return None if size < 0 else self._raw(size).decode(errors="replace")

    def nullable_bytes(self) -> bytes | None:
        size = self.i32()
        return None if size < 0 else self._raw(size)

    def count(self) -> int:
        count = self.i32()
        if count < -1 or count > len(self.data):
            raise ConsumerProtocolError(f"an array of {count} elements in {len(self.data)} bytes")
        return max(0, count)

    def topic_partitions(self) -> tuple[TopicPartition, ...]:
        found = []
        for _ in range(self.count()):
            topic = self.string()
            found += [(topic, self.i32()) for _ in range(self.count())]
        return tuple(found)

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def decode_subscription(data: bytes) -> Subscription:
    reader = _Reader(data)
    version = reader.i16()
    if version < 0:
        raise ConsumerProtocolError(f"subscription version {version}")
    topics = tuple(reader.string() for _ in range(reader.count()))
    user_data = reader.nullable_bytes()
    owned: tuple[TopicPartition, ...] = ()
    generation, rack = -1, None
    # Fields a member may have left out (they are "ignorable" in Kafka's definition).
    if version >= 1 and not reader.at_end:
        owned = reader.topic_partitions()
    if version >= 2 and not reader.at_end:
        generation = reader.i32()
    if version >= 3 and not reader.at_end:
        rack = reader.nullable_string()
    return Subscription(
        topics=topics,
        owned_partitions=owned,
        user_data=user_data,
        generation_id=generation,
        rack_id=rack,
    )


def decode_assignment(data: bytes | None) -> Assignment:
    """An empty assignment is a member given nothing (Kafka's coordinator sends empty
    bytes to a member the leader left out)."""
    if not data:
        return Assignment(partitions=())
    reader = _Reader(data)
    version = reader.i16()
    if version < 0:
        raise ConsumerProtocolError(f"assignment version {version}")
    partitions = reader.topic_partitions()
    user_data = None if reader.at_end else reader.nullable_bytes()
    return Assignment(partitions=partitions, user_data=user_data)
