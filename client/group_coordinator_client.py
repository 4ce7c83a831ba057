"""Talking to a group's coordinator: finding it, asking it, committing and fetching offsets.

Any broker answers FindCoordinator; the coordinator is the broker leading the group's
`__consumer_offsets` partition. Requests to it go over a connection of their own, as
Kafka's Java client does (it addresses the coordinator as another node): a JoinGroup
may wait a whole rebalance timeout, and heartbeats must not queue behind fetches.
NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS or a lost
connection mean the coordinator moved or is loading: it is found again and the request
asked again, with a backoff, until the call's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio

from client.cluster import RETRY_BACKOFF_MS, ClusterClient
from client.consumer_protocol import TopicPartition
from client.kafka_connection import KafkaConnection
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

log = logging.getLogger(__name__)

GROUP_KEY_TYPE, TRANSACTION_KEY_TYPE = 0, 1  # FindCoordinator's key types
FIND_COORDINATOR, OFFSET_COMMIT, OFFSET_FETCH = 10, 8, 9
COORDINATOR_MOVED = frozenset(
    {
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.NETWORK_EXCEPTION,
        ErrorCode.REQUEST_TIMED_OUT,
    }
)
# Offsets not yet settled (a transaction's, KIP-447): ask again.
OFFSETS_UNSETTLED = frozenset({ErrorCode.UNSTABLE_OFFSET_COMMIT})
CommitTopic = kafka.OffsetCommitRequest.OffsetCommitRequestTopic
CommitPartition = kafka.OffsetCommitRequest.OffsetCommitRequestPartition
FetchTopic = kafka.OffsetFetchRequest.OffsetFetchRequestTopic


class CommitFailed(KafkaError):
    """Kafka's CommitFailedException: the group moved on (a rebalance, this member
    expired); the offsets were not committed. Not retriable: rejoin and read again."""

    @property
    def retriable(self) -> bool:
        return False


class GroupCoordinatorClient:
    def __init__(
        self, cluster: ClusterClient, group_id: str, *, key_type: int = GROUP_KEY_TYPE
    ) -> None:
        """`key_type` TRANSACTION_KEY_TYPE: `group_id` is a transactional id, and the
        coordinator is its transaction coordinator."""
        if not group_id:
            raise ValueError("a group id is needed for group requests")
        self.cluster = cluster
        self.group_id = group_id
        self.key_type = key_type
        self.coordinator_id = -1
        self._connection: KafkaConnection | None = None

    # ------------------------------------------------------------------ finding it

    async def _find(self) -> KafkaConnection:
        if not self.cluster.brokers:
            await self.cluster.refresh([])
        broker = self.cluster.rng.choice(sorted(self.cluster.brokers))
        version = await self.cluster.version_for(broker, FIND_COORDINATOR)
        if version >= 4:
            request = kafka.FindCoordinatorRequest(
                key_type=self.key_type, coordinator_keys=(self.group_id,)
            )
        else:
            request = kafka.FindCoordinatorRequest(key=self.group_id, key_type=self.key_type)
        response = await self.cluster.request_broker(broker, request, version=version)
        if version >= 4:
            (found,) = response.coordinators
            if found.error_code != ErrorCode.NONE:
                raise KafkaError(found.error_code, found.error_message or self.group_id)
            node, host, port = found.node_id, found.host, found.port
        else:
            node, host, port = response.node_id, response.host, response.port
        if self._connection is None or (self._connection.host, self._connection.port) != (
            host,
            port,
        ):
            await self.forget()
            self._connection = KafkaConnection(
                host, port, client_id=self.cluster.client_id, rng=self.cluster.rng
            )
        self.coordinator_id = node
        log.debug("group %s: coordinator is broker %d (%s:%d)", self.group_id, node, host, port)
        return self._connection

    async def forget(self) -> None:
        connection, self._connection = self._connection, None
        self.coordinator_id = -1
        if connection is not None:
            await connection.aclose()

    async def call(
        self,
        build: Callable[[int], Any],
        api_key: int,
        *,
        retry_for_s: float | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """`build(version)` sent to the coordinator; found again and retried while it moves.

        `timeout_s` bounds one exchange (a JoinGroup waits a rebalance), `retry_for_s`
        the retries (a request timeout unless told)."""
        request_timeout_s = self.cluster.request_timeout_s
        deadline = trio.current_time() + (request_timeout_s if retry_for_s is None else retry_for_s)
        while True:
            try:
                connection = self._connection or await self._find()
                version = await connection.negotiated(api_key, timeout_s=request_timeout_s)
                return await connection.request(
                    build(version), version=version, timeout_s=timeout_s or request_timeout_s
                )
            except KafkaError as error:
                if error.code not in COORDINATOR_MOVED:
                    raise
                log.debug("group %s: coordinator moved or is loading: %s", self.group_id, error)
                await self.forget()
                if trio.current_time() >= deadline:
                    raise
            await trio.sleep(RETRY_BACKOFF_MS / 1000)

    # ------------------------------------------------------------------ offsets

    async def commit_offsets(
        self,
        offsets: Mapping[TopicPartition, int],
        *,
        generation_id: int = -1,
        member_id: str = "",
        group_instance_id: str | None = None,
        metadata: str = "",
    ) -> None:
        """Commit (generation -1 and no member: a group without members, Kafka's simple
        consumer or an admin). A partition's error raises after every partition's was read."""
        if not offsets:
            return
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), offset in sorted(offsets.items()):
            by_topic.setdefault(topic, []).append(
                CommitPartition(
                    partition_index=partition, committed_offset=offset, committed_metadata=metadata
                )
            )
        topics = tuple(CommitTopic(name=t, partitions=tuple(p)) for t, p in by_topic.items())

        def build(version: int) -> Any:
            return kafka.OffsetCommitRequest(
                group_id=self.group_id,
                generation_id_or_member_epoch=generation_id,
                member_id=member_id,
                group_instance_id=group_instance_id if version >= 7 else None,
                topics=topics,
            )

        deadline = trio.current_time() + self.cluster.request_timeout_s
        while True:
            response = await self.call(build, OFFSET_COMMIT)
            codes = {p.error_code for t in response.topics for p in t.partitions} - {ErrorCode.NONE}
            if not codes:
                return
            moved = codes & COORDINATOR_MOVED
            if moved and codes <= COORDINATOR_MOVED and trio.current_time() < deadline:
                await self.forget()
                await trio.sleep(RETRY_BACKOFF_MS / 1000)
                continue
            code = min(codes)
            if code in (
                ErrorCode.UNKNOWN_MEMBER_ID,
                ErrorCode.ILLEGAL_GENERATION,
                ErrorCode.REBALANCE_IN_PROGRESS,
                ErrorCode.FENCED_INSTANCE_ID,
            ):
                raise CommitFailed(code, f"group {self.group_id}: the commit was refused")
            raise KafkaError(code, f"group {self.group_id}: offset commit")

    async def fetch_offsets(
        self, partitions: list[TopicPartition] | None
    ) -> dict[TopicPartition, int | None]:
        """The committed offset per partition (None: none committed); None asks for all."""
        topics: tuple[Any, ...] | None = None
        if partitions is not None:
            by_topic: dict[str, list[int]] = {}
            for topic, partition in sorted(partitions):
                by_topic.setdefault(topic, []).append(partition)
            topics = tuple(
                FetchTopic(name=t, partition_indexes=tuple(p)) for t, p in by_topic.items()
            )

        def build(version: int) -> Any:
            if topics is None and version < 2:
                raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, "OffsetFetch of every topic")
            return kafka.OffsetFetchRequest(group_id=self.group_id, topics=topics)

        deadline = trio.current_time() + self.cluster.request_timeout_s
        while True:
            response = await self.call(build, OFFSET_FETCH)
            found: dict[TopicPartition, int | None] = {}
            retry = False
            for topic in response.topics:
                for item in topic.partitions:
                    code = item.error_code
                    if code in COORDINATOR_MOVED | OFFSETS_UNSETTLED:
                        retry = True
                        continue
                    if code not in (ErrorCode.NONE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
                        raise KafkaError(code, f"group {self.group_id}: {topic.name}")
                    offset = item.committed_offset
                    found[(topic.name, item.partition_index)] = (
                        None if offset < 0 or code != ErrorCode.NONE else offset
                    )
            if not retry:
                if partitions is not None:
                    return {tp: found.get(tp) for tp in partitions}
                return found
            if trio.current_time() >= deadline:
                raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"group {self.group_id}: offsets")
            await self.forget()
            await trio.sleep(RETRY_BACKOFF_MS / 1000)
