"""Kafka's admin APIs on the PLAINTEXT listener (decision 0011): topics, partitions,
configs, the quorum and the cluster.

CreateTopics, DeleteTopics, CreatePartitions, IncrementalAlterConfigs, AlterConfigs
(as an incremental change that replaces the resource's dynamic set) and ElectLeaders are
forwarded to the active controller through the `ControllerChannel` as native
requests, as the native listener forwards them (KIP-590); DescribeQuorum asks the
controller too. DescribeCluster and DescribeConfigs are read from this node's image.
The handlers are served from `KafkaApis`' one table, which names them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import attrs

from broker import kafka_errors
from broker.broker_apis import BrokerApis
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.protocol.schema import from_body, to_body
from kraft.controller.configs import (
    OP_DELETE,
    OP_SET,
    AlterConfigOp,
    AlterConfigsOutcome,
    AlterConfigsResource,
)
from kraft.controller.configs_schema import BROKER, CONFIG_TYPES, TOPIC, described
from kraft.controller.elections import ElectLeadersRequest, PartitionElection
from kraft.controller.messages import (
    AlterConfigsResponse,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    DescribeQuorumResponse,
    ElectLeadersResponse,
    IncrementalAlterConfigsRequest,
    PartitionsIncrease,
    TopicsResponse,
)
from kraft.controller.quorum_controller import describe_cluster
from kraft.controller.replication import CreateTopic, TopicOutcome

ZERO_UUID = kafka_errors.ZERO_UUID
DESCRIBE_CONFIGS_KEY = 32
ALTER_CONFIGS_KEY = 33
# ElectLeaders' election_type (v1+; v0 elects preferred leaders only).
PREFERRED_ELECTION, UNCLEAN_ELECTION = 0, 1
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


def controller_for_clients(broker: BrokerApis, broker_ids: set[int]) -> int:
    """The controller id clients see: the active controller if it is a broker they
    can reach, else this broker. Admin requests sent to it are forwarded (KIP-590),
    and Kafka's brokers likewise name a broker, never a dedicated controller."""
    leader = broker.node.leader().leader_id
    return leader if leader in broker_ids else broker.node_id


def topic_uuid(topic_id: str | None) -> uuid.UUID:
    return ZERO_UUID if topic_id is None else uuid.UUID(topic_id)


class KafkaAdminApis:
    def __init__(self, broker: BrokerApis) -> None:
        self.broker = broker

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

    async def create_topics(self, header: Any, request: Any) -> Any:
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
                    topic_id=topic_uuid(outcome.topic_id) if version >= 7 else ZERO_UUID,
                    error_code=outcome.error_code,
                    error_message=outcome.message or None,
                    num_partitions=asked[topic.name].partitions if created else -1,
                    replication_factor=asked[topic.name].replication_factor if created else -1,
                )
            )
        return Response(topics=tuple(results))

    async def delete_topics(self, header: Any, request: Any) -> Any:
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
                topic_id=topic_uuid(image.topic_ids.get(outcome.name))
                if version >= 6
                else ZERO_UUID,
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

    async def create_partitions(self, header: Any, request: Any) -> Any:
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

    async def incremental_alter_configs(self, header: Any, request: Any) -> Any:
        ops = [
            tuple(
                AlterConfigOp(name=c.name, op=c.config_operation, value=c.value) for c in r.configs
            )
            for r in request.resources
        ]
        return await self._alter(request, ops, kafka.IncrementalAlterConfigsResponse, replace=False)

    async def alter_configs(self, header: Any, request: Any) -> Any:
        """Kafka's legacy AlterConfigs: the configs given become the resource's whole
        dynamic set (the controller deletes every other one), or are only checked."""
        ops = [
            tuple(
                AlterConfigOp(name=c.name, op=OP_SET, value=c.value)
                if c.value is not None
                else AlterConfigOp(name=c.name, op=OP_DELETE)
                for c in r.configs
            )
            for r in request.resources
        ]
        return await self._alter(request, ops, kafka.AlterConfigsResponse, replace=True)

    async def _alter(
        self,
        request: Any,
        ops: list[tuple[AlterConfigOp, ...]],
        Response: Any,
        *,
        replace: bool,
    ) -> Any:
        """Both config changes, forwarded as one incremental change (`replace`: every
        dynamic config not named is deleted); a resource type without configs here is
        refused on its own. `ops[i]`: the changes of `request.resources[i]`."""
        forwarded = [
            AlterConfigsResource(
                resource_type=RESOURCE_TYPES[r.resource_type],
                resource_name=r.resource_name,
                ops=changes,
            )
            for r, changes in zip(request.resources, ops, strict=True)
            if r.resource_type in RESOURCE_TYPES
        ]
        outcomes: Iterator[AlterConfigsOutcome] = iter(())
        if forwarded:
            answer = await self._forward(
                ApiKey.INCREMENTAL_ALTER_CONFIGS,
                IncrementalAlterConfigsRequest(
                    resources=tuple(forwarded),
                    validate_only=request.validate_only,
                    replace=replace,
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

    async def elect_leaders(self, header: Any, request: Any) -> Any:
        """Preferred or unclean elections, decided by the controller per partition;
        null topic partitions ask for every partition (those needing none left out)."""
        version = header.request_api_version
        Response = kafka.ElectLeadersResponse
        election_type = request.election_type if version >= 1 else PREFERRED_ELECTION
        if election_type not in (PREFERRED_ELECTION, UNCLEAN_ELECTION):
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"election type {election_type}")
        named = None
        if request.topic_partitions is not None:
            named = tuple(
                PartitionElection(topic=topic.topic, partition=partition)
                for topic in request.topic_partitions
                for partition in topic.partitions
            )
        answer = await self._forward(
            ApiKey.ELECT_LEADERS,
            ElectLeadersRequest(partitions=named, unclean=election_type == UNCLEAN_ELECTION),
            ElectLeadersResponse,
        )
        by_topic: dict[str, list[Any]] = {}
        for result in answer.results:
            by_topic.setdefault(result.topic, []).append(
                Response.PartitionResult(
                    partition_id=result.partition,
                    error_code=result.error_code,
                    error_message=result.message or None,
                )
            )
        return Response(
            error_code=ErrorCode.NONE,
            replica_election_results=tuple(
                Response.ReplicaElectionResult(topic=topic, partition_result=tuple(results))
                for topic, results in by_topic.items()
            ),
        )

    async def describe_quorum(self, header: Any, request: Any) -> Any:
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

    async def describe_cluster(self, header: Any, request: Any) -> Any:
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
            controller_id=controller_for_clients(self.broker, {b.broker_id for b in brokers}),
            brokers=tuple(
                Response.DescribeClusterBroker(
                    broker_id=b.broker_id, host=b.host, port=b.port, rack=b.rack
                )
                for b in brokers
            ),
        )

    async def describe_configs(self, header: Any, request: Any) -> Any:
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
