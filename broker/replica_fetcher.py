"""Followers pull from leaders: one fetcher task per leader, many partitions per request.

Each request names, per partition, the follower's log end (its fetch offset), the
epoch of its last batch and the leader epoch it follows. The leader answers with
records, its high-water mark and log start, or with a diverging epoch, upon which the
follower truncates to the point both epoch caches agree on (KIP-320), never just to
its high-water mark. A leader that is unreachable or answers with an epoch error is
retried after a backoff; the metadata will move the partition to another fetcher.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from broker.listeners import REPLICATION_LISTENER
from client.protocol import environment
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.messages import (
    FetchRequest,
    FetchResponse,
    PartitionFetch,
    PartitionFetchResult,
    TopicFetch,
)
from client.protocol.rpc import RpcClient
from client.protocol.schema import from_body, to_body
from storage.divergence import EpochEnd
from storage.log import LogError

if TYPE_CHECKING:
    from broker.partition import Partition
    from broker.replica_manager import ReplicaManager

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 500  # Kafka's replica.fetch.wait.max.ms
FETCH_BACKOFF_S = 0.1  # Kafka's replica.fetch.backoff.ms is 1 s; loopback clusters heal faster
PARTITION_MAX_BYTES = 1024 * 1024  # replica.fetch.max.bytes
REQUEST_TIMEOUT_S = 30.0


class FetcherManager:
    def __init__(self, *, broker_id: int, replica_manager: ReplicaManager) -> None:
        self.broker_id = broker_id
        self.replica_manager = replica_manager
        self.nursery: trio.Nursery | None = None
        self.fetchers: dict[int, ReplicaFetcher] = {}
        self._assigned: dict[Partition, int] = {}

    def add(self, partition: Partition, leader_id: int) -> None:
        self.remove(partition)
        if leader_id < 0:
            return  # leaderless: nothing to fetch until someone leads
        fetcher = self.fetchers.get(leader_id)
        if fetcher is None:
            fetcher = self.fetchers[leader_id] = ReplicaFetcher(self, leader_id)
            if self.nursery is not None:
                self.nursery.start_soon(fetcher.run)
        fetcher.partitions.add(partition)
        fetcher.wake()
        self._assigned[partition] = leader_id

    def remove(self, partition: Partition) -> None:
        leader_id = self._assigned.pop(partition, None)
        if leader_id is not None and leader_id in self.fetchers:
            self.fetchers[leader_id].partitions.discard(partition)


class ReplicaFetcher:
    def __init__(self, manager: FetcherManager, leader_id: int) -> None:
        self.manager = manager
        self.leader_id = leader_id
        self.partitions: set[Partition] = set()
        self._client: RpcClient | None = None
        self._wake = trio.Event()
        self.fetches = 0

    def wake(self) -> None:
        self._wake.set()

    def _address(self) -> tuple[str, int] | None:
        override = self.manager.replica_manager.broker_address_overrides.get(self.leader_id)
        if override is not None:
            return override
        registration = self.manager.replica_manager.image.brokers.get(self.leader_id)
        listener = registration.listener(REPLICATION_LISTENER) if registration else None
        return None if listener is None else (listener.host, listener.port)

    async def run(self) -> None:
        try:
            while True:
                if not self.partitions:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                if not await self._fetch_once():
                    await trio.sleep(FETCH_BACKOFF_S)
        finally:
            if self._client is not None:
                with trio.CancelScope(shield=True):
                    await self._client.aclose()

    async def _fetch_once(self) -> bool:
        address = self._address()
        if address is None:
            return False
        if self._client is None or (self._client.host, self._client.port) != address:
            if self._client is not None:
                await self._client.aclose()
            self._client = RpcClient(
                *address,
                client_id=f"replica-{self.manager.broker_id}",
                rng=environment.current().new_rng(),
            )
        partitions = {(p.topic, p.index): p for p in self.partitions}
        by_topic: dict[str, list[PartitionFetch]] = {}
        for partition in partitions.values():
            by_topic.setdefault(partition.topic, []).append(
                PartitionFetch(
                    partition=partition.index,
                    fetch_offset=partition.log.log_end_offset,
                    partition_max_bytes=PARTITION_MAX_BYTES,
                    current_leader_epoch=partition.leader_epoch,
                    last_fetched_epoch=partition.last_fetched_epoch(),
                )
            )
        request = FetchRequest(
            topics=tuple(TopicFetch(name=n, partitions=tuple(p)) for n, p in by_topic.items()),
            replica_id=self.manager.broker_id,
            broker_epoch=self.manager.replica_manager.broker_epoch(),
            max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        try:
            body = await self._client.request(
                ApiKey.FETCH, API_VERSION, to_body(request), timeout_s=REQUEST_TIMEOUT_S
            )
            if isinstance(body, dict) and "error_code" in body and "topics" not in body:
                raise KafkaError(body["error_code"], body.get("error_message", ""))
            response = from_body(FetchResponse, body)
        except KafkaError as error:
            log.debug("fetch from %d failed: %s", self.leader_id, error)
            return False
        self.fetches += 1
        healthy = True
        for topic in response.topics:
            for result in topic.partitions:
                found = partitions.get((topic.name, result.partition))
                # Skip partitions moved to another fetcher (or gone) meanwhile.
                if found is None or found not in self.partitions:
                    continue
                healthy &= self._apply(found, result)
        # With flush.messages, what we report as held in the next fetch (our log end)
        # must be synced first: the leader counts it towards the high-water mark.
        due = [p for p in partitions.values() if p.flush_due() and not p.offline]
        if due:
            now_ms = int(trio.current_time() * 1000)
            try:
                async with trio.open_nursery() as nursery:
                    for partition in due:
                        nursery.start_soon(
                            partition.wait_durable, partition.log.log_end_offset, now_ms
                        )
            except* (KafkaError, LogError) as errors:
                log.error("follower flush failed: %s", errors.exceptions)
                healthy = False
        return healthy

    def _apply(self, partition: Partition, result: PartitionFetchResult) -> bool:
        try:
            if result.error_code == ErrorCode.NONE:
                if result.diverging_epoch is not None:
                    diverging = EpochEnd(
                        result.diverging_epoch.epoch, result.diverging_epoch.end_offset
                    )
                    partition.truncate_to_divergence(diverging)
                    return True
                partition.append_as_follower(result.records, result.high_watermark)
                partition.follow_log_start(result.log_start_offset)
                return True
            if result.error_code == ErrorCode.OFFSET_OUT_OF_RANGE:
                # We are behind the leader's log start (retention): start over there.
                if partition.log.log_end_offset < result.log_start_offset:
                    partition.restart_at(result.log_start_offset)
                    return True
                # Ahead of the leader's end without a divergence answer: cut back.
                if result.log_end_offset >= 0:
                    partition.truncate_as_follower(result.log_end_offset)
                    return True
            log.debug("%s: fetch answered %s", partition, ErrorCode(result.error_code).name)
            return False
        except LogError as error:
            log.error("%s: follower append failed: %s", partition, error)
            return False
