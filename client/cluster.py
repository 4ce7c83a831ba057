"""What every client needs: connections to brokers and a cache of cluster metadata.

Bootstrap addresses are only a way in: the first Metadata answer names the brokers,
and from then on requests go to the broker that leads each partition. Metadata is
refreshed when a broker says it no longer leads (NOT_LEADER_OR_FOLLOWER,
FENCED_LEADER_EPOCH, ...), when a topic is unknown, or when it is older than
`metadata_max_age_ms`, like Kafka's clients.

Requests travel over Kafka's protocol, one `KafkaConnection` per broker address, each
at the version that connection negotiated (decision 0016), so the same client works
against any Kafka-compatible broker. `request_native` is the one exception: pykraft's
own APIs, which Kafka's protocol has no message for.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from client.kafka_connection import KafkaConnection
from client.protocol import environment
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.protocol.messages import (
    BrokerEndpoint,
    MetadataResponse,
    PartitionMetadata,
    TopicMetadata,
)
from client.protocol.rpc import RpcClient

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"  # the embedded default server
METADATA_MAX_AGE_MS = 300_000  # Kafka's metadata.max.age.ms
REQUEST_TIMEOUT_MS = 30_000  # Kafka's request.timeout.ms
RETRY_BACKOFF_MS = 100  # Kafka's retry.backoff.ms
ZERO_UUID = uuid.UUID(int=0)
METADATA_TOPIC = kafka.MetadataRequest.MetadataRequestTopic


def parse_bootstrap(bootstrap: str | Sequence[str]) -> list[tuple[str, int]]:
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap server {item!r} is not host:port")
        addresses.append((host, int(port)))
    if not addresses:
        raise ValueError("no bootstrap server given")
    return addresses


@attrs.frozen(kw_only=True)
class PartitionLeadership(PartitionMetadata):
    """A partition as Metadata describes it, with the replicas the broker says are offline."""

    offline_replicas: tuple[int, ...] = ()


def _topic_id(value: uuid.UUID) -> str | None:
    return None if value == ZERO_UUID else str(value)


def metadata_view(response: Any) -> MetadataResponse:
    """Kafka's Metadata answer in the shape the client keeps (`PartitionLeadership`)."""
    return MetadataResponse(
        cluster_id=response.cluster_id or "",
        controller_id=response.controller_id,
        brokers=tuple(
            BrokerEndpoint(broker_id=b.node_id, host=b.host, port=b.port, rack=b.rack)
            for b in response.brokers
        ),
        topics=tuple(
            TopicMetadata(
                name=t.name or "",
                error_code=t.error_code,
                topic_id=_topic_id(t.topic_id),
                partitions=tuple(
                    sorted(
                        (
                            PartitionLeadership(
                                partition=p.partition_index,
                                error_code=p.error_code,
                                leader=p.leader_id,
                                leader_epoch=p.leader_epoch,
                                replicas=tuple(p.replica_nodes),
                                isr=tuple(p.isr_nodes),
                                offline_replicas=tuple(p.offline_replicas),
                            )
                            for p in t.partitions
                        ),
                        key=lambda p: p.partition,
                    )
                ),
            )
            for t in response.topics
        ),
        metadata_offset=-1,
    )


class ClusterClient:
    def __init__(
        self,
        bootstrap: str | Sequence[str] = DEFAULT_BOOTSTRAP,
        *,
        client_id: str = "pykraft",
        request_timeout_ms: int = REQUEST_TIMEOUT_MS,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS,
        rng: random.Random | None = None,
    ) -> None:
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = client_id
        self.request_timeout_s = request_timeout_ms / 1000
        self.metadata_max_age_s = metadata_max_age_ms / 1000
        self.rng = rng or environment.current().new_rng()
        self.brokers: dict[int, tuple[str, int]] = {}
        self.controller_id = -1
        self.cluster_id = ""
        self.partitions: dict[str, dict[int, PartitionMetadata]] = {}
        self.topic_errors: dict[str, int] = {}
        self.interest: set[str] = set()
        self._connections: dict[tuple[str, int], KafkaConnection] = {}
        self._native: dict[tuple[str, int], RpcClient] = {}
        self._refreshed_at = -1e9
        self._refresh_lock = trio.Lock()

    # ------------------------------------------------------------------ requests

    def _connection(self, address: tuple[str, int]) -> KafkaConnection:
        connection = self._connections.get(address)
        if connection is None:
            connection = KafkaConnection(*address, client_id=self.client_id, rng=self.rng)
            self._connections[address] = connection
        return connection

    def _address(self, broker_id: int) -> tuple[str, int]:
        address = self.brokers.get(broker_id)
        if address is None:
            raise KafkaError(ErrorCode.BROKER_NOT_AVAILABLE, f"broker {broker_id} is not known")
        return address

    async def version_for(self, broker_id: int, api_key: int) -> int:
        """The version a request of `api_key` to `broker_id` goes at (connecting if need be):
        for the requests whose fields depend on it."""
        return await self._connection(self._address(broker_id)).negotiated(
            api_key, timeout_s=self.request_timeout_s
        )

    async def request_broker(
        self, broker_id: int, request: Any, *, version: int | None = None
    ) -> Any:
        """A Kafka request to one broker; its response (None for an acks=0 Produce)."""
        return await self._connection(self._address(broker_id)).request(
            request, version=version, timeout_s=self.request_timeout_s
        )

    async def request_any(self, request: Any) -> Any:
        """To some broker that answers: known brokers first, then the bootstrap list."""
        candidates = list(self.brokers.values())
        self.rng.shuffle(candidates)
        candidates += [a for a in self.bootstrap if a not in candidates]
        last: KafkaError | None = None
        for address in candidates:
            try:
                return await self._connection(address).request(
                    request, timeout_s=self.request_timeout_s
                )
            except KafkaError as error:
                if not error.retriable:
                    raise
                last = error
        assert last is not None
        raise KafkaError(
            last.code,
            f"no broker answered ({', '.join(f'{h}:{p}' for h, p in candidates)}): {last.message}",
        )

    async def request_native(
        self, api_key: ApiKey, body: Any, *, broker_id: int | None = None
    ) -> Any:
        """The one native path: pykraft's own APIs, which Kafka's protocol has no message
        for (DESCRIBE_IMAGE; decision 0016), over the native codec that the same
        listener serves beside Kafka's (decision 0011). To `broker_id`, or any broker."""
        if broker_id is not None:
            candidates = [self._address(broker_id)]
        else:
            candidates = list(self.brokers.values())
            self.rng.shuffle(candidates)
            candidates += [a for a in self.bootstrap if a not in candidates]
        last: KafkaError | None = None
        for address in candidates:
            client = self._native.get(address)
            if client is None:
                client = self._native[address] = RpcClient(
                    *address, client_id=self.client_id, rng=self.rng
                )
            try:
                answer = await client.request(
                    api_key, API_VERSION, body, timeout_s=self.request_timeout_s
                )
            except KafkaError as error:
                if not error.retriable:
                    raise
                last = error
                continue
            # The native codec's whole-request error: a body of nothing else.
            if (
                isinstance(answer, dict)
                and set(answer) <= {"error_code", "error_message"}
                and answer.get("error_code", 0) != ErrorCode.NONE
            ):
                raise KafkaError(answer["error_code"], answer.get("error_message", ""))
            return answer
        assert last is not None
        raise last

    # ------------------------------------------------------------------ metadata

    async def metadata(
        self, broker_id: int | None, topics: Sequence[str] | None
    ) -> MetadataResponse:
        """One Metadata answer (from `broker_id`, or whichever answers), as the client keeps it."""
        request = kafka.MetadataRequest(
            topics=None if topics is None else tuple(METADATA_TOPIC(name=t) for t in topics),
            allow_auto_topic_creation=False,
        )
        if broker_id is None:
            response = await self.request_any(request)
        else:
            response = await self.request_broker(broker_id, request)
        return metadata_view(response)

    async def refresh(self, topics: Sequence[str] | None = None) -> MetadataResponse:
        """Ask for fresh metadata (all known topics plus `topics`, or every topic)."""
        async with self._refresh_lock:
            if topics is not None:
                self.interest.update(topics)
            # Every topic this client has asked about, not just those it knows now: a
            # lagging broker may not know a new topic yet, and it must be asked again.
            wanted = None if topics is None else sorted(self.interest)
            response = await self.metadata(None, wanted)
            self.cluster_id = response.cluster_id
            self.controller_id = response.controller_id
            if response.brokers:
                self.brokers = {b.broker_id: (b.host, b.port) for b in response.brokers}
            for topic in response.topics:
                if topic.error_code == ErrorCode.NONE:
                    self.partitions[topic.name] = {p.partition: p for p in topic.partitions}
                    self.topic_errors.pop(topic.name, None)
                else:
                    self.partitions.pop(topic.name, None)
                    self.topic_errors[topic.name] = topic.error_code
            self._refreshed_at = trio.current_time()
            return response

    async def partition_count(self, topic: str, *, wait_s: float = 0.0) -> int:
        """Partitions of `topic`; UNKNOWN_TOPIC_OR_PARTITION if it does not appear in time."""
        deadline = trio.current_time() + wait_s
        if topic not in self.partitions or self._stale():
            await self.refresh([topic])
        while topic not in self.partitions and trio.current_time() < deadline:
            await trio.sleep(RETRY_BACKOFF_MS / 1000)
            await self.refresh([topic])
        if topic not in self.partitions:
            raise KafkaError(
                self.topic_errors.get(topic, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
                f"topic {topic!r} is not in the cluster's metadata",
            )
        return len(self.partitions[topic])

    def bootstrap_string(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.bootstrap)

    def leader(self, topic: str, partition: int) -> PartitionMetadata | None:
        """The cached leader of a partition (None if unknown or leaderless)."""
        found = self.partitions.get(topic, {}).get(partition)
        if found is None or found.leader < 0 or found.leader not in self.brokers:
            return None
        return found

    def _stale(self) -> bool:
        return trio.current_time() - self._refreshed_at > self.metadata_max_age_s

    async def aclose(self) -> None:
        for connection in self._connections.values():
            await connection.aclose()
        self._connections.clear()
        for client in self._native.values():
            await client.aclose()
        self._native.clear()
