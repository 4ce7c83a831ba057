"""The active controller: the Raft leader turning requests into committed records.

Every controller-role node runs one. While this node is not the Raft leader it
answers controller requests with NOT_CONTROLLER and the id of the node that is. Once
it leads, it still makes no decision until its loader has replayed the committed log
through its own leader-change record (everything earlier is committed by then); it
then gives every broker a fresh session, so that a failover never fences brokers
that heartbeated to the old controller.

Decisions are serialized: each one is computed on the image that includes every
record this controller has already proposed (`_pending`), proposed as one batch,
and answered once committed and replayed. Computing and proposing happen without an
await in between, so no two decisions see the same image.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from client.protocol import environment
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.rpc import error_body
from client.protocol.schema import from_body, to_body
from kraft.controller.cluster import (
    BROKER_SESSION_TIMEOUT_MS,
    BrokerHeartbeatRequest,
    BrokerRegistrationRequest,
    BrokerSessions,
    fence_expired_brokers,
    heartbeat,
    register_broker,
)
from kraft.controller.configs import incremental_alter_configs, replacing
from kraft.controller.elections import ElectLeadersRequest, elect_leaders
from kraft.controller.messages import (
    AllocateProducerIdsRequest,
    AlterConfigsResponse,
    BrokerDescription,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    DescribeClusterResponse,
    DescribeImageResponse,
    DescribeQuorumResponse,
    ElectLeadersResponse,
    IncrementalAlterConfigsRequest,
    ReplicaState,
    TopicsResponse,
)
from kraft.controller.producer_ids import allocate_producer_ids
from kraft.controller.replication import (
    AlterPartition,
    create_partitions,
    create_topics,
    delete_topics,
)
from kraft.controller.replication import (
    alter_partition as decide_alter_partition,
)
from kraft.controller.result import ControllerResult
from kraft.metadata.image import ELR_FEATURE, MetadataImage, MetadataReplayError, replay
from kraft.metadata.loader import MetadataLoader
from kraft.metadata.records import FeatureLevelRecord, MetadataRecord, NoOpRecord, encode_record
from kraft.raft.core import NotLeaderError
from kraft.raft.progress import ReplicaProgress
from kraft.runtime import RaftNode

log = logging.getLogger(__name__)

# How often the active controller looks for expired broker sessions.
FENCE_CHECK_INTERVAL_S = 0.25


class NotController(KafkaError):
    def __init__(self, controller_id: int) -> None:
        super().__init__(
            ErrorCode.NOT_CONTROLLER, f"this node is not the active controller ({controller_id} is)"
        )
        self.controller_id = controller_id


def describe_image(node_id: int, loader: MetadataLoader) -> DescribeImageResponse:
    image = loader.image
    return DescribeImageResponse(
        error_code=ErrorCode.NONE,
        node_id=node_id,
        offset=image.offset,
        next_offset=loader.next_offset,
        digest=image.digest(),
        brokers=len(image.brokers),
        topics=len(image.topics),
        partitions=sum(len(topic.partitions) for topic in image.topics.values()),
        snapshots_written=loader.snapshots_written,
        snapshots_loaded=loader.snapshots_loaded,
    )


def describe_cluster(
    image: MetadataImage, cluster_id: str, controller_id: int
) -> DescribeClusterResponse:
    brokers = []
    for broker_id in sorted(image.brokers):
        registration = image.brokers[broker_id]
        listener = registration.listeners[0]  # brokers register their client listener first
        brokers.append(
            BrokerDescription(
                broker_id=broker_id,
                broker_epoch=registration.broker_epoch,
                host=listener.host,
                port=listener.port,
                rack=registration.rack,
                fenced=registration.fenced,
            )
        )
    return DescribeClusterResponse(
        error_code=ErrorCode.NONE,
        cluster_id=cluster_id,
        controller_id=controller_id,
        brokers=tuple(brokers),
    )


class QuorumController:
    def __init__(
        self,
        node: RaftNode,
        loader: MetadataLoader,
        *,
        cluster_id: str,
        rng: random.Random,
        session_timeout_ms: int = BROKER_SESSION_TIMEOUT_MS,
        eligible_leader_replicas_enable: bool = True,
    ) -> None:
        self.node = node
        self.elr_level = 1 if eligible_leader_replicas_enable else 0
        # Decisions whose records did not replay onto the pending image (a controller
        # bug): refused, never proposed. The simulator counts them as findings.
        self.invalid_results = 0
        self.loader = loader
        self.cluster_id = cluster_id
        self.rng = rng
        self.sessions = BrokerSessions(session_timeout_ms)
        self.active_epoch: int | None = None
        self.activations = 0
        self._pending = loader.image
        self._last_written = -1
        self._handlers: dict[int, Callable[[Any], Awaitable[Any]]] = {
            ApiKey.BROKER_REGISTRATION: self._broker_registration,
            ApiKey.BROKER_HEARTBEAT: self._broker_heartbeat,
            ApiKey.CREATE_TOPICS: self._create_topics,
            ApiKey.DELETE_TOPICS: self._delete_topics,
            ApiKey.CREATE_PARTITIONS: self._create_partitions,
            ApiKey.ALTER_PARTITION: self._alter_partition,
            ApiKey.ELECT_LEADERS: self._elect_leaders,
            ApiKey.INCREMENTAL_ALTER_CONFIGS: self._incremental_alter_configs,
            ApiKey.ALLOCATE_PRODUCER_IDS: self._allocate_producer_ids,
            ApiKey.DESCRIBE_QUORUM: self._describe_quorum,
            ApiKey.DESCRIBE_CLUSTER: self._describe_cluster,
            ApiKey.DESCRIBE_IMAGE: self._describe_image,
        }

    @property
    def is_active(self) -> bool:
        return self.active_epoch is not None

    def now_ms(self) -> int:
        return self.node.now_ms()

    # ------------------------------------------------------------------ activation

    async def run(self) -> None:
        """Follow Raft leadership: activate, check broker sessions, step down."""
        while True:
            self._update_activation()
            if self.is_active:
                self._fence_expired()
            with trio.move_on_after(FENCE_CHECK_INTERVAL_S):
                await self.node.wait_for_change()
                # The loader may still be replaying what made the change.
                await trio.sleep(0)

    def _update_activation(self) -> None:
        epoch_start = self.node.leader_epoch_start()
        epoch = self.node.leader().epoch
        if self.active_epoch is not None and (epoch_start is None or epoch != self.active_epoch):
            log.info("controller %d: no longer active (epoch %d)", self.node_id, epoch)
            self.active_epoch = None
        if (
            self.active_epoch is None
            and epoch_start is not None
            and self.loader.next_offset > epoch_start
        ):
            self._activate(epoch)

    def _activate(self, epoch: int) -> None:
        self.active_epoch = epoch
        self.activations += 1
        self._pending = self.loader.image
        self._last_written = self.loader.next_offset - 1
        self.sessions.start_all(self._pending, self.now_ms())
        # A record of our own, so followers' images show the new controller's epoch.
        records: list[MetadataRecord] = [NoOpRecord()]
        if self._pending.features.get(ELR_FEATURE, 0) != self.elr_level:
            records.append(FeatureLevelRecord(name=ELR_FEATURE, level=self.elr_level))
        self._append(ControllerResult(records=tuple(records), response=None))
        log.info(
            "controller %d: active in epoch %d at offset %d",
            self.node_id,
            epoch,
            self.loader.next_offset,
        )

    @property
    def node_id(self) -> int:
        return self.node.config.local_id

    def _fence_expired(self) -> None:
        if not self.is_active:
            return  # sessions are only judged once the whole committed log is replayed
        result = fence_expired_brokers(self._pending, self.sessions, self.now_ms())
        if result.records:
            log.info("controller %d: fencing brokers %s", self.node_id, result.response)
            with contextlib.suppress(KafkaError):  # logged and counted by _append
                self._append(result)

    # ------------------------------------------------------------------ writing

    def _require_active(self) -> None:
        # Leadership may have moved since run() last looked.
        self._update_activation()
        if not self.is_active:
            raise NotController(self.node.leader().leader_id)

    def _append(self, result: ControllerResult) -> None:
        """Fold the records into a candidate image, then propose them (no waiting).

        Compute, then commit: records that do not replay onto the pending image would
        stop every node's loader once committed, so they are refused here instead.
        """
        if not result.records:
            return
        first = self.node.log_end_offset
        try:
            candidate = replay(
                self._pending, [(first + i, record) for i, record in enumerate(result.records)]
            )
        except MetadataReplayError as error:
            self.invalid_results += 1
            log.error("controller %d: refusing records that do not replay: %s", self.node_id, error)
            raise KafkaError(
                ErrorCode.UNKNOWN_SERVER_ERROR, f"the controller's decision is invalid: {error}"
            ) from None
        try:
            last = self.node.propose([encode_record(record) for record in result.records])
        except NotLeaderError as error:
            self.active_epoch = None
            raise NotController(error.leader.leader_id) from None
        assert last == first + len(result.records) - 1
        self._pending = candidate
        self._last_written = last

    async def _write(self, decide: Callable[[MetadataImage, int], ControllerResult]) -> Any:
        """Decide on the pending image, propose, answer once committed and replayed."""
        self._require_active()
        result = decide(self._pending, self.node.log_end_offset)
        self._append(result)
        # Also for an answer without records: it may rest on records not yet committed.
        offset = self._last_written
        try:
            await self.node.wait_committed(offset)
        except NotLeaderError as error:
            raise NotController(error.leader.leader_id) from None
        await self.loader.wait_applied(offset)
        return result.response

    # ------------------------------------------------------------------ the API

    async def handle(self, api_key: int, version: int, body: Any) -> Any:
        handler = self._handlers.get(api_key)
        if handler is None:
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"api {api_key} is not a controller api")
        try:
            return to_body(await handler(body))
        except NotController as error:
            answer = error_body(error.code, error.message)
            answer["controller_id"] = error.controller_id
            return answer

    async def _broker_registration(self, body: Any) -> Any:
        request = from_body(BrokerRegistrationRequest, body)
        return await self._write(
            lambda image, offset: register_broker(
                image, request, offset, self.sessions, self.now_ms()
            )
        )

    async def _broker_heartbeat(self, body: Any) -> Any:
        request = from_body(BrokerHeartbeatRequest, body)
        return await self._write(
            lambda image, _: heartbeat(image, request, self.sessions, self.now_ms())
        )

    async def _create_topics(self, body: Any) -> Any:
        request = from_body(CreateTopicsRequest, body)

        def decide(image: MetadataImage, _: int) -> ControllerResult:
            result = create_topics(image, request.topics, self.rng, internal=request.internal)
            if request.validate_only:
                return ControllerResult(records=(), response=result.response)
            return result

        return TopicsResponse(topics=await self._write(decide))

    async def _delete_topics(self, body: Any) -> Any:
        request = from_body(DeleteTopicsRequest, body)
        outcomes = await self._write(lambda image, _: delete_topics(image, request.names))
        return TopicsResponse(topics=outcomes)

    async def _create_partitions(self, body: Any) -> Any:
        request = from_body(CreatePartitionsRequest, body)

        def decide(image: MetadataImage, _: int) -> ControllerResult:
            records: list[MetadataRecord] = []
            outcomes = []
            for increase in request.topics:
                step = create_partitions(image, increase.name, increase.total, self.rng)
                records += step.records
                outcomes.append(step.response)
                image = replay(
                    image, [(image.offset + 1 + i, r) for i, r in enumerate(step.records)]
                )
            return ControllerResult(records=tuple(records), response=tuple(outcomes))

        return TopicsResponse(topics=await self._write(decide))

    async def _alter_partition(self, body: Any) -> Any:
        request = from_body(AlterPartition, body)
        return await self._write(lambda image, _: decide_alter_partition(image, request))

    async def _elect_leaders(self, body: Any) -> Any:
        request = from_body(ElectLeadersRequest, body)
        results = await self._write(lambda image, _: elect_leaders(image, request))
        elected = sum(1 for result in results if result.error_code == ErrorCode.NONE)
        return ElectLeadersResponse(error_code=ErrorCode.NONE, elected=elected, results=results)

    async def _incremental_alter_configs(self, body: Any) -> Any:
        request = from_body(IncrementalAlterConfigsRequest, body)
        outcomes = await self._write(
            lambda image, _: incremental_alter_configs(
                image,
                [replacing(image, r) for r in request.resources]
                if request.replace
                else request.resources,
                validate_only=request.validate_only,
            )
        )
        return AlterConfigsResponse(resources=outcomes)

    async def _allocate_producer_ids(self, body: Any) -> Any:
        request = from_body(AllocateProducerIdsRequest, body)
        return await self._write(
            lambda image, _: allocate_producer_ids(image, request.broker_id, request.broker_epoch)
        )

    async def _describe_quorum(self, body: Any) -> Any:
        self._require_active()
        now_ms, wall_ms = self.now_ms(), environment.current().wall_ms()
        voters = self.node.config.voters

        def state(progress: ReplicaProgress) -> ReplicaState:
            def wall(at_ms: int) -> int:
                return -1 if at_ms < 0 else wall_ms - (now_ms - at_ms)

            return ReplicaState(
                replica_id=progress.replica_id,
                log_end_offset=progress.end_offset,
                last_fetch_timestamp=wall(progress.last_fetch_ms),
                last_caught_up_timestamp=wall(progress.last_caught_up_ms),
            )

        replicas = self.node.replica_progress()
        leader = self.node.leader()
        return DescribeQuorumResponse(
            error_code=ErrorCode.NONE,
            leader_id=leader.leader_id,
            leader_epoch=leader.epoch,
            high_watermark=self.node.high_watermark,
            voters=tuple(state(r) for r in replicas if r.replica_id in voters),
            observers=tuple(state(r) for r in replicas if r.replica_id not in voters),
        )

    async def _describe_cluster(self, body: Any) -> Any:
        return describe_cluster(self.loader.image, self.cluster_id, self.node.leader().leader_id)

    async def _describe_image(self, body: Any) -> Any:
        return describe_image(self.node_id, self.loader)
