"""What a broker answers on its PLAINTEXT listener.

Produce, Fetch, ListOffsets and DeleteRecords go to the data plane (`DataApis`);
Metadata, DescribeCluster and DescribeImage come from this node's own image; the
admin APIs are forwarded to the active controller (KIP-590), so a client may send
them to any broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from broker.controller_channel import ControllerChannel
from broker.data_apis import DataApis
from broker.listeners import BROKER_LISTENER
from broker.txn_markers import TxnMarkerWriter
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import (
    BrokerEndpoint,
    MetadataRequest,
    MetadataResponse,
    PartitionMetadata,
    TopicMetadata,
)
from client.protocol.schema import from_body, to_body
from kraft.controller.messages import CreateTopicsRequest
from kraft.controller.quorum_controller import describe_cluster, describe_image
from kraft.metadata.image import MetadataImage
from kraft.metadata.loader import MetadataLoader
from kraft.runtime import RaftNode

FORWARDED = frozenset(
    {
        ApiKey.CREATE_TOPICS,
        ApiKey.DELETE_TOPICS,
        ApiKey.CREATE_PARTITIONS,
        ApiKey.ELECT_LEADERS,
        ApiKey.INCREMENTAL_ALTER_CONFIGS,
        ApiKey.DESCRIBE_QUORUM,
    }
)


# A Metadata request names at most this many topics (none at all asks for every one).
METADATA_TOPICS_MAX = 10_000


def metadata(
    image: MetadataImage, request: MetadataRequest, cluster_id: str, controller_id: int
) -> MetadataResponse:
    brokers = []
    for broker_id in image.unfenced_brokers():
        registration = image.brokers[broker_id]
        listener = registration.listener(BROKER_LISTENER)
        if listener is None:
            continue
        brokers.append(
            BrokerEndpoint(
                broker_id=broker_id, host=listener.host, port=listener.port, rack=registration.rack
            )
        )
    if request.topics is None:
        names = sorted(image.topic_ids)
    else:
        names = list(dict.fromkeys(request.topics))  # each named topic once
        if len(names) > METADATA_TOPICS_MAX:
            raise KafkaError(
                ErrorCode.INVALID_REQUEST,
                f"{len(names)} topics named; at most {METADATA_TOPICS_MAX} (or none for all)",
            )
    topics = []
    for name in names:
        topic = image.topic(name)
        if topic is None:
            topics.append(
                TopicMetadata(
                    name=name,
                    error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    topic_id=None,
                    partitions=(),
                )
            )
            continue
        partitions = tuple(
            PartitionMetadata(
                partition=index,
                error_code=ErrorCode.NONE if part.leader >= 0 else ErrorCode.LEADER_NOT_AVAILABLE,
                leader=part.leader,
                leader_epoch=part.leader_epoch,
                replicas=part.replicas,
                isr=part.isr,
            )
            for index, part in sorted(topic.partitions.items())
        )
        topics.append(
            TopicMetadata(
                name=name, error_code=ErrorCode.NONE, topic_id=topic.topic_id, partitions=partitions
            )
        )
    return MetadataResponse(
        cluster_id=cluster_id,
        controller_id=controller_id,
        brokers=tuple(brokers),
        topics=tuple(topics),
        metadata_offset=image.offset,
    )


class BrokerApis:
    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        node: RaftNode,
        loader: MetadataLoader,
        channel: ControllerChannel,
        forward_timeout_ms: int,
        data: DataApis,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.node = node
        self.loader = loader
        self.channel = channel
        self.forward_timeout_s = forward_timeout_ms / 1000
        self.data_handlers: dict[int, Callable[[Any], Awaitable[Any]]] = {
            ApiKey.PRODUCE: data.produce,
            ApiKey.FETCH: data.consumer_fetch,
            ApiKey.LIST_OFFSETS: data.list_offsets,
            ApiKey.DELETE_RECORDS: data.delete_records,
        }

    async def handle(self, api_key: int, version: int, body: Any) -> Any:
        data_handler = self.data_handlers.get(api_key)
        if data_handler is not None:
            return await data_handler(body)
        if api_key in FORWARDED:
            if api_key == ApiKey.CREATE_TOPICS:
                body = _as_client_request(body)
            return await self.channel.request(api_key, body, timeout_s=self.forward_timeout_s)
        controller_id = self.node.leader().leader_id
        if api_key == ApiKey.METADATA:
            request = from_body(MetadataRequest, body)
            return to_body(metadata(self.loader.image, request, self.cluster_id, controller_id))
        if api_key == ApiKey.DESCRIBE_CLUSTER:
            return to_body(describe_cluster(self.loader.image, self.cluster_id, controller_id))
        if api_key == ApiKey.DESCRIBE_IMAGE:
            return to_body(describe_image(self.node_id, self.loader))
        raise KafkaError(ErrorCode.INVALID_REQUEST, f"api {api_key} is not served by a broker")


def _as_client_request(body: Any) -> Any:
    """A client's CreateTopics never creates an internal topic, whatever it claims."""
    request = from_body(CreateTopicsRequest, body)
    return to_body(attrs.evolve(request, internal=False)) if request.internal else body


class ReplicationApis:
    """The REPLICATION listener: other brokers' replica fetches and the transaction
    coordinators' markers (WriteTxnMarkers), and nothing else."""

    def __init__(self, data: DataApis, markers: TxnMarkerWriter | None = None) -> None:
        self.data = data
        self.markers = markers if markers is not None else TxnMarkerWriter(data.replicas)

    async def handle(self, api_key: int, version: int, body: Any) -> Any:
        if api_key == ApiKey.FETCH:
            return await self.data.replica_fetch(body)
        if api_key == ApiKey.WRITE_TXN_MARKERS:
            return await self.markers.write_txn_markers(body)
        raise KafkaError(
            ErrorCode.INVALID_REQUEST,
            f"api {api_key} is not served on the REPLICATION listener",
        )
