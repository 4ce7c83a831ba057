"""Kafka's client APIs on the PLAINTEXT listener (decision 0011).

Each handler maps the messages generated from Kafka's definitions
(`client.protocol.kafka`) to the broker's own typed calls and back; none holds logic
of its own about the data or the metadata. Produce, Fetch, ListOffsets and
DeleteRecords go to `DataApis`; Metadata and DescribeCluster are read from this
node's image through the same functions as the native listener's; CreateTopics,
DeleteTopics and CreatePartitions are forwarded to the active controller through
the `ControllerChannel`, as the native ones are (KIP-590).

`SERVED` is what is built, and so what ApiVersions advertises: an API absent from it
is not advertised, and a request outside its range closes the connection (except
ApiVersions, answered at v0). Produce is advertised from v0, as Kafka 4 does
(KAFKA-18659: librdkafka compresses only when v0 is in range), though the codec
cannot read v0-2 (Kafka 4 refuses them too). The group APIs (FindCoordinator,
JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups,
ListGroups, DeleteGroups) are `KafkaGroupApis`' over the broker's `GroupDriver`. No
InitProducerId and no transaction API is built, so idempotent and transactional
producers are not served yet. Clients cannot create topics named `__...` (the broker's).

Errors are Kafka's codes (`ErrorCode` has Kafka's numbers). An error concerning the
whole request (a `KafkaError` from the call, a handler's bug) is answered by
`error_response`, which puts the code where that API carries errors: at the top where
it has one, and at every topic or partition the request named.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import attrs

from broker import kafka_errors
from broker.broker_apis import BrokerApis, metadata
from broker.data_apis import DataApis
from broker.group_driver import GroupDriver
from broker.kafka_group_apis import KafkaGroupApis
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import API_VERSIONS_KEY, APIS
from client.protocol.kafka import messages as kafka
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    DeleteRecordsRequest,
    FetchRequest,
    ListOffsetsRequest,
    MetadataRequest,
    PartitionDeleteRecords,
    PartitionFetch,
    PartitionListOffsets,
    PartitionOffset,
    PartitionProduce,
    ProduceRequest,
    TopicDeleteRecords,
    TopicFetch,
    TopicListOffsets,
    TopicProduce,
)
from client.protocol.schema import from_body, to_body
from kraft.controller.configs import AlterConfigOp, AlterConfigsOutcome, AlterConfigsResource
from kraft.controller.configs_schema import BROKER, CONFIG_TYPES, TOPIC, described
from kraft.controller.messages import (
    AlterConfigsResponse,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    DescribeQuorumResponse,
    IncrementalAlterConfigsRequest,
    PartitionsIncrease,
    TopicsResponse,
)
from kraft.controller.quorum_controller import describe_cluster
from kraft.controller.replication import CreateTopic, TopicOutcome

ZERO_UUID = kafka_errors.ZERO_UUID
OFFSET_FOR_LEADER_EPOCH_KEY = 23
DESCRIBE_CONFIGS_KEY = 32
# Kafka's DescribeConfigs config sources.
DYNAMIC_TOPIC_CONFIG, DYNAMIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 2, 5
# CreateTopics with num_partitions / replication_factor -1 (v4+, KIP-464) takes the
# broker's num.partitions and default.replication.factor; Kafka's defaults are 1.
NUM_PARTITIONS_DEFAULT = 1
REPLICATION_FACTOR_DEFAULT = 1
# DescribeCluster's endpoint_type (v1+, KIP-919): 1 brokers, 2 controllers.
ENDPOINT_TYPE_BROKERS = 1

# Kafka's ConfigResource.Type numbering, for the resource types pykraft has configs of.
RESOURCE_TYPES = {2: TOPIC, 4: BROKER}
# KRaft's metadata log, as DescribeQuorum names it (KIP-595).
METADATA_TOPIC = "__cluster_metadata"
# Internal topics (`__consumer_offsets`): clients cannot create them, the broker does.
RESERVED_TOPIC_PREFIX = "__"

T = TypeVar("T")
Handle = Callable[[Any, Any], Awaitable[Any]]
ErrorBuilder = Callable[[Any, int, int, str], Any]  # (request, version, code, message)


@attrs.frozen(kw_only=True)
class Served:
    """One API as built: the versions served, its handler and its error answer."""

    low: int
    high: int
    handle: Handle
    error: ErrorBuilder


class KafkaApis:
    def __init__(
        self, broker: BrokerApis, data: DataApis, groups: GroupDriver | None = None
    ) -> None:
        self.broker = broker
        self.data = data
        self.served: dict[int, Served] = {
            API_VERSIONS_KEY: Served(
                low=0, high=3, handle=self._api_versions, error=self._api_versions_error
            ),
            ApiKey.METADATA: Served(
                low=0, high=12, handle=self._metadata, error=kafka_errors.metadata_error
            ),
            ApiKey.PRODUCE: Served(
                low=0, high=9, handle=self._produce, error=kafka_errors.produce_error
            ),
            ApiKey.FETCH: Served(
                low=4, high=12, handle=self._fetch, error=kafka_errors.fetch_error
            ),
            ApiKey.LIST_OFFSETS: Served(
                low=1, high=7, handle=self._list_offsets, error=kafka_errors.list_offsets_error
            ),
            ApiKey.DELETE_RECORDS: Served(
                low=0, high=2, handle=self._delete_records, error=kafka_errors.delete_records_error
            ),
            ApiKey.CREATE_TOPICS: Served(
                low=2, high=7, handle=self._create_topics, error=kafka_errors.create_topics_error
            ),
            ApiKey.DELETE_TOPICS: Served(
                low=1, high=6, handle=self._delete_topics, error=kafka_errors.delete_topics_error
            ),
            ApiKey.CREATE_PARTITIONS: Served(
                low=0,
                high=3,
                handle=self._create_partitions,
                error=kafka_errors.create_partitions_error,
            ),
            ApiKey.DESCRIBE_CLUSTER: Served(
                low=0,
                high=1,
                handle=self._describe_cluster,
                error=kafka_errors.describe_cluster_error,
            ),
            ApiKey.INCREMENTAL_ALTER_CONFIGS: Served(
                low=0,
                high=1,
                handle=self._incremental_alter_configs,
                error=kafka_errors.incremental_alter_configs_error,
            ),
            DESCRIBE_CONFIGS_KEY: Served(
                low=1,
                high=4,
                handle=self._describe_configs,
                error=kafka_errors.describe_configs_error,
            ),
            ApiKey.DESCRIBE_QUORUM: Served(
                low=0,
                high=1,
                handle=self._describe_quorum,
                error=kafka_errors.describe_quorum_error,
            ),
            OFFSET_FOR_LEADER_EPOCH_KEY: Served(
                low=2,
                high=4,
                handle=self._offset_for_leader_epoch,
                error=kafka_errors.offset_for_leader_epoch_error,
            ),
        }
        if groups is not None:  # the group APIs (issue 16)
            for key, (low, high, handle, error) in KafkaGroupApis(groups).served().items():
                self.served[key] = Served(low=low, high=high, handle=handle, error=error)
        for key, served in self.served.items():
            codec = APIS[key].versions
            # What is served the codec can read, except Produce v0-2 (advertised only).
            assert served.high <= codec.high, (key, served.high)
            assert served.low >= codec.low or key == ApiKey.PRODUCE, (key, served.low)

    # ------------------------------------------------------------------ dispatch

    def serves(self, api_key: int, api_version: int) -> bool:
        served = self.served.get(api_key)
        return served is not None and served.low <= api_version <= served.high

    async def handle(self, header: Any, request: Any) -> Any | None:
        return await self.served[header.request_api_key].handle(header, request)

    def error_response(self, header: Any, request: Any, code: int, message: str) -> Any:
        served = self.served[header.request_api_key]
        return served.error(request, header.request_api_version, code, message)

    def api_versions_fallback(self) -> Any:
        return self._api_versions_error(None, 0, ErrorCode.UNSUPPORTED_VERSION, "")

    # ------------------------------------------------------------------ ApiVersions

    def _api_keys(self) -> tuple[Any, ...]:
        return tuple(
            kafka.ApiVersionsResponse.ApiVersion(
                api_key=key, min_version=served.low, max_version=served.high
            )
            for key, served in sorted(self.served.items())
        )

    async def _api_versions(self, header: Any, request: Any) -> Any:
        return kafka.ApiVersionsResponse(error_code=ErrorCode.NONE, api_keys=self._api_keys())

    def _api_versions_error(self, request: Any, version: int, code: int, message: str) -> Any:
        return kafka.ApiVersionsResponse(error_code=code, api_keys=self._api_keys())

    # ------------------------------------------------------------------ Metadata

    def _controller_for_clients(self, broker_ids: set[int]) -> int:
        """The controller id clients see: the active controller if it is a broker they
        can reach, else this broker. Admin requests sent to it are forwarded (KIP-590),
        and Kafka's brokers likewise name a broker, never a dedicated controller."""
        leader = self.broker.node.leader().leader_id
        return leader if leader in broker_ids else self.broker.node_id

    async def _metadata(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        image = self.broker.loader.image
        names: list[str] | None = None
        unknown_ids: list[uuid.UUID] = []
        # v0: an empty list asks for every topic; v1 on, null does.
        if request.topics is not None and (version > 0 or request.topics):
            names = []
            for topic in request.topics:
                if topic.name is not None:
                    names.append(topic.name)
                    continue
                found = image.topics.get(str(topic.topic_id))
                if found is None:
                    unknown_ids.append(topic.topic_id)
                else:
                    names.append(found.name)
        native = metadata(
            image,
            MetadataRequest(topics=None if names is None else tuple(names)),
            self.broker.cluster_id,
            self.broker.node.leader().leader_id,
        )
        brokers = tuple(
            kafka.MetadataResponse.MetadataResponseBroker(
                node_id=b.broker_id, host=b.host, port=b.port, rack=b.rack
            )
            for b in native.brokers
        )
        topics = [
            kafka.MetadataResponse.MetadataResponseTopic(
                error_code=t.error_code,
                name=t.name,
                topic_id=_uuid(t.topic_id) if version >= 10 else ZERO_UUID,
                is_internal=t.name.startswith(RESERVED_TOPIC_PREFIX),
                partitions=tuple(
                    kafka.MetadataResponse.MetadataResponsePartition(
                        error_code=p.error_code,
                        partition_index=p.partition,
                        leader_id=p.leader,
                        leader_epoch=p.leader_epoch if version >= 7 else -1,
                        replica_nodes=p.replicas,
                        isr_nodes=p.isr,
                    )
                    for p in t.partitions
                ),
            )
            for t in native.topics
        ]
        topics += [
            kafka.MetadataResponse.MetadataResponseTopic(
                error_code=ErrorCode.UNKNOWN_TOPIC_ID, name=None, topic_id=topic_id
            )
            for topic_id in unknown_ids
        ]
        return kafka.MetadataResponse(
            brokers=brokers,
            cluster_id=native.cluster_id if version >= 2 else None,
            controller_id=(
                self._controller_for_clients({b.broker_id for b in native.brokers})
                if version >= 1
                else -1
            ),
            topics=tuple(topics),
        )

    # ------------------------------------------------------------------ Produce

    async def _produce(self, header: Any, request: Any) -> Any | None:
        version = header.request_api_version
        native = ProduceRequest(
            acks=request.acks,
            timeout_ms=request.timeout_ms,
            topics=tuple(
                TopicProduce(
                    name=topic.name,
                    partitions=tuple(
                        PartitionProduce(partition=p.index, records=p.records or b"")
                        for p in topic.partition_data
                    ),
                )
                for topic in request.topic_data
            ),
        )
        response = await self.data.produce_request(native)
        if response is None:
            return None  # acks=0: no answer is due
        Response = kafka.ProduceResponse
        return Response(
            responses=tuple(
                Response.TopicProduceResponse(
                    name=topic.name,
                    partition_responses=tuple(
                        Response.PartitionProduceResponse(
                            index=p.partition,
                            error_code=p.error_code,
                            base_offset=p.base_offset,
                            log_start_offset=p.log_start_offset if version >= 5 else -1,
                            error_message=kafka_errors.message_in(version, 8, p.error_message),
                        )
                        for p in topic.partitions
                    ),
                )
                for topic in response.topics
            )
        )

    # ------------------------------------------------------------------ Fetch

    async def _fetch(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        # No fetch sessions (KIP-227): every fetch is a full one, answered with
        # session id 0, which tells the client that no session was created.
        native = FetchRequest(
            topics=tuple(
                TopicFetch(
                    name=topic.topic,
                    partitions=tuple(
                        PartitionFetch(
                            partition=p.partition,
                            fetch_offset=p.fetch_offset,
                            partition_max_bytes=p.partition_max_bytes,
                            current_leader_epoch=p.current_leader_epoch,
                        )
                        for p in topic.partitions
                    ),
                )
                for topic in request.topics
            ),
            replica_id=request.replica_id,
            max_wait_ms=request.max_wait_ms,
            min_bytes=request.min_bytes,
            max_bytes=request.max_bytes,
        )
        response = await self.data.fetch_request(native, replication=False)
        Response = kafka.FetchResponse
        return Response(
            responses=tuple(
                Response.FetchableTopicResponse(
                    topic=topic.name,
                    partitions=tuple(
                        Response.PartitionData(
                            partition_index=p.partition,
                            error_code=p.error_code,
                            high_watermark=p.high_watermark,
                            # No transactions yet: everything below it is stable.
                            last_stable_offset=p.high_watermark,
                            log_start_offset=p.log_start_offset if version >= 5 else -1,
                            records=p.records,  # as stored, never re-encoded
                        )
                        for p in topic.partitions
                    ),
                )
                for topic in response.topics
            )
        )

    # ------------------------------------------------------------------ offsets

    async def _list_offsets(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        # Only the earliest (-2), the latest (-1) and a point in time are built; the
        # max timestamp (-3, KIP-734) and the local-tier specs are refused per partition.
        wanted = tuple(
            TopicListOffsets(
                name=topic.name,
                partitions=tuple(
                    PartitionListOffsets(
                        partition=p.partition_index,
                        timestamp=p.timestamp,
                        current_leader_epoch=p.current_leader_epoch,
                    )
                    for p in topic.partitions
                    if p.timestamp >= EARLIEST_TIMESTAMP
                ),
            )
            for topic in request.topics
        )
        native = self.data.list_offsets_request(ListOffsetsRequest(topics=wanted))
        Response = kafka.ListOffsetsResponse

        def answers(topic: Any, found: tuple[PartitionOffset, ...]) -> tuple[Any, ...]:
            results = iter(found)  # in request order, without the refused specs
            out = []
            for item in topic.partitions:
                result = (
                    next(results)
                    if item.timestamp >= EARLIEST_TIMESTAMP
                    else PartitionOffset(
                        partition=item.partition_index, error_code=ErrorCode.UNSUPPORTED_VERSION
                    )
                )
                out.append(
                    Response.ListOffsetsPartitionResponse(
                        partition_index=item.partition_index,
                        error_code=result.error_code,
                        timestamp=result.timestamp,
                        offset=result.offset,
                        leader_epoch=result.leader_epoch if version >= 4 else -1,
                    )
                )
            return tuple(out)

        return Response(
            topics=tuple(
                Response.ListOffsetsTopicResponse(
                    name=topic.name, partitions=answers(topic, found.partitions)
                )
                for topic, found in zip(request.topics, native.topics, strict=True)
            )
        )

    async def _delete_records(self, header: Any, request: Any) -> Any:
        native = self.data.delete_records_request(
            DeleteRecordsRequest(
                topics=tuple(
                    TopicDeleteRecords(
                        name=topic.name,
                        partitions=tuple(
                            PartitionDeleteRecords(partition=p.partition_index, offset=p.offset)
                            for p in topic.partitions
                        ),
                    )
                    for topic in request.topics
                ),
                timeout_ms=request.timeout_ms,
            )
        )
        Response = kafka.DeleteRecordsResponse
        return Response(
            topics=tuple(
                Response.DeleteRecordsTopicResult(
                    name=topic.name,
                    partitions=tuple(
                        Response.DeleteRecordsPartitionResult(
                            partition_index=p.partition,
                            low_watermark=p.low_watermark,
                            error_code=p.error_code,
                        )
                        for p in topic.partitions
                    ),
                )
                for topic in native.topics
            )
        )

    async def _offset_for_leader_epoch(self, header: Any, request: Any) -> Any:
        """KIP-320: where an epoch ended on the leader's log, so that a consumer whose
        position came from an older leader can tell whether its log was truncated."""
        Response = kafka.OffsetForLeaderEpochResponse

        def answer(topic: str, item: Any) -> Any:
            try:
                partition = self.data.replicas.partition(topic, item.partition)
                partition.require_leader(item.current_leader_epoch)
            except KafkaError as error:
                return Response.EpochEndOffset(partition=item.partition, error_code=error.code)
            epoch, end_offset = partition.log.end_offset_for_epoch(item.leader_epoch)
            return Response.EpochEndOffset(
                partition=item.partition, leader_epoch=epoch, end_offset=end_offset
            )

        return Response(
            topics=tuple(
                Response.OffsetForLeaderTopicResult(
                    topic=topic.topic,
                    partitions=tuple(answer(topic.topic, item) for item in topic.partitions),
                )
                for topic in request.topics
            )
        )

    # ------------------------------------------------------------------ forwarded

    async def _forward(self, api_key: int, request: Any, response: type[T]) -> T:
        """A controller API, as the native listener forwards it; the answer decoded once
        (an error concerning the whole request is a bare error body)."""
        broker = self.broker
        answer = await broker.channel.request(
            api_key, to_body(request), timeout_s=broker.forward_timeout_s
        )
        fields = [f.name for f in attrs.fields(cast(Any, response)) if f.name != "error_code"]
        if isinstance(answer, dict) and "error_code" in answer and fields[0] not in answer:
            raise KafkaError(answer["error_code"], str(answer.get("error_message", "")))
        return from_body(response, answer)

    async def _create_topics(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        refused: dict[str, TopicOutcome] = {}
        creates = []
        for topic in request.topics:
            if topic.name.startswith(RESERVED_TOPIC_PREFIX):
                refused[topic.name] = TopicOutcome(
                    name=topic.name,
                    error_code=ErrorCode.INVALID_TOPIC_EXCEPTION,
                    message=f"names starting with {RESERVED_TOPIC_PREFIX} are the broker's",
                )
                continue
            if topic.assignments:
                refused[topic.name] = TopicOutcome(
                    name=topic.name,
                    error_code=ErrorCode.INVALID_REQUEST,
                    message="manual replica assignment is not supported",
                )
                continue
            creates.append(
                CreateTopic(
                    name=topic.name,
                    partitions=(
                        NUM_PARTITIONS_DEFAULT
                        if topic.num_partitions == -1
                        else topic.num_partitions
                    ),
                    replication_factor=(
                        REPLICATION_FACTOR_DEFAULT
                        if topic.replication_factor == -1
                        else topic.replication_factor
                    ),
                    configs=tuple((c.name, c.value) for c in topic.configs if c.value is not None),
                )
            )
        outcomes: dict[str, TopicOutcome] = {}
        if creates:
            answer = await self._forward(
                ApiKey.CREATE_TOPICS,
                CreateTopicsRequest(topics=tuple(creates), validate_only=request.validate_only),
                TopicsResponse,
            )
            outcomes = {outcome.name: outcome for outcome in answer.topics}
        asked = {create.name: create for create in creates}
        Response = kafka.CreateTopicsResponse
        results = []
        for topic in request.topics:
            outcome = refused.get(topic.name) or outcomes.get(topic.name)
            if outcome is None:
                outcome = TopicOutcome(name=topic.name, error_code=ErrorCode.UNKNOWN_SERVER_ERROR)
            created = outcome.error_code == ErrorCode.NONE and version >= 5
            results.append(
                Response.CreatableTopicResult(
                    name=topic.name,
                    topic_id=_uuid(outcome.topic_id) if version >= 7 else ZERO_UUID,
                    error_code=outcome.error_code,
                    error_message=outcome.message or None,
                    num_partitions=asked[topic.name].partitions if created else -1,
                    replication_factor=asked[topic.name].replication_factor if created else -1,
                )
            )
        return Response(topics=tuple(results))

    async def _delete_topics(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        image = self.broker.loader.image
        Response = kafka.DeleteTopicsResponse
        unknown_ids = []
        names = []
        if version >= 6:
            for state in request.topics:
                if state.name is not None:
                    names.append(state.name)
                    continue
                topic = image.topics.get(str(state.topic_id))
                if topic is None:
                    unknown_ids.append(state.topic_id)
                else:
                    names.append(topic.name)
        else:
            names = list(request.topic_names)
        outcomes: tuple[TopicOutcome, ...] = ()
        if names:
            answer = await self._forward(
                ApiKey.DELETE_TOPICS, DeleteTopicsRequest(names=tuple(names)), TopicsResponse
            )
            outcomes = answer.topics
        results = [
            Response.DeletableTopicResult(
                name=outcome.name,
                topic_id=_uuid(image.topic_ids.get(outcome.name)) if version >= 6 else ZERO_UUID,
                error_code=outcome.error_code,
                error_message=kafka_errors.message_in(version, 5, outcome.message),
            )
            for outcome in outcomes
        ]
        results += [
            Response.DeletableTopicResult(
                name=None, topic_id=topic_id, error_code=ErrorCode.UNKNOWN_TOPIC_ID
            )
            for topic_id in unknown_ids
        ]
        return Response(responses=tuple(results))

    async def _create_partitions(self, header: Any, request: Any) -> Any:
        Response = kafka.CreatePartitionsResponse
        refused = {}
        increases = []
        for topic in request.topics:
            problem = None
            if topic.assignments:  # null or empty: the controller places them
                problem = "manual replica assignment is not supported"
            elif request.validate_only:
                problem = "validate_only is not supported"
            if problem is not None:
                refused[topic.name] = TopicOutcome(
                    name=topic.name, error_code=ErrorCode.INVALID_REQUEST, message=problem
                )
            else:
                increases.append(PartitionsIncrease(name=topic.name, total=topic.count))
        outcomes: dict[str, TopicOutcome] = {}
        if increases:
            answer = await self._forward(
                ApiKey.CREATE_PARTITIONS,
                CreatePartitionsRequest(topics=tuple(increases)),
                TopicsResponse,
            )
            outcomes = {outcome.name: outcome for outcome in answer.topics}
        results = []
        for topic in request.topics:
            outcome = refused.get(topic.name) or outcomes.get(topic.name)
            if outcome is None:
                outcome = TopicOutcome(name=topic.name, error_code=ErrorCode.UNKNOWN_SERVER_ERROR)
            results.append(
                Response.CreatePartitionsTopicResult(
                    name=topic.name,
                    error_code=outcome.error_code,
                    error_message=outcome.message or None,
                )
            )
        return Response(results=tuple(results))

    async def _incremental_alter_configs(self, header: Any, request: Any) -> Any:
        Response = kafka.IncrementalAlterConfigsResponse
        forwarded = [
            AlterConfigsResource(
                resource_type=RESOURCE_TYPES[r.resource_type],
                resource_name=r.resource_name,
                ops=tuple(
                    AlterConfigOp(name=c.name, op=c.config_operation, value=c.value)
                    for c in r.configs
                ),
            )
            for r in request.resources
            if r.resource_type in RESOURCE_TYPES
        ]
        outcomes: Iterator[AlterConfigsOutcome] = iter(())
        if forwarded:
            answer = await self._forward(
                ApiKey.INCREMENTAL_ALTER_CONFIGS,
                IncrementalAlterConfigsRequest(
                    resources=tuple(forwarded), validate_only=request.validate_only
                ),
                AlterConfigsResponse,
            )
            outcomes = iter(answer.resources)  # in the order asked
        results = []
        for resource in request.resources:
            if resource.resource_type in RESOURCE_TYPES:
                outcome = next(outcomes)
                code, message = outcome.error_code, outcome.message
            else:
                code = ErrorCode.INVALID_REQUEST
                message = f"no configs of resource type {resource.resource_type} here"
            results.append(
                Response.AlterConfigsResourceResponse(
                    error_code=code,
                    error_message=message or None,
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                )
            )
        return Response(responses=tuple(results))

    async def _describe_quorum(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        quorum = await self._forward(ApiKey.DESCRIBE_QUORUM, {}, DescribeQuorumResponse)
        Response = kafka.DescribeQuorumResponse

        def replicas(states: Any) -> tuple[Any, ...]:
            return tuple(
                Response.ReplicaState(
                    replica_id=state.replica_id,
                    log_end_offset=state.log_end_offset,
                    last_fetch_timestamp=state.last_fetch_timestamp if version >= 1 else -1,
                    last_caught_up_timestamp=(
                        state.last_caught_up_timestamp if version >= 1 else -1
                    ),
                )
                for state in states
            )

        def partition(topic: str, index: int) -> Any:
            if (topic, index) != (METADATA_TOPIC, 0):
                return Response.PartitionData(
                    partition_index=index, error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                )
            return Response.PartitionData(
                partition_index=index,
                error_code=quorum.error_code,
                leader_id=quorum.leader_id,
                leader_epoch=quorum.leader_epoch,
                high_watermark=quorum.high_watermark,
                current_voters=replicas(quorum.voters),
                observers=replicas(quorum.observers),
            )

        return Response(
            topics=tuple(
                Response.TopicData(
                    topic_name=topic.topic_name,
                    partitions=tuple(
                        partition(topic.topic_name, p.partition_index) for p in topic.partitions
                    ),
                )
                for topic in request.topics
            )
        )

    # ------------------------------------------------------------------ DescribeCluster

    async def _describe_cluster(self, header: Any, request: Any) -> Any:
        Response = kafka.DescribeClusterResponse
        if request.endpoint_type != ENDPOINT_TYPE_BROKERS:
            raise KafkaError(ErrorCode.INVALID_REQUEST, "only brokers are described")
        native = describe_cluster(
            self.broker.loader.image, self.broker.cluster_id, self.broker.node.leader().leader_id
        )
        brokers = [b for b in native.brokers if not b.fenced]
        return Response(
            error_code=ErrorCode.NONE,
            cluster_id=native.cluster_id,
            controller_id=self._controller_for_clients({b.broker_id for b in brokers}),
            brokers=tuple(
                Response.DescribeClusterBroker(
                    broker_id=b.broker_id, host=b.host, port=b.port, rack=b.rack
                )
                for b in brokers
            ),
        )

    async def _describe_configs(self, header: Any, request: Any) -> Any:
        """Each resource's settings, defaults filled in, from this broker's image."""
        Response = kafka.DescribeConfigsResponse
        version = header.request_api_version
        image = self.broker.loader.image
        results = []
        for resource in request.resources:
            kind = RESOURCE_TYPES.get(resource.resource_type)
            error, message = ErrorCode.NONE, ""
            if kind == TOPIC and image.topic(resource.resource_name) is None:
                error, message = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "no such topic"
            elif kind == BROKER and resource.resource_name not in ("", *map(str, image.brokers)):
                error, message = ErrorCode.INVALID_REQUEST, "no such broker"
            elif kind is None:
                error, message = ErrorCode.INVALID_REQUEST, "only topics and brokers"
            entries = []
            if error == ErrorCode.NONE:
                assert kind is not None
                settings = dict(image.configs.get((kind, resource.resource_name), {}))
                keys = resource.configuration_keys
                source = DYNAMIC_TOPIC_CONFIG if kind == TOPIC else DYNAMIC_BROKER_CONFIG
                for name, value, explicit, kind_name in described(
                    kind, settings, None if keys is None else tuple(keys)
                ):
                    origin = source if explicit else DEFAULT_CONFIG
                    entries.append(
                        Response.DescribeConfigsResourceResult(
                            name=name,
                            value=value,
                            read_only=False,
                            config_source=origin,
                            is_sensitive=False,
                            synonyms=(
                                (
                                    Response.DescribeConfigsSynonym(
                                        name=name, value=value, source=origin
                                    ),
                                )
                                if request.include_synonyms
                                else ()
                            ),
                            config_type=CONFIG_TYPES[kind_name] if version >= 3 else 0,
                            documentation=None,
                        )
                    )
            results.append(
                Response.DescribeConfigsResult(
                    error_code=error,
                    error_message=message or None,
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                    configs=tuple(entries),
                )
            )
        return Response(results=tuple(results))


def _uuid(topic_id: str | None) -> uuid.UUID:
    return ZERO_UUID if topic_id is None else uuid.UUID(topic_id)
