"""The records of `__consumer_offsets`: committed offsets and group metadata.

Kafka's keys and values (`OffsetCommitKey`, `OffsetCommitValue`, `GroupMetadataKey`,
`GroupMetadataValue`) have the same fields here, encoded as pykraft's own versioned
CBOR ([decision 0012](../../docs/decisions/0012-consumer-offsets-records.md)): no
installed dependency ships their JSON definitions. A key is `[key version, fields...]`
with Kafka's key versions (1: offset commit, 2: group metadata), so the two kinds of
key never collide in the compacted topic; a value is `[value version, fields...]`; a
null value is a tombstone. Keys are canonical CBOR: compaction compares key bytes, so
one logical key must always be the same bytes.
"""

from __future__ import annotations

from typing import Any

import attrs
import cbor2

OFFSET_COMMIT_KEY_VERSION = 1
GROUP_METADATA_KEY_VERSION = 2
OFFSET_COMMIT_VALUE_VERSION = 0
GROUP_METADATA_VALUE_VERSION = 0
NO_LEADER_EPOCH = -1
# Group ids, topics, metadata strings are bounded before they get here (Kafka's
# offset.metadata.max.bytes = 4096; the request size limit for the rest); a record
# of `__consumer_offsets` is decoded with this as its whole-size bound.
RECORD_BYTES_MAX = 1 << 20


class GroupRecordError(ValueError):
    """A `__consumer_offsets` record this version cannot read (a corrupt partition)."""


@attrs.frozen(kw_only=True)
class OffsetCommitKey:
    group_id: str
    topic: str
    partition: int


@attrs.frozen(kw_only=True)
class OffsetCommitValue:
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@attrs.frozen(kw_only=True)
class GroupMetadataKey:
    group_id: str


@attrs.frozen(kw_only=True)
class MemberMetadata:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    subscription: bytes  # the member's metadata for the group's selected protocol
    assignment: bytes


@attrs.frozen(kw_only=True)
class GroupMetadataValue:
    protocol_type: str | None
    generation: int
    protocol: str | None
    leader: str | None
    current_state_timestamp_ms: int
    members: tuple[MemberMetadata, ...]


GroupKey = OffsetCommitKey | GroupMetadataKey
GroupValue = OffsetCommitValue | GroupMetadataValue


@attrs.frozen(kw_only=True)
class GroupRecord:
    key: GroupKey
    value: GroupValue | None  # None: a tombstone

    def __attrs_post_init__(self) -> None:
        if isinstance(self.key, OffsetCommitKey):
            assert self.value is None or isinstance(self.value, OffsetCommitValue), self
        else:
            assert self.value is None or isinstance(self.value, GroupMetadataValue), self

    def to_wire(self) -> tuple[bytes, bytes | None]:
        return encode_key(self.key), None if self.value is None else encode_value(self.value)

    @classmethod
    def from_wire(cls, key: bytes | None, value: bytes | None) -> GroupRecord:
        decoded_key = decode_key(key)
        if value is None:
            return cls(key=decoded_key, value=None)
        kind = OffsetCommitValue if isinstance(decoded_key, OffsetCommitKey) else GroupMetadataValue
        return cls(key=decoded_key, value=decode_value(value, kind))


# ---------------------------------------------------------------------- encoding


def encode_key(key: GroupKey) -> bytes:
    if isinstance(key, OffsetCommitKey):
        item: list[Any] = [OFFSET_COMMIT_KEY_VERSION, key.group_id, key.topic, key.partition]
    else:
        item = [GROUP_METADATA_KEY_VERSION, key.group_id]
    return cbor2.dumps(item, canonical=True)


def encode_value(value: GroupValue) -> bytes:
    if isinstance(value, OffsetCommitValue):
        item: list[Any] = [
            OFFSET_COMMIT_VALUE_VERSION,
            value.offset,
            value.leader_epoch,
            value.metadata,
            value.commit_timestamp_ms,
        ]
    else:
        members = [
            [
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.rebalance_timeout_ms,
                m.session_timeout_ms,
                m.subscription,
                m.assignment,
            ]
            for m in value.members
        ]
        item = [
            GROUP_METADATA_VALUE_VERSION,
            value.protocol_type,
            value.generation,
            value.protocol,
            value.leader,
            value.current_state_timestamp_ms,
            members,
        ]
    return cbor2.dumps(item, canonical=True)


# ---------------------------------------------------------------------- decoding


def _loads(data: bytes | None) -> list[Any]:
    if data is None:
        raise GroupRecordError("a __consumer_offsets record needs a key")
    if len(data) > RECORD_BYTES_MAX:
        raise GroupRecordError(f"record of {len(data)} bytes exceeds {RECORD_BYTES_MAX}")
    try:
        item = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as error:
        raise GroupRecordError(f"undecodable record: {error}") from None
    if not isinstance(item, list) or not item or not isinstance(item[0], int):
        raise GroupRecordError(f"not a versioned record: {item!r:.80}")
    return item


def _check(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int in Python; no field here is a bool.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise GroupRecordError(f"{what}: expected {kind}, got {value!r:.80}")
    return value


def _optional_str(value: object, what: str) -> str | None:
    return None if value is None else _check(value, str, what)


def decode_key(data: bytes | None) -> GroupKey:
    item = _loads(data)
    version = item[0]
    if version in (0, OFFSET_COMMIT_KEY_VERSION) and len(item) == 4:
        return OffsetCommitKey(
            group_id=_check(item[1], str, "group id"),
            topic=_check(item[2], str, "topic"),
            partition=_check(item[3], int, "partition"),
        )
    if version == GROUP_METADATA_KEY_VERSION and len(item) == 2:
        return GroupMetadataKey(group_id=_check(item[1], str, "group id"))
    raise GroupRecordError(f"unknown key version {version} with {len(item)} fields")


def decode_value(
    data: bytes, kind: type[OffsetCommitValue] | type[GroupMetadataValue]
) -> GroupValue:
    item = _loads(data)
    version = item[0]
    if kind is OffsetCommitValue:
        if version != OFFSET_COMMIT_VALUE_VERSION or len(item) != 5:
            raise GroupRecordError(f"unknown offset commit value version {version}")
        return OffsetCommitValue(
            offset=_check(item[1], int, "offset"),
            leader_epoch=_check(item[2], int, "leader epoch"),
            metadata=_check(item[3], str, "metadata"),
            commit_timestamp_ms=_check(item[4], int, "commit timestamp"),
        )
    if version != GROUP_METADATA_VALUE_VERSION or len(item) != 7:
        raise GroupRecordError(f"unknown group metadata value version {version}")
    members = []
    for member in _check(item[6], list, "members"):
        if not isinstance(member, list) or len(member) != 8:
            raise GroupRecordError(f"member: expected 8 fields, got {member!r:.80}")
        members.append(
            MemberMetadata(
                member_id=_check(member[0], str, "member id"),
                group_instance_id=_optional_str(member[1], "group instance id"),
                client_id=_check(member[2], str, "client id"),
                client_host=_check(member[3], str, "client host"),
                rebalance_timeout_ms=_check(member[4], int, "rebalance timeout"),
                session_timeout_ms=_check(member[5], int, "session timeout"),
                subscription=_check(member[6], bytes, "subscription"),
                assignment=_check(member[7], bytes, "assignment"),
            )
        )
    return GroupMetadataValue(
        protocol_type=_optional_str(item[1], "protocol type"),
        generation=_check(item[2], int, "generation"),
        protocol=_optional_str(item[3], "protocol"),
        leader=_optional_str(item[4], "leader"),
        current_state_timestamp_ms=_check(item[5], int, "state timestamp"),
        members=tuple(members),
    )


__all__ = [
    "GroupKey",
    "GroupMetadataKey",
    "GroupMetadataValue",
    "GroupRecord",
    "GroupRecordError",
    "GroupValue",
    "MemberMetadata",
    "OffsetCommitKey",
    "OffsetCommitValue",
    "decode_key",
    "decode_value",
    "encode_key",
    "encode_value",
]
