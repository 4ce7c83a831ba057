"""The partitions this broker holds, kept in line with the metadata image.

Applies each published metadata change in log order: creates the log of a partition
assigned here, becomes its leader or a follower at the new leader epoch, takes ISR
changes, and deletes the logs of partitions removed or moved away. As leader it asks
the controller (AlterPartition) to shrink the ISR of followers that lag and to expand
it with followers that caught up. It also runs retention and the log cleaner
(broker/log_cleaner.py) of compacted topics.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs
import trio

from broker.controller_channel import ControllerChannel
from broker.log_cleaner import LOG_CLEANER_BACKOFF_MS, LogCleaner
from broker.partition import Partition
from broker.replica_fetcher import FetcherManager
from broker.replica_state import REPLICA_LAG_TIME_MAX_MS
from client.protocol import environment
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.schema import from_body, to_body
from kraft.controller.configs_schema import cleanup_policies
from kraft.controller.replication import (
    UNCLEAN_ELECTION_CONFIG,
    AlterPartition,
    AlterPartitionOutcome,
)
from kraft.metadata.image import MetadataDelta, MetadataImage, TopicImage
from storage.checkpoint import read_file, write_atomically
from storage.cleaner import CLEANER_CHECKPOINT_FILE
from storage.fs import FileSystem, OsFileSystem
from storage.log import LogConfig, LogError, SegmentedLog
from storage.producer_state import ProducerStateConfig

log = logging.getLogger(__name__)

PARTITION_METADATA = "partition.metadata"
# Kafka's log.retention.check.interval.ms is 5 minutes.
RETENTION_CHECK_INTERVAL_MS = 300_000
# A refused AlterPartition is asked again no sooner than this (Kafka's retry.backoff.ms
# is 100 ms; refusals here are mostly a stale view, which the metadata soon mends).
ISR_CHANGE_BACKOFF_MS = 500
OPEN_RETRY_INTERVAL_S = 1.0
# How often partitions with flush.ms are looked at, at most.
FLUSH_CHECK_INTERVAL_MS_MIN = 10
# Kafka's producer.id.expiration.check.interval.ms (10 minutes).
PRODUCER_EXPIRATION_CHECK_INTERVAL_MS = 600_000


def log_config_for(settings: dict[str, str]) -> LogConfig:
    defaults = LogConfig()
    policies = cleanup_policies(settings.get("cleanup.policy", "delete"))
    # cleanup.policy=compact alone: nothing expires by time or size (compact,delete: both).
    deletes = "delete" in policies
    return LogConfig(
        segment_bytes=int(settings.get("segment.bytes", defaults.segment_bytes)),
        segment_ms=int(settings.get("segment.ms", defaults.segment_ms)),
        retention_ms=int(settings.get("retention.ms", defaults.retention_ms)) if deletes else -1,
        retention_bytes=(
            int(settings.get("retention.bytes", defaults.retention_bytes)) if deletes else -1
        ),
        allow_offset_gaps="compact" in policies,
        max_message_bytes=int(settings.get("max.message.bytes", defaults.max_message_bytes)),
        flush_messages=_optional_int(settings.get("flush.messages")),
        flush_ms=_optional_int(settings.get("flush.ms")),
    )


def _optional_int(value: str | None) -> int | None:
    return None if value is None else int(value)


class ReplicaManager:
    def __init__(
        self,
        *,
        broker_id: int,
        data_dir: str,
        channel: ControllerChannel,
        broker_epoch: Any,  # () -> int: the lifecycle's current broker epoch
        replica_lag_time_max_ms: int = REPLICA_LAG_TIME_MAX_MS,
        retention_check_interval_ms: int = RETENTION_CHECK_INTERVAL_MS,
        log_cleaner_enable: bool = True,
        log_cleaner_backoff_ms: int = LOG_CLEANER_BACKOFF_MS,
        broker_address_overrides: dict[int, tuple[str, int]] | None = None,
        fs: FileSystem | None = None,
        producer_state_config: ProducerStateConfig | None = None,
        producer_expiration_check_interval_ms: int = PRODUCER_EXPIRATION_CHECK_INTERVAL_MS,
    ) -> None:
        self.producer_state_config = producer_state_config or ProducerStateConfig()
        self.producer_expiration_check_interval_ms = producer_expiration_check_interval_ms
        self.broker_id = broker_id
        self.data_dir = data_dir
        self.channel = channel
        self.broker_epoch = broker_epoch
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.retention_check_interval_ms = retention_check_interval_ms
        self.fs = fs if fs is not None else OsFileSystem()
        self.broker_address_overrides = broker_address_overrides or {}
        self.partitions: dict[tuple[str, int], Partition] = {}
        # Told of each partition whose role changed here or that was removed (after the
        # change): the group coordinator's driver learns which it leads (issue 16).
        self.leadership_listeners: list[Callable[[Partition], None]] = []
        self.image = MetadataImage()
        self.caught_up = False  # has the image reached our own registration yet?
        self._unopened: set[str] = set()  # topic ids with a log we failed to open
        self._open_failed = trio.Event()
        self.fetchers = FetcherManager(broker_id=broker_id, replica_manager=self)
        self._isr_wake = trio.Event()
        self._flush_config_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.cleaner = (
            LogCleaner(self, backoff_ms=log_cleaner_backoff_ms) if log_cleaner_enable else None
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.fetchers.nursery = nursery
            nursery.start_soon(self._maintain_isr)
            nursery.start_soon(self._enforce_retention)
            nursery.start_soon(self._flush_on_interval)
            nursery.start_soon(self._retry_unopened)
            if self.cleaner is not None:
                nursery.start_soon(self.cleaner.run)
            nursery.start_soon(self._expire_producers)
            task_status.started()
            await trio.sleep_forever()

    def close(self) -> bool:
        """Close (and so sync) every log; whether all of them closed cleanly."""
        closed = True
        for partition in self.partitions.values():
            try:
                partition.close()
            except (LogError, OSError) as error:
                log.error("%s: closing its log failed: %s", partition, error)
                closed = False
        return closed

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    # ------------------------------------------------------------------ metadata

    def on_metadata(self, delta: MetadataDelta | None, image: MetadataImage) -> None:
        """Loader subscriber: called in log order with each new image.

        Nothing is applied until the image holds this broker's own registration: a
        restarting broker replays an old log first, and acting on it would make it
        the leader of partitions it led long ago, serving a log a crash may have cut
        short to followers that still trust that leader epoch (Kafka's brokers, too,
        publish metadata to their replica manager only after the initial catch-up).
        """
        self.image = image
        if not self.caught_up:
            epoch = self.broker_epoch()
            if epoch < 0 or image.offset < epoch:
                return
            self.caught_up = True
            delta = None  # everything, at once
        now = self.now_ms()
        topic_ids = set(image.topics) if delta is None else set(delta.changed_topics)
        # Partitions whose log could not be opened (a full disk) are tried again.
        topic_ids |= self._unopened
        self._unopened = set()
        for topic_id in sorted(topic_ids):
            topic = image.topics.get(topic_id)
            if topic is not None:
                self._apply_topic(image, topic_id, topic, now)
        if delta is not None and (delta.changed_configs or delta.changed_features):
            # Settings changed without a partition change: every partition they reach.
            for partition in self.partitions.values():
                if delta.changed_features or ("topic", partition.topic) in delta.changed_configs:
                    self._configure(partition, image)
        self._flush_config_changed.set()
        # Topics gone from the image: their partitions go too.
        for key, partition in list(self.partitions.items()):
            if partition.topic_id not in image.topics:
                self._remove(key, "topic deleted")
        self._isr_wake.set()

    def _apply_topic(
        self, image: MetadataImage, topic_id: str, topic: TopicImage, now: int
    ) -> None:
        for index, registration in topic.partitions.items():
            key = (topic.name, index)
            partition = self.partitions.get(key)
            if self.broker_id not in registration.replicas:
                if partition is not None:
                    self._remove(key, "moved away")
                continue
            if partition is None or partition.topic_id != topic_id:
                if partition is not None:
                    self._remove(key, "topic re-created")
                partition = self._open(topic.name, topic_id, index)
                if partition is None:
                    self._unopened.add(topic_id)
                    self._open_failed.set()
                    continue
            self._configure(partition, image)
            change = partition.apply(registration, now)
            if change == "leader":
                self.fetchers.remove(partition)
                log.info("%s: leader at epoch %d", partition, partition.leader_epoch)
            elif change == "follower":
                self.fetchers.add(partition, registration.leader)
            if change in ("leader", "follower"):
                self._tell_leadership(partition)

    def _tell_leadership(self, partition: Partition) -> None:
        for listener in self.leadership_listeners:
            listener(partition)

    @staticmethod
    def _configure(partition: Partition, image: MetadataImage) -> None:
        settings = dict(image.configs.get(("topic", partition.topic), {}))
        config = log_config_for(settings)
        if partition.log.config.allow_offset_gaps:
            config = attrs.evolve(config, allow_offset_gaps=True)  # compacted once: has gaps
        partition.log.config = config
        partition.min_insync_replicas = image.min_insync_replicas(partition.topic)
        partition.elr_enabled = image.elr_enabled
        partition.unclean_election = settings.get(UNCLEAN_ELECTION_CONFIG) == "true"

    async def _retry_unopened(self) -> None:
        """A log that could not be opened (disk full, read-only) is tried again, so
        its partition comes back by itself once the disk has room."""
        while True:
            await self._open_failed.wait()
            await trio.sleep(OPEN_RETRY_INTERVAL_S)
            self._open_failed = trio.Event()
            if self._unopened:
                self.on_metadata(MetadataDelta(self.image), self.image)

    def _open(self, topic: str, topic_id: str, index: int) -> Partition | None:
        directory = os.path.join(self.data_dir, f"{topic}-{index}")
        marker = os.path.join(directory, PARTITION_METADATA)
        existing = read_file(self.fs, marker)
        if existing is not None and existing.decode().strip() != f"topic_id={topic_id}":
            self._remove_directory(directory)  # an older topic of the same name
        try:
            partition_log = SegmentedLog.open(
                directory, self._opening_config(topic, directory), fs=self.fs
            )
            if read_file(self.fs, marker) is None:
                write_atomically(self.fs, marker, f"topic_id={topic_id}\n".encode())
        except (OSError, LogError) as error:
            log.error("%s-%d: cannot open its log: %s", topic, index, error)
            return None
        try:
            partition = Partition(
                topic=topic,
                topic_id=topic_id,
                index=index,
                log=partition_log,
                broker_id=self.broker_id,
                blocking_io=self.fs.blocking_io,
                producer_state_config=self.producer_state_config,
                # Producer timestamps are wall clock, as the batches' max timestamps are.
                now_wall_ms=environment.current().wall_ms(),
            )
        except (OSError, LogError) as error:  # loading its producer state
            log.error("%s-%d: cannot load its producer state: %s", topic, index, error)
            with contextlib.suppress(OSError, LogError):
                partition_log.close()
            return None
        self.partitions[(topic, index)] = partition
        return partition

    def _opening_config(self, topic: str, directory: str) -> LogConfig:
        """The topic's settings; a log that was ever compacted reads with its gaps."""
        config = log_config_for(dict(self.image.configs.get(("topic", topic), {})))
        if not config.allow_offset_gaps and self.fs.exists(
            f"{directory}/{CLEANER_CHECKPOINT_FILE}"
        ):
            config = attrs.evolve(config, allow_offset_gaps=True)
        return config

    def _remove(self, key: tuple[str, int], why: str) -> None:
        partition = self.partitions.pop(key)
        log.info("%s: removing its log (%s)", partition, why)
        self.fetchers.remove(partition)
        with contextlib.suppress(LogError):
            partition.close()
        self._remove_directory(partition.log.directory)
        self._tell_leadership(partition)

    def _remove_directory(self, directory: str) -> None:
        with contextlib.suppress(OSError):
            if self.fs.exists(directory):
                self.fs.rmtree(directory)
                self.fs.sync_dir(os.path.dirname(directory) or ".")

    def partition(self, topic: str, index: int) -> Partition:
        partition = self.partitions.get((topic, index))
        if partition is None:
            raise KafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                if self.image.topic(topic) is None
                or index not in self.image.topic(topic).partitions  # type: ignore[union-attr]
                else ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"{topic}-{index} is not on broker {self.broker_id}",
            )
        return partition

    def topic_settings(self, topic: str) -> dict[str, str]:
        return dict(self.image.configs.get(("topic", topic), {}))

    def min_insync_replicas(self, topic: str) -> int:
        return self.image.min_insync_replicas(topic)

    # ------------------------------------------------------------------ ISR

    async def _maintain_isr(self) -> None:
        """Shrink for lagging followers, expand for caught-up ones, via the controller."""
        interval_s = self.replica_lag_time_max_ms / 2000
        while True:
            with trio.move_on_after(interval_s):
                await self._isr_wake.wait()
            self._isr_wake = trio.Event()
            now = self.now_ms()
            for partition in list(self.partitions.values()):
                if now < partition.isr_change_backoff_until_ms:
                    continue
                new_isr = partition.isr_expansion() or partition.isr_shrink(
                    now, self.replica_lag_time_max_ms
                )
                if new_isr is not None:
                    partition.pending_isr = new_isr
                    assert self._nursery is not None
                    self._nursery.start_soon(self._alter_partition, partition, new_isr)

    def isr_may_change(self) -> None:
        """A follower fetched: it may have caught up enough to join the ISR."""
        self._isr_wake.set()

    async def _alter_partition(self, partition: Partition, new_isr: tuple[int, ...]) -> None:
        own_epoch = self.broker_epoch()
        request = AlterPartition(
            broker_id=self.broker_id,
            broker_epoch=own_epoch,
            topic_id=partition.topic_id,
            partition=partition.index,
            leader_epoch=partition.leader_epoch,
            partition_epoch=partition.partition_epoch,
            new_isr=new_isr,
            new_isr_broker_epochs=partition.broker_epochs_of(new_isr, own_epoch),
        )
        log.info("%s: asking for ISR %s (now %s)", partition, new_isr, partition.isr)
        try:
            answer = await self.channel.request(
                ApiKey.ALTER_PARTITION, to_body(request), timeout_s=10
            )
            outcome = from_body(AlterPartitionOutcome, answer)
        except KafkaError as error:
            outcome = AlterPartitionOutcome(error_code=error.code, message=str(error))
        if outcome.error_code != ErrorCode.NONE:
            log.info("%s: ISR change refused: %s", partition, outcome)
            if partition.pending_isr == new_isr:
                partition.pending_isr = None  # the metadata will tell us what is current
                # Not again before the backoff, however often followers fetch meanwhile.
                partition.isr_change_backoff_until_ms = self.now_ms() + ISR_CHANGE_BACKOFF_MS
                await trio.sleep(ISR_CHANGE_BACKOFF_MS / 1000)
                self._isr_wake.set()

    # ------------------------------------------------------------------ flush.ms

    async def _flush_on_interval(self) -> None:
        """Sync partitions with flush.ms whose oldest unsynced append is that old."""
        while True:
            intervals = [
                p.log.config.flush_ms
                for p in self.partitions.values()
                if p.log.config.flush_ms is not None
            ]
            if not intervals:
                await self._flush_config_changed.wait()
                self._flush_config_changed = trio.Event()
                continue
            await trio.sleep(max(min(intervals), FLUSH_CHECK_INTERVAL_MS_MIN) / 1000)
            now = self.now_ms()
            for partition in list(self.partitions.values()):
                every_ms = partition.log.config.flush_ms
                due = every_ms is not None and now - partition.last_flush_ms >= every_ms
                if due and partition.log.unflushed_records and not partition.offline:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._flush, partition, now)

    async def _flush(self, partition: Partition, now_ms: int) -> None:
        try:
            await partition.wait_durable(partition.log.log_end_offset, now_ms)
        except (KafkaError, LogError) as error:
            log.error("%s: flush failed: %s", partition, error)

    # ------------------------------------------------------------------ producer expiry

    async def _expire_producers(self) -> None:
        while True:
            await trio.sleep(self.producer_expiration_check_interval_ms / 1000)
            self.expire_producers_now()

    def expire_producers_now(self) -> int:
        """Drop producers idle past their expiration (every partition held here)."""
        now_wall_ms = environment.current().wall_ms()
        expired = 0
        for partition in list(self.partitions.values()):
            if not partition.offline:
                expired += len(partition.expire_producers(now_wall_ms))
        return expired

    # ------------------------------------------------------------------ retention

    async def _enforce_retention(self) -> None:
        while True:
            await trio.sleep(self.retention_check_interval_ms / 1000)
            self.enforce_retention_now()

    def enforce_retention_now(self) -> int:
        deleted = 0
        now_wall_ms = environment.current().wall_ms()  # segment timestamps are wall clock
        for partition in list(self.partitions.values()):
            if partition.offline:
                continue
            try:
                deleted += partition.enforce_retention(now_wall_ms)
            except LogError as error:
                log.error("%s: retention failed: %s", partition, error)
        return deleted
