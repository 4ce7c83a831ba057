"""Offsets committed inside transactions, at one `__consumer_offsets` partition: held
per producer id until the transaction's marker (pure; `broker.group_txn_offsets` wires
it: TxnOffsetCommit, the markers, the loads)."""

from __future__ import annotations

import logging
from typing import Any

import attrs

from broker.groups.coordinator import GroupCoordinator
from broker.groups.group import CommittedOffset, GroupState
from broker.groups.records import GroupRecord, OffsetCommitKey, OffsetCommitValue
from client.protocol.errors import KafkaError
from storage.records import ControlRecordType, iter_records, parse_control_record_key

log = logging.getLogger(__name__)

OffsetsByGroup = dict[str, dict[tuple[str, int], CommittedOffset]]


@attrs.define
class PendingTxnOffsets:
    """The open transactions' offsets of one `__consumer_offsets` partition."""

    by_producer: dict[int, OffsetsByGroup] = attrs.field(factory=dict)

    def add(self, producer_id: int, record: GroupRecord) -> None:
        key, value = record.key, record.value
        if not isinstance(key, OffsetCommitKey):
            return  # only offsets are transactional
        offsets = self.by_producer.setdefault(producer_id, {}).setdefault(key.group_id, {})
        if isinstance(value, OffsetCommitValue):
            offsets[(key.topic, key.partition)] = CommittedOffset(
                value.offset, value.leader_epoch, value.metadata, value.commit_timestamp_ms
            )

    def has(self, group_id: str, topic: str, partition: int) -> bool:
        return any(
            (topic, partition) in groups.get(group_id, {}) for groups in self.by_producer.values()
        )

    def take(self, producer_id: int) -> OffsetsByGroup:
        return self.by_producer.pop(producer_id, {})


@attrs.define
class TxnReplay:
    """A load's view of transactional batches: records held per producer until its
    marker; those of committed transactions join the records at the marker's place."""

    held: dict[int, list[GroupRecord]] = attrs.field(factory=dict)

    def hold(self, producer_id: int, record: GroupRecord) -> None:
        self.held.setdefault(producer_id, []).append(record)

    def marker(self, header: Any, data: Any, position: int, records: list[GroupRecord]) -> None:
        held = self.held.pop(header.producer_id, [])
        try:
            (control,) = iter_records(data, position)
            kind = parse_control_record_key(control.key)
        except (ValueError, KafkaError) as error:
            log.warning("unreadable control batch at %d: %s", header.base_offset, error)
            return
        if kind is ControlRecordType.COMMIT:
            records.extend(held)

    def pending(self) -> PendingTxnOffsets:
        pending = PendingTxnOffsets()
        for producer_id, records in self.held.items():
            for record in records:
                pending.add(producer_id, record)
        return pending


def complete(
    coordinator: GroupCoordinator,
    pending: PendingTxnOffsets,
    producer_id: int,
    committed: bool,
    now_ms: int,
) -> None:
    """The marker of `producer_id`: its pending offsets become the groups' committed
    offsets (COMMIT; their records are in the log already) or are dropped (ABORT)."""
    offsets = pending.take(producer_id)
    if not committed:
        return
    for group_id, by_partition in sorted(offsets.items()):
        group = coordinator.groups.get(group_id)
        if group is None or group.is_(GroupState.DEAD):
            group = coordinator._create_group(group_id, now_ms)
        group.offsets.update(by_partition)


__all__ = ["OffsetsByGroup", "PendingTxnOffsets", "TxnReplay", "complete"]
