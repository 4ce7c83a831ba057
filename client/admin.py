"""The admin client: topics, configs, offsets, cluster and quorum, like Kafka's AdminClient.

Admin requests may go to any broker: brokers forward them to the active controller.
Answers come back as plain attrs values; a per-topic error raises `KafkaError`
naming the topic, unless `raise_errors=False` asks for the outcomes instead.

Every call is bounded: one broker may accept a connection and never answer (a paused
process), so a call gives up, with a retriable REQUEST_TIMED_OUT, after twice the
request timeout whatever the number of brokers tried (Kafka's default.api.timeout.ms,
60 s, is twice its request.timeout.ms).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from client import transactions_admin
from client.cluster import DEFAULT_BOOTSTRAP, RETRY_BACKOFF_MS, ClusterClient
from client.consumer import Consumer
from client.consumer_protocol import ConsumerProtocolError, TopicPartition, decode_assignment
from client.group_coordinator_client import COORDINATOR_MOVED, GroupCoordinatorClient
from client.protocol import environment
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.protocol.messages import PartitionMetadata
from client.transactions_admin import (
    ProducerDescription,
    TransactionDescription,
    TransactionListing,
)

# One admin call, over every broker it tries, in request timeouts (Kafka: 60 s / 30 s).
API_TIMEOUT_REQUEST_TIMEOUTS = 2
# Brokers answer Metadata from their own image at once; one that has not answered in
# this long (paused, overloaded) is not waited for to show a new topic.
VISIBLE_POLL_TIMEOUT_S = 0.5
VISIBLE_POLL_INTERVAL_S = 0.02
ZERO_UUID = uuid.UUID(int=0)
TOPIC_RESOURCE = 2  # Kafka's ConfigResource.Type TOPIC
OP_SET, OP_DELETE = 0, 1  # IncrementalAlterConfigs' config_operation
PREFERRED_ELECTION = 0  # ElectLeaders' election_type (1: unclean)
DESCRIBE_GROUPS, DELETE_GROUPS = 15, 42
METADATA_TOPIC = "__cluster_metadata"  # KRaft's metadata log, as DescribeQuorum names it


@attrs.frozen
class NewTopic:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class TopicDescription:
    name: str
    topic_id: str | None
    partitions: tuple[PartitionMetadata, ...]


@attrs.frozen
class ReplicaLag:
    replica_id: int
    log_end_offset: int
    lag: int  # behind the high-water mark
    last_fetch_ms_ago: int  # -1: never
    last_caught_up_ms_ago: int


@attrs.frozen
class QuorumDescription:
    leader_id: int
    leader_epoch: int
    high_watermark: int
    voters: tuple[ReplicaLag, ...]
    observers: tuple[ReplicaLag, ...]


@attrs.frozen
class BrokerDescription:
    broker_id: int
    host: str
    port: int
    rack: str | None
    fenced: bool
    broker_epoch: int


@attrs.frozen
class ClusterDescription:
    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerDescription, ...]


@attrs.frozen
class GroupListing:
    group_id: str
    protocol_type: str
    state: str  # "" where the broker's ListGroups is older than v4


@attrs.frozen
class GroupMemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    assignment: tuple[TopicPartition, ...]  # decoded for consumer groups


@attrs.frozen
class GroupDescription:
    group_id: str
    state: str
    protocol_type: str
    protocol: str  # the assignor chosen
    members: tuple[GroupMemberDescription, ...]


def _raise_first(outcomes: list[dict[str, Any]], what: str) -> None:
    for outcome in outcomes:
        code = outcome.get("error_code", 0)
        if code != ErrorCode.NONE:
            name = outcome.get("name") or outcome.get("resource_name", "")
            raise KafkaError(code, f"{what} {name}: {outcome.get('message', '')}".rstrip(": "))


def _outcome(
    name: str | None, code: int, message: str | None, topic_id: Any = None
) -> dict[str, Any]:
    """One topic's outcome as the admin calls return them (and the CLI prints them)."""
    return {
        "name": name or "",
        "error_code": code,
        "message": message or "",
        "topic_id": None if topic_id in (None, ZERO_UUID) else str(topic_id),
    }


class Admin:
    def __init__(
        self,
        bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP,
        *,
        request_timeout_ms: int = 30_000,
        client_id: str = "pykraft-admin",
    ) -> None:
        self.cluster = ClusterClient(
            bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms
        )

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.cluster.aclose()

    @property
    def _timeout_ms(self) -> int:
        return int(self.cluster.request_timeout_s * 1000)

    async def _request(self, request: Any) -> Any:
        """Through whichever broker answers, within the call's bound (the module's doc)."""
        timeout_s = API_TIMEOUT_REQUEST_TIMEOUTS * self.cluster.request_timeout_s
        with trio.move_on_after(timeout_s):
            return await self.cluster.request_any(request)
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"no broker answered in {timeout_s}s")

    async def _any_broker(self) -> int:
        """A broker to ask something whose request depends on its version."""
        if not self.cluster.brokers:
            await self.cluster.refresh([])
        return self.cluster.rng.choice(sorted(self.cluster.brokers))

    async def create_topics(
        self, topics: Sequence[NewTopic], *, validate_only: bool = False, raise_errors: bool = True
    ) -> list[dict[str, Any]]:
        Request = kafka.CreateTopicsRequest
        request = Request(
            topics=tuple(
                Request.CreatableTopic(
                    name=t.name,
                    num_partitions=t.partitions,
                    replication_factor=t.replication_factor,
                    configs=tuple(
                        Request.CreatableTopicConfig(name=k, value=v)
                        for k, v in sorted(t.configs.items())
                    ),
                )
                for t in topics
            ),
            timeout_ms=self._timeout_ms,
            validate_only=validate_only,
        )
        response = await self._request(request)
        outcomes = [
            _outcome(t.name, t.error_code, t.error_message, t.topic_id) for t in response.topics
        ]
        if raise_errors:
            _raise_first(outcomes, "topic")
        created = [o["name"] for o in outcomes if o["error_code"] == ErrorCode.NONE]
        if created and not validate_only:
            await self._wait_visible(created)
            if any(o["topic_id"] is None for o in outcomes):  # CreateTopics v6 and older
                ids = {t.name: t.topic_id for t in await self.describe_topics(created)}
                for o in outcomes:
                    o["topic_id"] = o["topic_id"] or ids.get(o["name"])
        return outcomes

    async def _wait_visible(self, names: list[str], timeout_s: float = 10.0) -> None:
        """Until every broker's metadata shows the new topics with leaders (brokers
        replay the controller's records a moment after it answers), so that the next
        request, to whichever broker, finds them. Best effort: the topics exist
        already; a broker that does not answer promptly is not waited for."""
        with trio.move_on_after(timeout_s):
            try:
                await self.cluster.refresh(names)
            except KafkaError:
                return
            async with trio.open_nursery() as nursery:
                for broker_id in sorted(self.cluster.brokers):
                    nursery.start_soon(self._wait_visible_on, broker_id, names)

    async def _wait_visible_on(self, broker_id: int, names: list[str]) -> None:
        while True:
            answer = None
            with trio.move_on_after(VISIBLE_POLL_TIMEOUT_S), contextlib.suppress(KafkaError):
                answer = await self.cluster.metadata(broker_id, names)
            if answer is None:
                return  # a broker that does not answer cannot be waited for
            if all(
                t.error_code == ErrorCode.NONE
                and t.partitions
                and all(p.leader >= 0 for p in t.partitions)
                for t in answer.topics
            ):
                return
            await trio.sleep(VISIBLE_POLL_INTERVAL_S)

    async def delete_topics(
        self, names: Sequence[str], *, raise_errors: bool = True
    ) -> list[dict[str, Any]]:
        broker = await self._any_broker()
        version = await self.cluster.version_for(broker, ApiKey.DELETE_TOPICS)
        Request = kafka.DeleteTopicsRequest
        if version >= 6:  # by name or id; names alone before
            request = Request(
                topics=tuple(Request.DeleteTopicState(name=n) for n in names),
                timeout_ms=self._timeout_ms,
            )
        else:
            request = Request(topic_names=tuple(names), timeout_ms=self._timeout_ms)
        response = await self.cluster.request_broker(broker, request, version=version)
        outcomes = [_outcome(t.name, t.error_code, t.error_message) for t in response.responses]
        if raise_errors:
            _raise_first(outcomes, "topic")
        return outcomes

    async def create_partitions(self, increases: dict[str, int]) -> None:
        Request = kafka.CreatePartitionsRequest
        request = Request(
            topics=tuple(
                Request.CreatePartitionsTopic(name=n, count=t, assignments=None)
                for n, t in sorted(increases.items())
            ),
            timeout_ms=self._timeout_ms,
        )
        response = await self._request(request)
        _raise_first(
            [_outcome(r.name, r.error_code, r.error_message) for r in response.results], "topic"
        )

    async def list_topics(self) -> list[str]:
        response = await self.cluster.refresh(None)
        return sorted(t.name for t in response.topics if t.error_code == ErrorCode.NONE)

    async def describe_topics(self, names: Sequence[str] | None = None) -> list[TopicDescription]:
        response = await self.cluster.refresh(None if names is None else list(names))
        wanted = None if names is None else set(names)
        found = []
        for topic in response.topics:
            if wanted is not None and topic.name not in wanted:
                continue
            if topic.error_code != ErrorCode.NONE:
                raise KafkaError(topic.error_code, f"topic {topic.name}")
            found.append(
                TopicDescription(
                    name=topic.name, topic_id=topic.topic_id, partitions=topic.partitions
                )
            )
        return found

    async def describe_cluster(self) -> ClusterDescription:
        response = await self._request(kafka.DescribeClusterRequest())
        return ClusterDescription(
            cluster_id=response.cluster_id,
            controller_id=response.controller_id,
            brokers=tuple(
                BrokerDescription(
                    broker_id=b.broker_id,
                    host=b.host,
                    port=b.port,
                    rack=b.rack,
                    fenced=b.is_fenced,  # v2+; older versions list unfenced brokers only
                    broker_epoch=-1,  # not in Kafka's DescribeCluster
                )
                for b in response.brokers
            ),
        )

    async def describe_quorum(self) -> QuorumDescription:
        Request = kafka.DescribeQuorumRequest
        request = Request(
            topics=(
                Request.TopicData(
                    topic_name=METADATA_TOPIC,
                    partitions=(Request.PartitionData(partition_index=0),),
                ),
            )
        )
        response = await self._request(request)
        (partition,) = [p for t in response.topics for p in t.partitions]
        if partition.error_code != ErrorCode.NONE:
            raise KafkaError(partition.error_code, partition.error_message or METADATA_TOPIC)
        now_ms = environment.current().wall_ms()
        high_watermark = partition.high_watermark

        def lag(replica: Any) -> ReplicaLag:
            def ago(at: int) -> int:
                return -1 if at < 0 else max(0, now_ms - at)

            return ReplicaLag(
                replica_id=replica.replica_id,
                log_end_offset=replica.log_end_offset,
                lag=max(0, high_watermark - replica.log_end_offset),
                last_fetch_ms_ago=ago(replica.last_fetch_timestamp),  # v1+; -1 before
                last_caught_up_ms_ago=ago(replica.last_caught_up_timestamp),
            )

        return QuorumDescription(
            leader_id=partition.leader_id,
            leader_epoch=partition.leader_epoch,
            high_watermark=high_watermark,
            voters=tuple(lag(v) for v in partition.current_voters),
            observers=tuple(lag(o) for o in partition.observers),
        )

    async def describe_configs(self, topic: str) -> dict[str, str | None]:
        """A topic's settings, defaults included."""
        Request = kafka.DescribeConfigsRequest
        request = Request(
            resources=(
                Request.DescribeConfigsResource(
                    resource_type=TOPIC_RESOURCE, resource_name=topic, configuration_keys=None
                ),
            )
        )
        response = await self._request(request)
        (result,) = response.results
        if result.error_code != ErrorCode.NONE:
            raise KafkaError(result.error_code, f"config of {topic}: {result.error_message or ''}")
        return {c.name: c.value for c in result.configs}

    async def alter_configs(
        self, topic: str, set_: dict[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        Request = kafka.IncrementalAlterConfigsRequest
        ops = [
            Request.AlterableConfig(name=k, config_operation=OP_SET, value=v)
            for k, v in sorted((set_ or {}).items())
        ]
        ops += [
            Request.AlterableConfig(name=k, config_operation=OP_DELETE, value=None) for k in delete
        ]
        request = Request(
            resources=(
                Request.AlterConfigsResource(
                    resource_type=TOPIC_RESOURCE, resource_name=topic, configs=tuple(ops)
                ),
            )
        )
        response = await self._request(request)
        _raise_first(
            [
                {"name": r.resource_name, "error_code": r.error_code, "message": r.error_message}
                for r in response.responses
            ],
            "config of",
        )

    async def elect_preferred_leaders(self) -> int:
        """Preferred-leader election for every partition; how many changed leader."""
        request = kafka.ElectLeadersRequest(
            election_type=PREFERRED_ELECTION,
            topic_partitions=None,  # every partition (those needing none are left out)
            timeout_ms=self._timeout_ms,
        )
        response = await self._request(request)
        return sum(
            1
            for topic in response.replica_election_results
            for result in topic.partition_result
            if result.error_code == ErrorCode.NONE
        )

    async def describe_image(self, broker_id: int | None = None) -> dict[str, Any]:
        """pykraft's own: the metadata image offset and digest a broker serves from (over
        the native codec: Kafka's protocol has no such API)."""
        if broker_id is not None and broker_id not in self.cluster.brokers:
            await self.cluster.refresh([])
        answer: dict[str, Any] = await self.cluster.request_native(
            ApiKey.DESCRIBE_IMAGE, {}, broker_id=broker_id
        )
        return answer

    async def list_offsets(self, topic: str, timestamp: int = -1) -> dict[int, int]:
        """Per partition: -1 latest (high-water mark), -2 earliest, else by timestamp."""
        count = await self.cluster.partition_count(topic)
        consumer = Consumer(self.cluster.bootstrap_string())
        try:
            found = await consumer.list_offsets({(topic, p): timestamp for p in range(count)})
        finally:
            await consumer.close()
        return {tp[1]: offset for tp, offset in sorted(found.items())}

    # ------------------------------------------------------------------ groups

    async def list_groups(self) -> list[GroupListing]:
        """Every group of every broker (each lists the groups it coordinates)."""
        await self.cluster.refresh([])
        found: dict[str, GroupListing] = {}
        for broker in sorted(self.cluster.brokers):
            response = await self._on_broker_while_loading(broker, kafka.ListGroupsRequest())
            for group in response.groups:
                found[group.group_id] = GroupListing(
                    group.group_id, group.protocol_type, group.group_state or ""
                )
        return [found[g] for g in sorted(found)]

    async def _on_broker_while_loading(self, broker: int, request: Any) -> Any:
        deadline = trio.current_time() + self.cluster.request_timeout_s
        while True:
            try:
                return await self.cluster.request_broker(broker, request)
            except KafkaError as error:
                if error.code != ErrorCode.COORDINATOR_LOAD_IN_PROGRESS:
                    raise
                if trio.current_time() >= deadline:
                    raise
            await trio.sleep(RETRY_BACKOFF_MS / 1000)

    async def _per_group(self, group_id: str, build: Any, api_key: int, code_of: Any) -> Any:
        """A request answered per group (its code inside): retried while the group's
        coordinator moves or loads, as the whole-request errors are."""
        coordinator = GroupCoordinatorClient(self.cluster, group_id)
        deadline = trio.current_time() + self.cluster.request_timeout_s
        try:
            while True:
                response = await coordinator.call(build, api_key)
                code = code_of(response)
                if code not in COORDINATOR_MOVED or trio.current_time() >= deadline:
                    return response
                await coordinator.forget()
                await trio.sleep(RETRY_BACKOFF_MS / 1000)
        finally:
            await coordinator.forget()

    async def describe_groups(self, group_ids: Sequence[str]) -> list[GroupDescription]:
        described = []
        for group_id in group_ids:
            response = await self._per_group(
                group_id,
                lambda version, g=group_id: kafka.DescribeGroupsRequest(groups=(g,)),
                DESCRIBE_GROUPS,
                lambda r: r.groups[0].error_code,
            )
            (group,) = response.groups
            if group.error_code != ErrorCode.NONE:
                raise KafkaError(group.error_code, f"group {group_id}")
            members = []
            for m in group.members:
                assignment: tuple[TopicPartition, ...] = ()
                if group.protocol_type == "consumer":
                    try:
                        assignment = decode_assignment(m.member_assignment).partitions
                    except ConsumerProtocolError:
                        assignment = ()
                members.append(
                    GroupMemberDescription(
                        member_id=m.member_id,
                        group_instance_id=m.group_instance_id,
                        client_id=m.client_id,
                        host=m.client_host,
                        assignment=assignment,
                    )
                )
            described.append(
                GroupDescription(
                    group_id=group.group_id,
                    state=group.group_state,
                    protocol_type=group.protocol_type,
                    protocol=group.protocol_data,
                    members=tuple(members),
                )
            )
        return described

    async def list_group_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        """The group's committed offsets, every partition it has one for."""
        coordinator = GroupCoordinatorClient(self.cluster, group_id)
        try:
            found = await coordinator.fetch_offsets(None)
        finally:
            await coordinator.forget()
        return {tp: offset for tp, offset in sorted(found.items()) if offset is not None}

    async def delete_groups(
        self, group_ids: Sequence[str], *, raise_errors: bool = True
    ) -> dict[str, int]:
        """Delete groups without members (and their offsets); the error code per group."""
        codes = {}
        for group_id in group_ids:
            response = await self._per_group(
                group_id,
                lambda version, g=group_id: kafka.DeleteGroupsRequest(groups_names=(g,)),
                DELETE_GROUPS,
                lambda r: r.results[0].error_code,
            )
            codes[group_id] = response.results[0].error_code
        if raise_errors:
            for group_id, code in codes.items():
                if code != ErrorCode.NONE:
                    raise KafkaError(code, f"group {group_id}")
        return codes

    async def alter_group_offsets(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Set a group's committed offsets (generation -1: the group must have no
        members; the coordinator refuses otherwise), as kafka-consumer-groups does."""
        coordinator = GroupCoordinatorClient(self.cluster, group_id)
        try:
            await coordinator.commit_offsets(offsets)
        finally:
            await coordinator.forget()

    # ------------------------------------------------------------------ transactions

    async def list_transactions(self) -> list[TransactionListing]:
        return await transactions_admin.list_transactions(self.cluster)

    async def describe_transactions(
        self, transactional_ids: Sequence[str]
    ) -> list[TransactionDescription]:
        return await transactions_admin.describe_transactions(self.cluster, transactional_ids)

    async def describe_producers(self, topic: str, partition: int) -> list[ProducerDescription]:
        return await transactions_admin.describe_producers(self.cluster, topic, partition)
