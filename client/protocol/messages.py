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
