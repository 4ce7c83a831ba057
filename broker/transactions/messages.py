"""What the transaction coordinator takes and gives: the fields of Kafka's transaction
APIs its decisions need, independent of any codec. The Kafka listener maps
InitProducerId v0-5 (with a transactional id), AddPartitionsToTxn v0-5,
AddOffsetsToTxn v0-4, EndTxn v0-5, DescribeTransactions v0 and ListTransactions v0-1
onto these; WriteTxnMarkers is what `TxnMarkers` becomes on its way to the leaders.

Versions matter in two places, each a flag here rather than a version number:
`EndTxnRequest.transaction_version_2` (EndTxn v5+, KIP-890 part 2: the epoch is bumped
by every EndTxn and returned to the client), and `AddPartitionsToTxnRequest.verify_only`
(v4+, KIP-890 part 1: a partition leader asking, not a producer adding). Requests older
than KIP-588 (InitProducerId < v4, EndTxn < v2, AddPartitionsToTxn < v2,
AddOffsetsToTxn < v2) learn PRODUCER_FENCED as INVALID_PRODUCER_EPOCH:
`for_client_version` does that mapping.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from typing import Any

import attrs

from broker.transactions.state import NO_PRODUCER_EPOCH, NO_PRODUCER_ID
from client.protocol.errors import ErrorCode, KafkaError

Token = Hashable  # names one request, so its response finds its way back


class TxnErrorCode(enum.IntEnum):
    """Kafka's codes this coordinator answers that `ErrorCode` does not have yet."""

    TRANSACTIONAL_ID_NOT_FOUND = 105


def for_client_version(error_code: int, knows_producer_fenced: bool) -> int:
    """PRODUCER_FENCED (KIP-588) as a client that predates it understands it."""
    if error_code == ErrorCode.PRODUCER_FENCED and not knows_producer_fenced:
        return ErrorCode.INVALID_PRODUCER_EPOCH
    return error_code


TopicPartition = tuple[str, int]


# ---------------------------------------------------------------------- InitProducerId


@attrs.frozen(kw_only=True)
class InitProducerIdRequest:
    transactional_id: str
    transaction_timeout_ms: int
    # v3+ (KIP-360): the producer's current id and epoch when it asks for a bump.
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH


@attrs.frozen(kw_only=True)
class InitProducerIdResponse:
    error_code: int
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH


# ---------------------------------------------------------------------- adding to a transaction


@attrs.frozen(kw_only=True)
class AddPartitionsToTxnRequest:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    partitions: tuple[TopicPartition, ...]
    verify_only: bool = False  # v4+: the partition leader checks, nothing is added
    transaction_version_2: bool = False  # added by a v2 transaction (KIP-890 part 2)


@attrs.frozen(kw_only=True)
class PartitionResult:
    topic: str
    partition: int
    error_code: int


@attrs.frozen(kw_only=True)
class AddPartitionsToTxnResponse:
    error_code: int  # v4+'s per-transaction code; older versions repeat it per partition
    results: tuple[PartitionResult, ...] = ()


@attrs.frozen(kw_only=True)
class AddPartitionsToTxnBatchResponse:
    """AddPartitionsToTxn v4+: several transactions in one request, one result each."""

    results: tuple[tuple[str, AddPartitionsToTxnResponse], ...]


@attrs.frozen(kw_only=True)
class AddOffsetsToTxnRequest:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    group_id: str


@attrs.frozen(kw_only=True)
class AddOffsetsToTxnResponse:
    error_code: int


# ---------------------------------------------------------------------- EndTxn


@attrs.frozen(kw_only=True)
class EndTxnRequest:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    committed: bool
    transaction_version_2: bool = False  # v5+


@attrs.frozen(kw_only=True)
class EndTxnResponse:
    error_code: int
    # v5+: what the producer must use next (the bumped epoch, or a new id at epoch 0).
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH


@attrs.frozen(kw_only=True)
class TxnMarkers:
    """Markers to write, one per partition, for one decided transaction.

    The driver sends WriteTxnMarkers to each partition's leader (grouped by broker), a
    COMMIT or ABORT control batch of `producer_id` at `producer_epoch` carrying
    `coordinator_epoch`, and calls `TransactionCoordinator.markers_written` once every
    partition has it (a partition whose topic is gone counts as written, as in Kafka).
    `transaction_version == 2`: the epoch was bumped for these markers, which the
    partition checks (`ProducerState.validate_marker(epoch_bumped=True)`).
    """

    transactional_id: str
    producer_id: int
    producer_epoch: int
    committed: bool
    coordinator_epoch: int
    partitions: frozenset[TopicPartition]
    transaction_version: int


def markers_body(markers: TxnMarkers, partitions: Iterable[TopicPartition]) -> dict[str, Any]:
    """WriteTxnMarkers' native body (api key 27, broker to broker on the REPLICATION
    listener): the fields of `TxnMarkers` for the partitions one leader is sent, the
    partitions as a sorted list of `[topic, partition]` (CBOR has no set of pairs)."""
    restricted = attrs.evolve(markers, partitions=frozenset(partitions))
    body: dict[str, Any] = attrs.asdict(restricted, recurse=False)
    body["partitions"] = [[topic, number] for topic, number in sorted(restricted.partitions)]
    return body


def markers_from_body(body: Any) -> TxnMarkers:
    """The `TxnMarkers` a WriteTxnMarkers body names; INVALID_REQUEST if it is malformed."""
    if not isinstance(body, dict):
        raise KafkaError(ErrorCode.INVALID_REQUEST, "WriteTxnMarkers: the body is not a map")
    fields = {
        "transactional_id": str,
        "producer_id": int,
        "producer_epoch": int,
        "committed": bool,
        "coordinator_epoch": int,
        "transaction_version": int,
    }
    values: dict[str, Any] = {}
    for name, kind in fields.items():
        value = body.get(name)
        if type(value) is not kind:
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"WriteTxnMarkers.{name}: not a {kind}")
        values[name] = value
    pairs = body.get("partitions")
    if not isinstance(pairs, list | tuple) or not all(
        isinstance(pair, list | tuple)
        and len(pair) == 2
        and type(pair[0]) is str
        and type(pair[1]) is int
        for pair in pairs
    ):
        raise KafkaError(
            ErrorCode.INVALID_REQUEST, "WriteTxnMarkers.partitions: not a list of [topic, index]"
        )
    return TxnMarkers(partitions=frozenset((t, p) for t, p in pairs), **values)


# ---------------------------------------------------------------------- reads


@attrs.frozen(kw_only=True)
class DescribedTransaction:
    transactional_id: str
    error_code: int
    state: str = ""
    transaction_timeout_ms: int = 0
    transaction_start_time_ms: int = -1
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    topics: tuple[tuple[str, tuple[int, ...]], ...] = ()


@attrs.frozen(kw_only=True)
class ListedTransaction:
    transactional_id: str
    producer_id: int
    state: str


@attrs.frozen(kw_only=True)
class ListTransactionsResponse:
    error_code: int
    unknown_state_filters: tuple[str, ...]
    transactions: tuple[ListedTransaction, ...]


Response = (
    InitProducerIdResponse
    | AddPartitionsToTxnResponse
    | AddPartitionsToTxnBatchResponse
    | AddOffsetsToTxnResponse
    | EndTxnResponse
)

__all__ = [
    "AddOffsetsToTxnRequest",
    "AddOffsetsToTxnResponse",
    "AddPartitionsToTxnBatchResponse",
    "AddPartitionsToTxnRequest",
    "AddPartitionsToTxnResponse",
    "DescribedTransaction",
    "EndTxnRequest",
    "EndTxnResponse",
    "InitProducerIdRequest",
    "InitProducerIdResponse",
    "ListTransactionsResponse",
    "ListedTransaction",
    "PartitionResult",
    "Response",
    "Token",
    "TopicPartition",
    "TxnErrorCode",
    "TxnMarkers",
    "for_client_version",
    "markers_body",
    "markers_from_body",
]
