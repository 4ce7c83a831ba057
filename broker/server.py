"""One pykraft node: a metadata quorum member or observer, plus its roles.

- every node: a `RaftNode` on the metadata log (a voter if it is a controller, an
  observer otherwise) and a `MetadataLoader` keeping its image;
- controller role: a `QuorumController`, whose APIs share the CONTROLLER listener
  with the quorum's own RPCs;
- broker role: the PLAINTEXT listener and the broker's lifecycle (registration,
  heartbeats, controlled shutdown).

A `Server` runs inside a trio nursery, so tests and the simulator can run a whole
cluster in one process; `broker.cli` runs one per OS process.
"""

from __future__ import annotations

import logging
import random

import trio

from broker import clean_shutdown
from broker.broker_apis import BrokerApis, ReplicationApis
from broker.config import BROKER_LISTENER, CONTROLLER_LISTENER, REPLICATION_LISTENER, NodeConfig
from broker.controller_channel import ControllerChannel
from broker.data_apis import DataApis
from broker.group_driver import GroupDriver
from broker.group_txn_offsets import CompletingMarkerWriter
from broker.groups import GroupConfig
from broker.kafka_apis import KafkaApis
from broker.kafka_connection import KafkaConnections
from broker.kafka_producer_apis import KafkaProducerApis
from broker.kafka_txn_apis import KafkaTxnApis, TransactionVerifier
from broker.lifecycle import BrokerLifecycle
from broker.producer_ids import ProducerIdManager
from broker.replica_manager import ReplicaManager
from broker.transactions import TxnConfig
from broker.txn_driver import TxnDriver
from client.protocol.rpc import RpcServer
from kraft.controller.quorum_controller import QuorumController
from kraft.metadata.loader import MetadataLoader
from kraft.metadata.records import Listener
from kraft.runtime import RaftNode
from storage.fs import FileSystem, OsFileSystem
from storage.handles import HandleLimitedFileSystem, handle_budget
from storage.producer_state import ProducerStateConfig

log = logging.getLogger(__name__)

CONTROLLED_SHUTDOWN_TIMEOUT_S = 10.0


class Server:
    def __init__(
        self,
        config: NodeConfig,
        *,
        cluster_id: str,
        seed: int | None = None,
        fs: FileSystem | None = None,
    ) -> None:
        self.config = config
        self.fs = fs if fs is not None else OsFileSystem()
        self.cluster_id = cluster_id
        self.rng = random.Random(seed)
        self.node: RaftNode | None = None
        self.loader: MetadataLoader | None = None
        self.controller: QuorumController | None = None
        self.lifecycle: BrokerLifecycle | None = None
        self.channel: ControllerChannel | None = None
        self.replicas: ReplicaManager | None = None
        self.groups: GroupDriver | None = None
        self.transactions: TxnDriver | None = None
        self._nursery: trio.Nursery | None = None
        self._stopping_cleanly = False
        self.stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        host, port = config.listeners.get(CONTROLLER_LISTENER, ("127.0.0.1", 0))
        node = self.node = RaftNode(
            config=config.raft_config(self.cluster_id),
            directory=config.data_dir,
            voter_addresses=config.controller_quorum_voters,
            rng=random.Random(self.rng.random()),
            host=host,
            port=port,
            listen=config.is_controller,
            fs=self.fs,
        )
        loader = self.loader = MetadataLoader(
            node, snapshot_min_bytes=config.metadata_snapshot_min_bytes
        )
        if config.is_controller:
            self.controller = QuorumController(
                node,
                loader,
                cluster_id=self.cluster_id,
                rng=random.Random(self.rng.random()),
                session_timeout_ms=config.broker_session_timeout_ms,
                eligible_leader_replicas_enable=config.eligible_leader_replicas_enable,
            )
            node.other_apis = self.controller.handle
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(node.run)
                nursery.start_soon(loader.run)
                if self.controller is not None:
                    nursery.start_soon(self.controller.run)
                if config.is_broker:
                    await self._start_broker(nursery, node, loader)
                log.info("node %d: started with roles %s", config.node_id, ",".join(config.roles))
                task_status.started()
        finally:
            if self.replicas is not None:
                closed = self.replicas.close()
                epoch = self.lifecycle.broker_epoch if self.lifecycle is not None else -1
                if self._stopping_cleanly and closed and epoch >= 0:
                    clean_shutdown.leave(self.fs, config.data_dir, epoch)
            self.stopped.set()

    async def _start_broker(
        self, nursery: trio.Nursery, node: RaftNode, loader: MetadataLoader
    ) -> None:
        config = self.config
        previous_broker_epoch = clean_shutdown.take(self.fs, config.data_dir)
        channel = self.channel = ControllerChannel(
            config.controller_quorum_voters,
            node,
            client_id=f"broker-{config.node_id}",
            rng=random.Random(self.rng.random()),
        )
        replicas = self.replicas = ReplicaManager(
            broker_id=config.node_id,
            data_dir=config.data_dir,
            channel=channel,
            broker_epoch=lambda: self.lifecycle.broker_epoch if self.lifecycle else -1,
            replica_lag_time_max_ms=config.replica_lag_time_max_ms,
            retention_check_interval_ms=config.log_retention_check_interval_ms,
            log_cleaner_enable=config.log_cleaner_enable,
            log_cleaner_backoff_ms=config.log_cleaner_backoff_ms,
            broker_address_overrides=config.broker_address_overrides,
            # Data logs may have many segments: their files are opened on use, within
            # a share of the process's descriptors (connections need the rest).
            fs=HandleLimitedFileSystem(self.fs, handle_budget()),
            producer_state_config=ProducerStateConfig(
                producer_id_expiration_ms=config.producer_id_expiration_ms,
                transactional_id_expiration_ms=config.transactional_id_expiration_ms,
            ),
        )
        await nursery.start(replicas.run)
        loader.subscribe(replicas.on_metadata)

        def is_registered(broker_id: int, broker_epoch: int) -> bool:
            registration = loader.image.brokers.get(broker_id)
            return registration is not None and registration.broker_epoch == broker_epoch

        data = DataApis(replicas, is_registered=is_registered)
        apis = BrokerApis(
            node_id=config.node_id,
            cluster_id=self.cluster_id,
            node=node,
            loader=loader,
            channel=channel,
            forward_timeout_ms=config.request_timeout_ms * 5,
            data=data,
        )
        groups = self.groups = GroupDriver(
            replicas,
            data,
            forward=lambda key, body: channel.request(
                key, body, timeout_s=config.request_timeout_ms * 5 / 1000
            ),
            num_partitions=config.offsets_topic_num_partitions,
            config=GroupConfig(offsets_retention_ms=config.offsets_retention_minutes * 60_000),
            offsets_retention_check_interval_ms=config.offsets_retention_check_interval_ms,
            offsets_topic_segment_bytes=config.offsets_topic_segment_bytes,
            rng=random.Random(self.rng.random()),
        )
        await nursery.start(groups.run)
        producer_ids = ProducerIdManager(
            broker_id=config.node_id,
            broker_epoch=lambda: self.lifecycle.broker_epoch if self.lifecycle else -1,
            forward=lambda key, body: channel.request(
                key, body, timeout_s=config.request_timeout_ms * 5 / 1000
            ),
        )
        await nursery.start(producer_ids.run)
        transactions = self.transactions = TxnDriver(
            replicas,
            producer_ids,
            forward=lambda key, body: channel.request(
                key, body, timeout_s=config.request_timeout_ms * 5 / 1000
            ),
            config=TxnConfig(
                transaction_state_partitions=config.transaction_state_num_partitions,
                offsets_topic_partitions=config.offsets_topic_num_partitions,
                transactional_id_expiration_ms=config.transactional_id_expiration_ms,
            ),
            rng=random.Random(self.rng.random()),
        )
        await nursery.start(transactions.run)
        # KIP-890 part 1: a partition leader asks the coordinator before a transaction's
        # first batch there.
        verifier = TransactionVerifier(transactions)
        transactions.closers.append(verifier.aclose)
        data.verify_transaction = verifier
        txn_apis = KafkaTxnApis(transactions)
        producers = KafkaProducerApis(
            producer_ids, lambda: loader.image, transactional=txn_apis.init_producer_id
        )
        host, port = config.listeners[BROKER_LISTENER]
        # Both codecs on the client listener, chosen per connection (decision 0011).
        kafka = KafkaConnections(
            KafkaApis(apis, data, groups, producers, txn_apis),
            frame_bytes_max=config.socket_request_max_bytes,
            connections_max_idle_ms=config.connections_max_idle_ms,
            name=f"kafka-{config.node_id}",
        )
        server = RpcServer(apis.handle, name=f"broker-{config.node_id}", other_protocol=kafka.serve)
        port = await nursery.start(server.serve, host, port)
        replication_host, replication_port = config.listeners[REPLICATION_LISTENER]
        # Markers that reach __consumer_offsets complete the transactional offsets there.
        markers = CompletingMarkerWriter(replicas, groups)
        replication = RpcServer(
            ReplicationApis(data, markers).handle, name=f"replication-{config.node_id}"
        )
        replication_port = await nursery.start(
            replication.serve, replication_host, replication_port
        )
        self.lifecycle = BrokerLifecycle(
            broker_id=config.node_id,
            # The client listener first: what DescribeCluster and older readers take.
            listeners=(
                Listener(name=BROKER_LISTENER, host=host, port=port),
                Listener(name=REPLICATION_LISTENER, host=replication_host, port=replication_port),
            ),
            rack=config.rack,
            channel=channel,
            loader=loader,
            heartbeat_interval_ms=config.broker_heartbeat_interval_ms,
            request_timeout_ms=config.request_timeout_ms,
            previous_broker_epoch=previous_broker_epoch,
        )
        nursery.start_soon(self.lifecycle.run)

    async def stop(
        self, *, controlled_shutdown_timeout_s: float = CONTROLLED_SHUTDOWN_TIMEOUT_S
    ) -> None:
        """SIGTERM: a broker moves its leaderships away first; a leader resigns."""
        if self.lifecycle is not None:
            done = await self.lifecycle.controlled_shutdown(controlled_shutdown_timeout_s)
            if not done:
                log.warning("node %d: controlled shutdown timed out", self.config.node_id)
        if self.node is not None and self.node.running:
            await self.node.shutdown()
        self._stopping_cleanly = True
        self._cancel()

    def kill(self) -> None:
        """Like SIGKILL: nothing more is written or sent."""
        if self.node is not None and self.node.running:
            self.node.kill()
        self._cancel()

    def _cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
