"""Metadata records: what the active controller writes to the metadata log (KIP-631).

Each record is a frozen attrs class with a type id and a version; its value in the log
is canonical CBOR `[type_id, version, field, ...]` with the fields in declaration
order. Decoding checks the type id, the version and every field's type before a record
is built, so a corrupt or future record is refused loudly rather than half-applied.
Replaying these records in order, on the active controller and standbys alike, is the
only way the metadata image changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import cbor2

NO_LEADER = -1
# In a PartitionChangeRecord: the field is not changed by this record.
NO_CHANGE = None


class MetadataRecordError(ValueError):
    """A record value that does not decode to a known record."""


@attrs.frozen(kw_only=True, slots=True)
class Listener:
    name: str
    host: str
    port: int


@attrs.frozen(kw_only=True)
class RegisterBrokerRecord:
    TYPE: ClassVar[int] = 0
    VERSION: ClassVar[int] = 0
    broker_id: int
    broker_epoch: int  # the offset of this record: fences older incarnations
    incarnation_id: str
    listeners: tuple[Listener, ...]
    rack: str | None = None
    fenced: bool = True


@attrs.frozen(kw_only=True)
class BrokerRegistrationChangeRecord:
    TYPE: ClassVar[int] = 1
    VERSION: ClassVar[int] = 0
    broker_id: int
    broker_epoch: int
    fenced: bool | None = None
    in_controlled_shutdown: bool | None = None


@attrs.frozen(kw_only=True)
class UnregisterBrokerRecord:
    TYPE: ClassVar[int] = 2
    VERSION: ClassVar[int] = 0
    broker_id: int
    broker_epoch: int


@attrs.frozen(kw_only=True)
class TopicRecord:
    TYPE: ClassVar[int] = 3
    VERSION: ClassVar[int] = 0
    name: str
    topic_id: str


@attrs.frozen(kw_only=True)
class PartitionRecord:
    TYPE: ClassVar[int] = 4
    VERSION: ClassVar[int] = 1  # 1 added `elr`
    topic_id: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    leader: int
    leader_epoch: int
    partition_epoch: int
    # Eligible leader replicas (KIP-966): out of the ISR, yet known to hold every
    # committed record, because they left it while it was below min.insync.replicas
    # (and the high-water mark does not move then).
    elr: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class PartitionChangeRecord:
    """A change of one partition. Every change bumps the partition epoch; a change of
    leader also bumps the leader epoch (so followers truncate against it)."""

    TYPE: ClassVar[int] = 5
    VERSION: ClassVar[int] = 1  # 1 added `elr`
    topic_id: str
    partition: int
    isr: tuple[int, ...] | None = NO_CHANGE
    leader: int | None = NO_CHANGE
    replicas: tuple[int, ...] | None = NO_CHANGE
    elr: tuple[int, ...] | None = NO_CHANGE


@attrs.frozen(kw_only=True)
class RemoveTopicRecord:
    TYPE: ClassVar[int] = 6
    VERSION: ClassVar[int] = 0
    topic_id: str


@attrs.frozen(kw_only=True)
class ConfigRecord:
    TYPE: ClassVar[int] = 7
    VERSION: ClassVar[int] = 0
    resource_type: str  # "topic" or "broker"
    resource_name: str
    name: str
    value: str | None  # None removes the setting


@attrs.frozen(kw_only=True)
class ProducerIdsRecord:
    TYPE: ClassVar[int] = 8
    VERSION: ClassVar[int] = 0
    broker_id: int
    broker_epoch: int
    next_producer_id: int  # the first id not yet handed out


@attrs.frozen(kw_only=True)
class FeatureLevelRecord:
    TYPE: ClassVar[int] = 9
    VERSION: ClassVar[int] = 0
    name: str
    level: int


@attrs.frozen(kw_only=True)
class NoOpRecord:
    """Written by a new active controller to commit something of its own epoch."""

    TYPE: ClassVar[int] = 10
    VERSION: ClassVar[int] = 0


MetadataRecord = (
    RegisterBrokerRecord
    | BrokerRegistrationChangeRecord
    | UnregisterBrokerRecord
    | TopicRecord
    | PartitionRecord
    | PartitionChangeRecord
    | RemoveTopicRecord
    | ConfigRecord
    | ProducerIdsRecord
    | FeatureLevelRecord
    | NoOpRecord
)
RECORD_TYPES: dict[int, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        RegisterBrokerRecord,
        BrokerRegistrationChangeRecord,
        UnregisterBrokerRecord,
        TopicRecord,
        PartitionRecord,
        PartitionChangeRecord,
        RemoveTopicRecord,
        ConfigRecord,
        ProducerIdsRecord,
        FeatureLevelRecord,
        NoOpRecord,
    )
}


def _to_wire(value: Any) -> Any:
    if isinstance(value, Listener):
        return [value.name, value.host, value.port]
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    return value


def encode_record(record: MetadataRecord) -> bytes:
    fields = [_to_wire(getattr(record, f.name)) for f in attrs.fields(type(record))]
    return cbor2.dumps([record.TYPE, record.VERSION, *fields], canonical=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_wire(annotation: str, value: Any, where: str) -> Any:
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise MetadataRecordError(f"{where}: null is not allowed")
    if base == "int" and _is_int(value):
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    if base == "tuple[int, ...]" and isinstance(value, list) and all(_is_int(v) for v in value):
        return tuple(value)
    if base == "tuple[Listener, ...]" and isinstance(value, list):
        listeners = []
        for item in value:
            if not (isinstance(item, list) and len(item) == 3 and _is_int(item[2])):
                raise MetadataRecordError(f"{where}: bad listener {item!r}")
            listeners.append(Listener(name=str(item[0]), host=str(item[1]), port=item[2]))
        return tuple(listeners)
    raise MetadataRecordError(f"{where}: {value!r} is not {annotation}")


def decode_record(value: bytes) -> MetadataRecord:
    try:
        item = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as error:
        raise MetadataRecordError(f"metadata record is not CBOR: {error}") from None
    if not isinstance(item, list) or len(item) < 2 or not _is_int(item[0]) or not _is_int(item[1]):
        raise MetadataRecordError("metadata record must be [type, version, fields...]")
    cls = RECORD_TYPES.get(item[0])
    if cls is None:
        raise MetadataRecordError(f"unknown metadata record type {item[0]}")
    if not 0 <= item[1] <= cls.VERSION:
        raise MetadataRecordError(f"{cls.__name__} version {item[1]} is not supported")
    fields = attrs.fields(cls)
    given = len(item) - 2
    # Versions only ever add fields at the end, each with a default: an older record
    # lacks the newer ones, which keep their defaults.
    if given > len(fields) or any(f.default is attrs.NOTHING for f in fields[given:]):
        raise MetadataRecordError(f"{cls.__name__} needs {len(fields)} fields, got {given}")
    if item[1] == cls.VERSION and given != len(fields):
        raise MetadataRecordError(f"{cls.__name__} needs {len(fields)} fields, got {given}")
    values = {
        f.name: _from_wire(str(f.type), raw, f"{cls.__name__}.{f.name}")
        for f, raw in zip(fields[:given], item[2:], strict=True)
    }
    record: MetadataRecord = cls(**values)
    return record
