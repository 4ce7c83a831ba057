"""Bodies of the client-facing APIs a broker answers itself (the admin APIs it forwards
to the controller are defined beside the controller's managers)."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class MetadataRequest:
    topics: tuple[str, ...] | None = None  # None: every topic


@attrs.frozen(kw_only=True)
class BrokerEndpoint:
    broker_id: int
    host: str
    port: int
    rack: str | None = None


@attrs.frozen(kw_only=True)
class PartitionMetadata:
    partition: int
    error_code: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@attrs.frozen(kw_only=True)
class TopicMetadata:
    name: str
    error_code: int
    topic_id: str | None
    partitions: tuple[PartitionMetadata, ...]


@attrs.frozen(kw_only=True)
class MetadataResponse:
    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerEndpoint, ...]  # unfenced brokers: those a client may use
    topics: tuple[TopicMetadata, ...]
    metadata_offset: int  # of the image this answer was read from


# ---------------------------------------------------------------------- produce


@attrs.frozen(kw_only=True)
class PartitionProduce:
    partition: int
    records: bytes  # one or more RecordBatch v2, as the producer built them
    current_leader_epoch: int = -1  # -1: the producer does not know; not checked


@attrs.frozen(kw_only=True)
class TopicProduce:
    name: str
    partitions: tuple[PartitionProduce, ...]


@attrs.frozen(kw_only=True)
class ProduceRequest:
    acks: int  # 0, 1 or -1 (all)
    timeout_ms: int
    topics: tuple[TopicProduce, ...]
    transactional_id: str | None = None  # of transactional batches (KIP-890 part 1 checks)


@attrs.frozen(kw_only=True)
class PartitionProduceResult:
    partition: int
    error_code: int
    base_offset: int = -1
    log_start_offset: int = -1
    error_message: str = ""


@attrs.frozen(kw_only=True)
class TopicProduceResult:
    name: str
    partitions: tuple[PartitionProduceResult, ...]


@attrs.frozen(kw_only=True)
class ProduceResponse:
    topics: tuple[TopicProduceResult, ...]


# ---------------------------------------------------------------------- fetch

CONSUMER_REPLICA_ID = -1
READ_UNCOMMITTED, READ_COMMITTED = 0, 1  # Kafka's isolation levels (KIP-98)


@attrs.frozen(kw_only=True)
class PartitionFetch:
    partition: int
    fetch_offset: int
    partition_max_bytes: int = 1024 * 1024  # Kafka's max.partition.fetch.bytes
    current_leader_epoch: int = -1
    last_fetched_epoch: int = -1  # followers: the epoch of their last batch


@attrs.frozen(kw_only=True)
class TopicFetch:
    name: str
    partitions: tuple[PartitionFetch, ...]


@attrs.frozen(kw_only=True)
class FetchRequest:
    topics: tuple[TopicFetch, ...]
    replica_id: int = CONSUMER_REPLICA_ID
    broker_epoch: int = -1
    max_wait_ms: int = 500  # Kafka's fetch.max.wait.ms
    min_bytes: int = 1
    max_bytes: int = 50 * 1024 * 1024  # Kafka's fetch.max.bytes
    isolation_level: int = READ_UNCOMMITTED  # READ_COMMITTED: up to the LSO


@attrs.frozen(kw_only=True)
class EpochEndOffset:
    epoch: int
    end_offset: int


@attrs.frozen(kw_only=True)
class AbortedTransaction:
    """Its records from `first_offset` on are dropped until its ABORT marker."""

    producer_id: int
    first_offset: int


@attrs.frozen(kw_only=True)
class PartitionFetchResult:
    partition: int
    error_code: int
    high_watermark: int = -1
    log_start_offset: int = -1
    log_end_offset: int = -1
    records: bytes = b""
    diverging_epoch: EpochEndOffset | None = None
    error_message: str = ""
    last_stable_offset: int = -1
    # read_committed: the aborted transactions overlapping the records (None otherwise).
    aborted_transactions: tuple[AbortedTransaction, ...] | None = None


@attrs.frozen(kw_only=True)
class TopicFetchResult:
    name: str
    partitions: tuple[PartitionFetchResult, ...]


@attrs.frozen(kw_only=True)
class FetchResponse:
    topics: tuple[TopicFetchResult, ...]


# ---------------------------------------------------------------------- offsets

EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1


@attrs.frozen(kw_only=True)
class PartitionListOffsets:
    partition: int
    timestamp: int  # -2 earliest, -1 latest (the high-water mark), else the first at/after it
    current_leader_epoch: int = -1


@attrs.frozen(kw_only=True)
class TopicListOffsets:
    name: str
    partitions: tuple[PartitionListOffsets, ...]


@attrs.frozen(kw_only=True)
class ListOffsetsRequest:
    topics: tuple[TopicListOffsets, ...]
    isolation_level: int = READ_UNCOMMITTED  # READ_COMMITTED: latest is the LSO


@attrs.frozen(kw_only=True)
class PartitionOffset:
    partition: int
    error_code: int
    offset: int = -1
    timestamp: int = -1
    leader_epoch: int = -1


@attrs.frozen(kw_only=True)
class TopicOffsets:
    name: str
    partitions: tuple[PartitionOffset, ...]


@attrs.frozen(kw_only=True)
class ListOffsetsResponse:
    topics: tuple[TopicOffsets, ...]


@attrs.frozen(kw_only=True)
class PartitionDeleteRecords:
    partition: int
    offset: int  # records before it go; -1: up to the high-water mark


@attrs.frozen(kw_only=True)
class TopicDeleteRecords:
    name: str
    partitions: tuple[PartitionDeleteRecords, ...]


@attrs.frozen(kw_only=True)
class DeleteRecordsRequest:
    topics: tuple[TopicDeleteRecords, ...]
    timeout_ms: int = 30_000


@attrs.frozen(kw_only=True)
class PartitionLowWatermark:
    partition: int
    error_code: int
    low_watermark: int = -1


@attrs.frozen(kw_only=True)
class TopicLowWatermarks:
    name: str
    partitions: tuple[PartitionLowWatermark, ...]


@attrs.frozen(kw_only=True)
class DeleteRecordsResponse:
    topics: tuple[TopicLowWatermarks, ...]


# ---------------------------------------------------------------------- transaction markers


@attrs.frozen(kw_only=True)
class WriteTxnMarkersPartitionResult:
    topic: str
    partition: int
    error_code: int


@attrs.frozen(kw_only=True)
class WriteTxnMarkersResponse:
    """A partition leader's answer to WriteTxnMarkers (ApiKey.WRITE_TXN_MARKERS)."""

    partitions: tuple[WriteTxnMarkersPartitionResult, ...]
