"""WriteTxnMarkers at a partition leader: the coordinator's COMMIT/ABORT markers.

The transaction coordinator's driver sends one request per leader on the REPLICATION
listener (brokers only), its body `markers_body(markers, partitions)`. For every partition named
that this broker leads, the leader appends the marker (`Partition.write_txn_marker`:
producer and coordinator epochs checked, the producer state and the transaction
index updated) and answers once the marker is below the high-water mark, as an
acks=all produce is: a coordinator that counts a marker as written must never see it
truncated away by a leader change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from broker.data_apis import _error_of
from broker.partition import Partition
from broker.replica_manager import ReplicaManager
from broker.transactions.messages import TxnMarkers
from client.protocol import environment
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import WriteTxnMarkersPartitionResult, WriteTxnMarkersResponse
from client.protocol.schema import to_body

# A marker not replicated by then is answered REQUEST_TIMED_OUT; the driver retries
# (a retried marker of the same epoch is taken again, KAFKA-19999's rule).
MARKER_REPLICATION_TIMEOUT_S = 30.0


PARTITIONS_MAX = 100_000  # as schema.LIST_ITEMS_MAX


def _invalid(message: str) -> KafkaError:
    return KafkaError(ErrorCode.INVALID_REQUEST, f"WriteTxnMarkers: {message}")


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int:
        raise _invalid(f"{name} must be an integer, got {value!r}")
    return value


def markers_from_body(body: Any) -> TxnMarkers:
    """The request, checked field by field (a peer's bad body is INVALID_REQUEST).

    `partitions` is a list of [topic, partition] (`markers_body`); a set of pairs, as
    CBOR carries a frozenset, is taken too.
    """
    if not isinstance(body, dict):
        raise _invalid(f"expected a map, got {type(body).__name__}")
    transactional_id = body.get("transactional_id")
    if not isinstance(transactional_id, str):
        raise _invalid("transactional_id must be a string")
    committed = body.get("committed")
    if type(committed) is not bool:
        raise _invalid("committed must be a boolean")
    raw = body.get("partitions")
    if not isinstance(raw, list | tuple | set | frozenset):
        raise _invalid("partitions must be a list of [topic, partition]")
    if len(raw) > PARTITIONS_MAX:
        raise _invalid(f"{len(raw)} partitions; at most {PARTITIONS_MAX}")
    partitions = set()
    for pair in raw:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or type(pair[1]) is not int
        ):
            raise _invalid(f"partition {pair!r} is not [topic, partition]")
        partitions.add((pair[0], pair[1]))
    return TxnMarkers(
        transactional_id=transactional_id,
        producer_id=_int(body, "producer_id"),
        producer_epoch=_int(body, "producer_epoch"),
        committed=committed,
        coordinator_epoch=_int(body, "coordinator_epoch"),
        partitions=frozenset(partitions),
        transaction_version=_int(body, "transaction_version"),
    )


class TxnMarkerWriter:
    def __init__(
        self,
        replicas: ReplicaManager,
        *,
        replication_timeout_s: float = MARKER_REPLICATION_TIMEOUT_S,
    ) -> None:
        self.replicas = replicas
        self.replication_timeout_s = replication_timeout_s

    async def write_txn_markers(self, body: Any) -> Any:
        return to_body(await self.write(markers_from_body(body)))

    async def write(self, markers: TxnMarkers) -> WriteTxnMarkersResponse:
        if markers.producer_id < 0 or not 0 <= markers.producer_epoch <= 32767:
            raise _invalid(f"producer {markers.producer_id} epoch {markers.producer_epoch}")
        codes: dict[tuple[str, int], int] = {}
        written: list[tuple[str, int, Partition, int, int]] = []
        now_wall_ms = environment.current().wall_ms()
        for topic, index in sorted(markers.partitions):
            try:
                partition = self.replicas.partition(topic, index)
                partition.require_leader(-1)
                offset = partition.write_txn_marker(
                    producer_id=markers.producer_id,
                    producer_epoch=markers.producer_epoch,
                    committed=markers.committed,
                    coordinator_epoch=markers.coordinator_epoch,
                    transaction_version=markers.transaction_version,
                    now_wall_ms=now_wall_ms,
                )
            except KafkaError as error:
                codes[(topic, index)] = error.code
                continue
            except Exception as error:  # the log's own errors, as Produce maps them
                codes[(topic, index)] = _error_of(error)[0]
                continue
            codes[(topic, index)] = ErrorCode.REQUEST_TIMED_OUT  # until replicated
            written.append((topic, index, partition, offset, partition.leader_epoch))
        await self._wait_replicated(written, codes)
        return WriteTxnMarkersResponse(
            partitions=tuple(
                WriteTxnMarkersPartitionResult(topic=topic, partition=index, error_code=code)
                for (topic, index), code in sorted(codes.items())
            )
        )

    async def _wait_replicated(
        self,
        written: Iterable[tuple[str, int, Partition, int, int]],
        codes: dict[tuple[str, int], int],
    ) -> None:
        async def wait_one(
            key: tuple[str, int], partition: Partition, offset: int, epoch: int
        ) -> None:
            try:
                if partition.flush_due():
                    await partition.wait_durable(offset + 1, self.replicas.now_ms())
                await partition.wait_committed(offset, epoch)
            except KafkaError as error:
                codes[key] = error.code
                return
            codes[key] = ErrorCode.NONE

        behind = []
        for topic, index, partition, offset, epoch in written:
            if partition.high_watermark > offset and not partition.flush_due():
                codes[(topic, index)] = ErrorCode.NONE
            else:
                behind.append(((topic, index), partition, offset, epoch))
        if not behind:
            return
        with trio.move_on_after(self.replication_timeout_s):
            async with trio.open_nursery() as nursery:
                for key, partition, offset, epoch in behind:
                    nursery.start_soon(wait_one, key, partition, offset, epoch)


__all__ = ["TxnMarkerWriter", "markers_from_body"]
