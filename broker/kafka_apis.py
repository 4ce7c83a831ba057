"""Kafka's client APIs on the PLAINTEXT listener (decision 0011).

Each handler maps the messages generated from Kafka's definitions
(`client.protocol.kafka`) to the broker's own typed calls and back; none holds logic
of its own about the data or the metadata. Produce, Fetch, ListOffsets and
DeleteRecords go to `DataApis`; Metadata and DescribeCluster are read from this
node's image through the same functions as the native listener's; the admin APIs
(topics, partitions, configs, the quorum, the cluster) are `KafkaAdminApis'`, most of
them forwarded to the active controller (KIP-590). This module keeps the one table.

`SERVED` is what is built, and so what ApiVersions advertises: an API absent from it
is not advertised, and a request outside its range closes the connection (except
ApiVersions, answered at v0). Produce is advertised from v0, as Kafka 4 does
(KAFKA-18659: librdkafka compresses only when v0 is in range), though the codec
cannot read v0-2 (Kafka 4 refuses them too). The group APIs (FindCoordinator,
JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups,
ListGroups, DeleteGroups) are `KafkaGroupApis`' over the broker's `GroupDriver`.
InitProducerId is `KafkaProducerApis`' (idempotent producers; a transactional id goes
to the transaction coordinator); AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
DescribeTransactions and ListTransactions are `KafkaTxnApis`' over the `TxnDriver`. Clients cannot create topics
named `__...` (the broker's).

Errors are Kafka's codes (`ErrorCode` has Kafka's numbers). An error concerning the
whole request (a `KafkaError` from the call, a handler's bug) is answered by
`error_response`, which puts the code where that API carries errors: at the top where
it has one, and at every topic or partition the request named.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from broker import kafka_errors
from broker.broker_apis import BrokerApis, metadata
from broker.data_apis import MAX_TIMESTAMP, DataApis
from broker.group_driver import GroupDriver
from broker.group_txn_offsets import (
    TXN_OFFSET_COMMIT,
    TXN_OFFSET_COMMIT_VERSIONS,
    KafkaTxnOffsetApis,
    txn_offset_commit_error,
)
from broker.kafka_admin_apis import (
    ALTER_CONFIGS_KEY,
    DESCRIBE_CONFIGS_KEY,
    RESERVED_TOPIC_PREFIX,
    KafkaAdminApis,
    controller_for_clients,
    topic_uuid,
)
from broker.kafka_group_apis import KafkaGroupApis
from broker.kafka_producer_apis import (
    DESCRIBE_PRODUCERS,
    DESCRIBE_PRODUCERS_VERSIONS,
    INIT_PRODUCER_ID,
    INIT_PRODUCER_ID_VERSIONS,
    DescribeProducersApi,
    KafkaProducerApis,
    describe_producers_error,
    init_producer_id_error,
)
from broker.kafka_txn_apis import KafkaTxnApis
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

ZERO_UUID = kafka_errors.ZERO_UUID
OFFSET_FOR_LEADER_EPOCH_KEY = 23

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
        self,
        broker: BrokerApis,
        data: DataApis,
        groups: GroupDriver | None = None,
        producers: KafkaProducerApis | None = None,
        transactions: KafkaTxnApis | None = None,
    ) -> None:
        self.broker = broker
        self.data = data
        admin = KafkaAdminApis(broker)
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
                low=2, high=7, handle=admin.create_topics, error=kafka_errors.create_topics_error
            ),
            ApiKey.DELETE_TOPICS: Served(
                low=1, high=6, handle=admin.delete_topics, error=kafka_errors.delete_topics_error
            ),
            ApiKey.CREATE_PARTITIONS: Served(
                low=0,
                high=3,
                handle=admin.create_partitions,
                error=kafka_errors.create_partitions_error,
            ),
            ApiKey.DESCRIBE_CLUSTER: Served(
                low=0,
                high=1,
                handle=admin.describe_cluster,
                error=kafka_errors.describe_cluster_error,
            ),
            ApiKey.INCREMENTAL_ALTER_CONFIGS: Served(
                low=0,
                high=1,
                handle=admin.incremental_alter_configs,
                error=kafka_errors.incremental_alter_configs_error,
            ),
            DESCRIBE_CONFIGS_KEY: Served(
                low=1,
                high=4,
                handle=admin.describe_configs,
                error=kafka_errors.describe_configs_error,
            ),
            ApiKey.DESCRIBE_QUORUM: Served(
                low=0,
                high=1,
                handle=admin.describe_quorum,
                error=kafka_errors.describe_quorum_error,
            ),
            ALTER_CONFIGS_KEY: Served(
                low=0, high=2, handle=admin.alter_configs, error=kafka_errors.alter_configs_error
            ),
            ApiKey.ELECT_LEADERS: Served(
                low=0, high=2, handle=admin.elect_leaders, error=kafka_errors.elect_leaders_error
            ),
            OFFSET_FOR_LEADER_EPOCH_KEY: Served(
                low=2,
                high=4,
                handle=self._offset_for_leader_epoch,
                error=kafka_errors.offset_for_leader_epoch_error,
            ),
        }
        if groups is not None:  # the group APIs (issue 16)
            group_apis = KafkaGroupApis(
                groups, transactions=transactions.driver if transactions is not None else None
            )
            for key, (low, high, handle, error) in group_apis.served().items():
                self.served[key] = Served(low=low, high=high, handle=handle, error=error)
        if producers is not None:  # idempotent producers' ids (issue 17)
            low, high = INIT_PRODUCER_ID_VERSIONS
            self.served[INIT_PRODUCER_ID] = Served(
                low=low, high=high, handle=producers.init_producer_id, error=init_producer_id_error
            )
        low, high = DESCRIBE_PRODUCERS_VERSIONS
        self.served[DESCRIBE_PRODUCERS] = Served(
            low=low,
            high=high,
            handle=DescribeProducersApi(data.replicas.partition).describe_producers,
            error=describe_producers_error,
        )
        if transactions is not None:  # the transaction coordinator's APIs (issue 17)
            for key, (low, high, handle, error) in transactions.served().items():
                self.served[key] = Served(low=low, high=high, handle=handle, error=error)
            if groups is not None:  # offsets committed inside transactions
                low, high = TXN_OFFSET_COMMIT_VERSIONS
                self.served[TXN_OFFSET_COMMIT] = Served(
                    low=low,
                    high=high,
                    handle=KafkaTxnOffsetApis(groups).txn_offset_commit,
                    error=txn_offset_commit_error,
                )
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
                topic_id=topic_uuid(t.topic_id) if version >= 10 else ZERO_UUID,
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
                controller_for_clients(self.broker, {b.broker_id for b in native.brokers})
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
            transactional_id=request.transactional_id if version >= 3 else None,
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
            isolation_level=request.isolation_level,
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
                            last_stable_offset=p.last_stable_offset,
                            log_start_offset=p.log_start_offset if version >= 5 else -1,
                            aborted_transactions=None
                            if p.aborted_transactions is None
                            else tuple(
                                Response.AbortedTransaction(
                                    producer_id=a.producer_id, first_offset=a.first_offset
                                )
                                for a in p.aborted_transactions
                            ),
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
        # The earliest (-2), the latest (-1), a point in time and, from v7, the largest
        # timestamp (-3, KIP-734) are built; other specs are refused per partition.
        lowest = MAX_TIMESTAMP if version >= 7 else EARLIEST_TIMESTAMP
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
                    if p.timestamp >= lowest
                ),
            )
            for topic in request.topics
        )
        native = self.data.list_offsets_request(
            ListOffsetsRequest(topics=wanted, isolation_level=request.isolation_level)
        )
        Response = kafka.ListOffsetsResponse

        def answers(topic: Any, found: tuple[PartitionOffset, ...]) -> tuple[Any, ...]:
            results = iter(found)  # in request order, without the refused specs
            out = []
            for item in topic.partitions:
                result = (
                    next(results)
                    if item.timestamp >= lowest
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
