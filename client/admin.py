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
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from client.cluster import DEFAULT_BOOTSTRAP, ClusterClient
from client.consumer import Consumer
from client.protocol import environment
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import PartitionMetadata

# One admin call, over every broker it tries, in request timeouts (Kafka: 60 s / 30 s).
API_TIMEOUT_REQUEST_TIMEOUTS = 2
# Brokers answer Metadata from their own image at once; one that has not answered in
# this long (paused, overloaded) is not waited for to show a new topic.
VISIBLE_POLL_TIMEOUT_S = 0.5
VISIBLE_POLL_INTERVAL_S = 0.02


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


def _raise_first(outcomes: list[dict[str, Any]], what: str) -> None:
    for outcome in outcomes:
        code = outcome.get("error_code", 0)
        if code != ErrorCode.NONE:
            name = outcome.get("name") or outcome.get("resource_name", "")
            raise KafkaError(code, f"{what} {name}: {outcome.get('message', '')}".rstrip(": "))


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

    async def _request(self, api_key: ApiKey, body: Any) -> Any:
        """Through whichever broker answers, within the call's bound (the module's doc)."""
        timeout_s = API_TIMEOUT_REQUEST_TIMEOUTS * self.cluster.request_timeout_s
        with trio.move_on_after(timeout_s):
            return await self.cluster.request_any(api_key, body)
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"no broker answered in {timeout_s}s")

    async def create_topics(
        self, topics: Sequence[NewTopic], *, validate_only: bool = False, raise_errors: bool = True
    ) -> list[dict[str, Any]]:
        body = {
            "topics": [
                {
                    "name": t.name,
                    "partitions": t.partitions,
                    "replication_factor": t.replication_factor,
                    "configs": [[k, v] for k, v in sorted(t.configs.items())],
                }
                for t in topics
            ],
            "validate_only": validate_only,
        }
        outcomes: list[dict[str, Any]] = (await self._request(ApiKey.CREATE_TOPICS, body))["topics"]
        if raise_errors:
            _raise_first(outcomes, "topic")
        created = [o["name"] for o in outcomes if o.get("error_code") == ErrorCode.NONE]
        if created and not validate_only:
            await self._wait_visible(created)
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
        body = {"topics": names}
        while True:
            answer = None
            with trio.move_on_after(VISIBLE_POLL_TIMEOUT_S), contextlib.suppress(KafkaError):
                answer = await self.cluster.request_broker(broker_id, ApiKey.METADATA, body)
            if answer is None:
                return  # a broker that does not answer cannot be waited for
            if all(
                t["error_code"] == ErrorCode.NONE
                and t["partitions"]
                and all(p["leader"] >= 0 for p in t["partitions"])
                for t in answer["topics"]
            ):
                return
            await trio.sleep(VISIBLE_POLL_INTERVAL_S)

    async def delete_topics(
        self, names: Sequence[str], *, raise_errors: bool = True
    ) -> list[dict[str, Any]]:
        answer = await self._request(ApiKey.DELETE_TOPICS, {"names": list(names)})
        if raise_errors:
            _raise_first(answer["topics"], "topic")
        return list(answer["topics"])

    async def create_partitions(self, increases: dict[str, int]) -> None:
        body = {"topics": [{"name": n, "total": t} for n, t in sorted(increases.items())]}
        answer = await self._request(ApiKey.CREATE_PARTITIONS, body)
        _raise_first(answer["topics"], "topic")

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
        answer = await self._request(ApiKey.DESCRIBE_CLUSTER, {})
        return ClusterDescription(
            cluster_id=answer["cluster_id"],
            controller_id=answer["controller_id"],
            brokers=tuple(
                BrokerDescription(
                    broker_id=b["broker_id"],
                    host=b["host"],
                    port=b["port"],
                    rack=b["rack"],
                    fenced=b["fenced"],
                    broker_epoch=b["broker_epoch"],
                )
                for b in answer["brokers"]
            ),
        )

    async def describe_quorum(self) -> QuorumDescription:
        answer = await self._request(ApiKey.DESCRIBE_QUORUM, {})
        now_ms = environment.current().wall_ms()
        high_watermark = answer["high_watermark"]

        def lag(replica: dict[str, Any]) -> ReplicaLag:
            def ago(at: int) -> int:
                return -1 if at < 0 else max(0, now_ms - at)

            return ReplicaLag(
                replica_id=replica["replica_id"],
                log_end_offset=replica["log_end_offset"],
                lag=max(0, high_watermark - replica["log_end_offset"]),
                last_fetch_ms_ago=ago(replica["last_fetch_timestamp"]),
                last_caught_up_ms_ago=ago(replica["last_caught_up_timestamp"]),
            )

        return QuorumDescription(
            leader_id=answer["leader_id"],
            leader_epoch=answer["leader_epoch"],
            high_watermark=high_watermark,
            voters=tuple(lag(v) for v in answer["voters"]),
            observers=tuple(lag(o) for o in answer["observers"]),
        )

    async def alter_configs(
        self, topic: str, set_: dict[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        ops = [{"name": k, "op": 0, "value": v} for k, v in sorted((set_ or {}).items())]
        ops += [{"name": k, "op": 1} for k in delete]
        body = {"resources": [{"resource_type": "topic", "resource_name": topic, "ops": ops}]}
        answer = await self._request(ApiKey.INCREMENTAL_ALTER_CONFIGS, body)
        _raise_first(answer["resources"], "config of")

    async def elect_preferred_leaders(self) -> int:
        answer = await self._request(ApiKey.ELECT_LEADERS, {})
        return int(answer["elected"])

    async def list_offsets(self, topic: str, timestamp: int = -1) -> dict[int, int]:
        """Per partition: -1 latest (high-water mark), -2 earliest, else by timestamp."""
        count = await self.cluster.partition_count(topic)
        consumer = Consumer(self.cluster.bootstrap_string())
        try:
            found = await consumer.list_offsets({(topic, p): timestamp for p in range(count)})
        finally:
            await consumer.close()
        return {tp[1]: offset for tp, offset in sorted(found.items())}
