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


def _from_wire(base: str, optional: bool, value: Any, cls: type[Any], name: str) -> Any:
    """`value` as field `name` of `cls`, whose annotation is `base` (+ `| None`)."""
    if value is None:
        if optional:
            return None
        raise MetadataRecordError(f"{cls.__name__}.{name}: null is not allowed")
    # `type(...) is int`, not isinstance: a bool is an int to isinstance.
    if base == "int" and type(value) is int:
        return value
    if base == "tuple[int, ...]" and type(value) is list and all(type(v) is int for v in value):
        return tuple(value)
    if base == "str" and isinstance(value, str):
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "tuple[Listener, ...]" and isinstance(value, list):
        listeners = []
        for item in value:
            if not (isinstance(item, list) and len(item) == 3 and _is_int(item[2])):
                raise MetadataRecordError(f"{cls.__name__}.{name}: bad listener {item!r}")
            listeners.append(Listener(name=str(item[0]), host=str(item[1]), port=item[2]))
        return tuple(listeners)
    annotation = base + (" | None" if optional else "")
    raise MetadataRecordError(f"{cls.__name__}.{name}: {value!r} is not {annotation}")


@attrs.frozen
class _FieldTable:
    """A record class's fields as decoding needs them, looked up once per class (a
    snapshot of 100,000 partitions decodes that many records)."""

    names: tuple[str, ...]
    bases: tuple[str, ...]  # annotations without `| None`
    optional: tuple[bool, ...]
    required: int  # how many fields an older version's record must have at least


_FIELD_TABLES: dict[type[Any], _FieldTable] = {}


def _field_table(cls: type[Any]) -> _FieldTable:
    table = _FIELD_TABLES.get(cls)
    if table is None:
        fields = attrs.fields(cls)
        annotations = [str(f.type) for f in fields]
        # The fields past the last one without a default may be missing.
        required = max(
            (i + 1 for i, f in enumerate(fields) if f.default is attrs.NOTHING), default=0
        )
        table = _FIELD_TABLES[cls] = _FieldTable(
            names=tuple(f.name for f in fields),
            bases=tuple(a.removesuffix(" | None") for a in annotations),
            optional=tuple(a.endswith(" | None") for a in annotations),
            required=required,
        )
    return table


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
    table = _field_table(cls)
    count = len(table.names)
    given = len(item) - 2
    # Versions only ever add fields at the end, each with a default: an older record
    # lacks the newer ones, which keep their defaults.
    if given > count or given < table.required:
        raise MetadataRecordError(f"{cls.__name__} needs {count} fields, got {given}")
    if item[1] == cls.VERSION and given != count:
        raise MetadataRecordError(f"{cls.__name__} needs {count} fields, got {given}")
    values = {
        name: _from_wire(base, optional, raw, cls, name)
        for name, base, optional, raw in zip(
            table.names, table.bases, table.optional, item[2:], strict=False
        )
    }
    record: MetadataRecord = cls(**values)
    return record
