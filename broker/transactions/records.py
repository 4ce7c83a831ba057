"""The records of `__transaction_state`: one key per transactional id, its latest state.

Kafka's `TransactionLogKey` / `TransactionLogValue` carry the same fields; pykraft
encodes them as its own versioned CBOR, as `__consumer_offsets` does ([decision
0012](../../docs/decisions/0012-consumer-offsets-records.md), [decision
0019](../../docs/decisions/0019-transaction-state-records.md)). A key is
`[0, transactional id]` (Kafka's key version 0), canonical CBOR so that compaction,
which compares key bytes, keeps exactly one record per id. A value is
`[0, producer id, previous producer id, next producer id, producer epoch,
last producer epoch, timeout ms, state, partitions, last update ms, start ms,
transaction version]`, the state as Kafka's byte id, partitions as
`[[topic, [partition, ...]], ...]` sorted. A null value is a tombstone: the id expired.
"""

from __future__ import annotations

from typing import Any

import attrs
import cbor2

KEY_VERSION = 0
VALUE_VERSION = 0
# A record holds one transaction's partitions: bounded by the request size limit long
# before this; a larger record is a corrupt partition, refused before decoding.
RECORD_BYTES_MAX = 1 << 20

# Kafka's TransactionState ids as TransactionLogValue stores them. Dead (6) and
# PrepareEpochFence (7) exist in Kafka's table but are never written: Dead is a
# tombstone and the fence is an in-memory step on the way to PrepareAbort.
STATE_IDS = {
    "Empty": 0,
    "Ongoing": 1,
    "PrepareCommit": 2,
    "PrepareAbort": 3,
    "CompleteCommit": 4,
    "CompleteAbort": 5,
}
STATE_NAMES = {number: name for name, number in STATE_IDS.items()}


class TxnRecordError(ValueError):
    """A `__transaction_state` record this version cannot read (a corrupt partition)."""


@attrs.frozen(kw_only=True)
class TxnLogValue:
    """What one transactional id's record says (Kafka's TransactionLogValue, plus the
    last producer epoch, which Kafka keeps in memory only: decision 0019)."""

    producer_id: int
    previous_producer_id: int
    next_producer_id: int
    producer_epoch: int
    last_producer_epoch: int
    timeout_ms: int
    state: str  # a key of STATE_IDS
    partitions: frozenset[tuple[str, int]]
    last_update_timestamp_ms: int
    start_timestamp_ms: int
    transaction_version: int  # 1 or 2 (KIP-890 part 2: the epoch is bumped per EndTxn)

    def __attrs_post_init__(self) -> None:
        assert self.state in STATE_IDS, self.state


@attrs.frozen(kw_only=True)
class TxnRecord:
    transactional_id: str
    value: TxnLogValue | None  # None: a tombstone

    def to_wire(self) -> tuple[bytes, bytes | None]:
        key = encode_key(self.transactional_id)
        return key, None if self.value is None else encode_value(self.value)

    @classmethod
    def from_wire(cls, key: bytes | None, value: bytes | None) -> TxnRecord:
        transactional_id = decode_key(key)
        return cls(
            transactional_id=transactional_id,
            value=None if value is None else decode_value(value),
        )


def encode_key(transactional_id: str) -> bytes:
    return cbor2.dumps([KEY_VERSION, transactional_id], canonical=True)


def _grouped(partitions: frozenset[tuple[str, int]]) -> list[list[Any]]:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return [[topic, numbers] for topic, numbers in by_topic.items()]


def encode_value(value: TxnLogValue) -> bytes:
    item = [
        VALUE_VERSION,
        value.producer_id,
        value.previous_producer_id,
        value.next_producer_id,
        value.producer_epoch,
        value.last_producer_epoch,
        value.timeout_ms,
        STATE_IDS[value.state],
        _grouped(value.partitions),
        value.last_update_timestamp_ms,
        value.start_timestamp_ms,
        value.transaction_version,
    ]
    return cbor2.dumps(item, canonical=True)


def _loads(data: bytes | None) -> list[Any]:
    if data is None:
        raise TxnRecordError("a __transaction_state record needs a key")
    if len(data) > RECORD_BYTES_MAX:
        raise TxnRecordError(f"record of {len(data)} bytes exceeds {RECORD_BYTES_MAX}")
    try:
        item = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as error:
        raise TxnRecordError(f"undecodable record: {error}") from None
    if not isinstance(item, list) or not item or not isinstance(item[0], int):
        raise TxnRecordError(f"not a versioned record: {item!r:.80}")
    return item


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TxnRecordError(f"{what}: expected an int, got {value!r:.80}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TxnRecordError(f"{what}: expected a string, got {value!r:.80}")
    return value


def decode_key(data: bytes | None) -> str:
    item = _loads(data)
    if item[0] != KEY_VERSION or len(item) != 2:
        raise TxnRecordError(f"unknown key version {item[0]} with {len(item)} fields")
    return _str(item[1], "transactional id")


def _partitions(value: object) -> frozenset[tuple[str, int]]:
    if not isinstance(value, list):
        raise TxnRecordError(f"partitions: expected a list, got {value!r:.80}")
    result: set[tuple[str, int]] = set()
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list):
            raise TxnRecordError(f"partitions entry: {entry!r:.80}")
        topic = _str(entry[0], "topic")
        result.update((topic, _int(number, "partition")) for number in entry[1])
    return frozenset(result)


def decode_value(data: bytes) -> TxnLogValue:
    item = _loads(data)
    if item[0] != VALUE_VERSION or len(item) != 12:
        raise TxnRecordError(f"unknown value version {item[0]} with {len(item)} fields")
    state_id = _int(item[7], "state")
    if state_id not in STATE_NAMES:
        raise TxnRecordError(f"state {state_id} is never written")
    version = _int(item[11], "transaction version")
    if version not in (1, 2):
        raise TxnRecordError(f"transaction version {version}")
    return TxnLogValue(
        producer_id=_int(item[1], "producer id"),
        previous_producer_id=_int(item[2], "previous producer id"),
        next_producer_id=_int(item[3], "next producer id"),
        producer_epoch=_int(item[4], "producer epoch"),
        last_producer_epoch=_int(item[5], "last producer epoch"),
        timeout_ms=_int(item[6], "timeout"),
        state=STATE_NAMES[state_id],
        partitions=_partitions(item[8]),
        last_update_timestamp_ms=_int(item[9], "last update timestamp"),
        start_timestamp_ms=_int(item[10], "start timestamp"),
        transaction_version=version,
    )


__all__ = [
    "STATE_IDS",
    "TxnLogValue",
    "TxnRecord",
    "TxnRecordError",
    "decode_key",
    "decode_value",
    "encode_key",
    "encode_value",
]
