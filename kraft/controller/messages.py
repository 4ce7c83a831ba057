"""The controller's request and response bodies that are not a manager's own types.

Each manager defines the request it decides on (CreateTopic, AlterPartition,
BrokerHeartbeatRequest, ...); these wrap them as they travel, Kafka-style: one
request may carry many topics, and every item gets its own error code.
"""

from __future__ import annotations

import attrs

from kraft.controller.configs import AlterConfigsOutcome, AlterConfigsResource
from kraft.controller.elections import ElectionOutcome
from kraft.controller.replication import CreateTopic, TopicOutcome


@attrs.frozen(kw_only=True)
class CreateTopicsRequest:
    topics: tuple[CreateTopic, ...]
    validate_only: bool = False
    # Set by a broker creating its own topics (`__consumer_offsets`): only those may
    # have names starting with `__`. A broker clears it in what clients send.
    internal: bool = False


@attrs.frozen(kw_only=True)
class TopicsResponse:
    topics: tuple[TopicOutcome, ...]


@attrs.frozen(kw_only=True)
class DeleteTopicsRequest:
    names: tuple[str, ...]


@attrs.frozen(kw_only=True)
class PartitionsIncrease:
    name: str
    total: int


@attrs.frozen(kw_only=True)
class CreatePartitionsRequest:
    topics: tuple[PartitionsIncrease, ...]


@attrs.frozen(kw_only=True)
class ElectLeadersResponse:
    error_code: int
    elected: int  # partitions whose leadership moved to their preferred replica
    results: tuple[ElectionOutcome, ...] = ()  # per partition (ElectLeadersRequest)


@attrs.frozen(kw_only=True)
class IncrementalAlterConfigsRequest:
    resources: tuple[AlterConfigsResource, ...]
    validate_only: bool = False
    # Kafka's legacy AlterConfigs: each resource's ops are SETs that replace its whole
    # dynamic set, decided on the controller's image (`configs.replacing`).
    replace: bool = False


@attrs.frozen(kw_only=True)
class AlterConfigsResponse:
    resources: tuple[AlterConfigsOutcome, ...]


@attrs.frozen(kw_only=True)
class AllocateProducerIdsRequest:
    broker_id: int
    broker_epoch: int


@attrs.frozen(kw_only=True)
class ReplicaState:
    replica_id: int
    log_end_offset: int
    last_fetch_timestamp: int  # wall clock, ms; -1 if never
    last_caught_up_timestamp: int


@attrs.frozen(kw_only=True)
class DescribeQuorumResponse:
    error_code: int
    leader_id: int
    leader_epoch: int
    high_watermark: int
    voters: tuple[ReplicaState, ...]
    observers: tuple[ReplicaState, ...]


@attrs.frozen(kw_only=True)
class BrokerDescription:
    broker_id: int
    broker_epoch: int
    host: str
    port: int
    rack: str | None
    fenced: bool


@attrs.frozen(kw_only=True)
class DescribeClusterResponse:
    error_code: int
    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerDescription, ...]


@attrs.frozen(kw_only=True)
class DescribeImageResponse:
    error_code: int
    node_id: int
    offset: int  # of the last record in the image
    next_offset: int  # the first log offset not yet applied
    digest: str
    brokers: int
    topics: int
    partitions: int
    snapshots_written: int
    snapshots_loaded: int
