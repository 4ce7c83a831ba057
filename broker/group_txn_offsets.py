"""Offsets committed inside a transaction (TxnOffsetCommit, KIP-98; issue 17).

A transactional producer's `send_offsets_to_transaction` adds the group's
`__consumer_offsets` partition to its transaction (AddOffsetsToTxn, at the transaction
coordinator), then sends TxnOffsetCommit to the group coordinator. The coordinator
appends the offset records as a transactional batch of that producer (its id and
epoch, so a fenced producer's batch is refused by the partition's producer state) and
keeps them pending, per producer id: fetched offsets do not change yet. When the
transaction's COMMIT marker reaches that `__consumer_offsets` partition the pending
offsets become the group's committed offsets; an ABORT marker drops them.

A coordinator that loads the partition replays the log the same way: the records of a
transactional batch are held per producer until its marker, then taken (COMMIT) at the
marker's place in the log or dropped (ABORT); those still open at the end of the log
are pending again. (Kafka orders a materialised offset against later plain commits by
the record's offset; here the marker's place decides, the later of the two.)

`CompletingMarkerWriter` is the partition leader's WriteTxnMarkers (`TxnMarkerWriter`)
that, once a marker of `__consumer_offsets` is replicated, tells the group driver.
"""

from __future__ import annotations

import logging
from typing import Any

from broker.group_driver import OFFSETS_TOPIC, GroupDriver, carried_out
from broker.groups import GroupRecord
from broker.groups.records import OffsetCommitKey, OffsetCommitValue
from broker.groups.txn_offsets import complete
from broker.replica_manager import ReplicaManager
from broker.transactions.messages import TxnMarkers
from broker.txn_markers import TxnMarkerWriter
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.protocol.messages import WriteTxnMarkersResponse
from storage.records import RecordInput, build_batch

log = logging.getLogger(__name__)

TXN_OFFSET_COMMIT = 28  # Kafka's API key
TXN_OFFSET_COMMIT_VERSIONS = (0, 5)


# ---------------------------------------------------------------------- completion


def complete_transaction(
    driver: GroupDriver, partition_index: int, producer_id: int, committed: bool
) -> None:
    """A marker of `producer_id` is in `__consumer_offsets`-`partition_index` (this
    broker leads it): its pending offsets become committed ones, or are dropped."""
    slot = driver.slots.get(partition_index)
    if slot is None:
        return  # not the coordinator (any more): a load replays the marker
    if slot.coordinator is None:
        slot.txn_completions.append((producer_id, committed))  # applied after the load
        return
    complete(slot.coordinator, slot.txn_offsets, producer_id, committed, driver.now_ms())


class CompletingMarkerWriter(TxnMarkerWriter):
    """WriteTxnMarkers that completes the transactional offsets of `__consumer_offsets`
    partitions once their marker is replicated."""

    def __init__(self, replicas: ReplicaManager, groups: GroupDriver, **settings: Any) -> None:
        super().__init__(replicas, **settings)
        self.groups = groups

    async def write(self, markers: TxnMarkers) -> WriteTxnMarkersResponse:
        response = await super().write(markers)
        for result in response.partitions:
            if result.topic == OFFSETS_TOPIC and result.error_code == ErrorCode.NONE:
                complete_transaction(
                    self.groups, result.partition, markers.producer_id, markers.committed
                )
        return response


# ---------------------------------------------------------------------- TxnOffsetCommit


class KafkaTxnOffsetApis:
    """TxnOffsetCommit v0-5 on the client listener, at the group's coordinator."""

    def __init__(self, driver: GroupDriver) -> None:
        self.driver = driver

    async def txn_offset_commit(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        wanted = [
            (topic.name, p.partition_index, p) for topic in request.topics for p in topic.partitions
        ]
        codes = await self._commit(request, version, wanted)
        return _response(request, codes)

    async def _commit(
        self, request: Any, version: int, wanted: list[tuple[str, int, Any]]
    ) -> dict[tuple[str, int], int]:
        driver = self.driver
        group_id = request.group_id
        if not group_id:
            raise KafkaError(ErrorCode.INVALID_GROUP_ID, "the group id is empty")
        if not request.transactional_id:
            raise KafkaError(ErrorCode.INVALID_REQUEST, "the transactional id is empty")
        slot = driver._slot(group_id)
        coordinator = slot.coordinator
        assert coordinator is not None
        group = coordinator._live_group(group_id)
        member_checked = version >= 3 and (request.generation_id >= 0 or request.member_id)
        if member_checked:
            if group is None:
                raise KafkaError(ErrorCode.ILLEGAL_GENERATION, f"no group {group_id!r}")
            if group.is_static_member_fenced(request.group_instance_id, request.member_id):
                raise KafkaError(ErrorCode.FENCED_INSTANCE_ID, request.member_id)
            if not group.has_member(request.member_id):
                raise KafkaError(ErrorCode.UNKNOWN_MEMBER_ID, request.member_id)
            if request.generation_id != group.generation_id:
                raise KafkaError(ErrorCode.ILLEGAL_GENERATION, str(request.generation_id))
        now = driver.now_ms()
        codes: dict[tuple[str, int], int] = {}
        records: list[GroupRecord] = []
        limit = coordinator.config.offset_metadata_max_bytes
        for topic, index, item in wanted:
            metadata = item.committed_metadata or ""
            if len(metadata.encode("utf-8")) > limit:
                codes[(topic, index)] = ErrorCode.OFFSET_METADATA_TOO_LARGE
                continue
            codes[(topic, index)] = ErrorCode.NONE
            records.append(
                GroupRecord(
                    key=OffsetCommitKey(group_id=group_id, topic=topic, partition=index),
                    value=OffsetCommitValue(
                        offset=item.committed_offset,
                        leader_epoch=item.committed_leader_epoch,
                        metadata=metadata,
                        commit_timestamp_ms=now,
                    ),
                )
            )
        if not records:
            return codes
        last = self._append(slot, request.producer_id, request.producer_epoch, records, now)
        # Waited for in the driver's task: offsets held pending whose records are lost
        # must reload the slot, even if this request's connection has closed.
        if not await carried_out(driver._nursery, lambda: driver.committed(slot, last)):
            raise KafkaError(ErrorCode.NOT_COORDINATOR, "offsets not written")
        return codes

    def _append(
        self, slot: Any, producer_id: int, epoch: int, records: list[GroupRecord], now: int
    ) -> int:
        """The batch's last offset; KafkaError (the producer state's code) if refused."""
        partition = slot.partition
        partition.require_leader(slot.leader_epoch)
        needed = self.driver.replicas.min_insync_replicas(OFFSETS_TOPIC)
        if len(partition.isr) < needed:
            raise KafkaError(ErrorCode.NOT_ENOUGH_REPLICAS, f"ISR {list(partition.isr)}")
        # The producer's next sequence at this partition (0 in a new epoch): the
        # partition checks it as it checks a producer's own batches.
        entry = partition.producer_state.state.entry(producer_id)
        sequence = entry.last_sequence + 1 if entry is not None and entry.epoch == epoch else 0
        wire = [record.to_wire() for record in records]
        batch = build_batch(
            (RecordInput(timestamp=now, key=k, value=v) for k, v in wire),
            producer_id=producer_id,
            producer_epoch=epoch,
            base_sequence=sequence,
            is_transactional=True,
        )
        info = partition.append_as_leader(batch)
        for record in records:
            slot.txn_offsets.add(producer_id, record)
        return int(info.last_offset)


def _response(request: Any, codes: dict[tuple[str, int], int]) -> Any:
    Response = kafka.TxnOffsetCommitResponse
    return Response(
        topics=tuple(
            Response.TxnOffsetCommitResponseTopic(
                name=topic.name,
                partitions=tuple(
                    Response.TxnOffsetCommitResponsePartition(
                        partition_index=p.partition_index,
                        error_code=codes.get((topic.name, p.partition_index), ErrorCode.NONE),
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        )
    )


def txn_offset_commit_error(request: Any, version: int, code: int, message: str) -> Any:
    if code == ErrorCode.PRODUCER_FENCED and version < 2:
        code = ErrorCode.INVALID_PRODUCER_EPOCH
    wanted = {(t.name, p.partition_index): code for t in request.topics for p in t.partitions}
    return _response(request, wanted)


__all__ = [
    "TXN_OFFSET_COMMIT",
    "TXN_OFFSET_COMMIT_VERSIONS",
    "CompletingMarkerWriter",
    "KafkaTxnOffsetApis",
    "complete_transaction",
    "txn_offset_commit_error",
]
