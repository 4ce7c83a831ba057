"""The queue workload and the cluster observer.

Producers send unique values ("<process>-<seq>"), one record per operation, with
acks=all, to the partition leader they know; every attempt is one operation whose
outcome is ok (acknowledged, with its offset), fail (certainly not written) or info
(maybe written: a timeout, a lost connection, a leadership change after the append).
A consumer polls every partition. At the end, a final read takes every partition
from its start to its end.

The observer asks every controller whether it is active (DescribeQuorum) and a
broker for partition leaders, and records each change: the controller timeline.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from client.cluster import ClusterClient
from client.consumer import Consumer
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from jepsen_like.cluster_control import ClusterControl
from jepsen_like.history import FAIL, INFO, INVOKE, OK, History
from storage.records import RecordInput, build_batch

log = logging.getLogger(__name__)

# Answers that mean the record was certainly not appended.
DEFINITE_FAILURES = frozenset(
    {
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.INVALID_REQUIRED_ACKS,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
    }
)
SEND_TIMEOUT_MS = 5_000


class QueueWorkload:
    def __init__(
        self,
        bootstrap: str,
        history: History,
        *,
        topic: str,
        partitions: int,
        producers: int,
        rate: float,
        rng: random.Random,
        acks: int = -1,
    ) -> None:
        self.bootstrap = bootstrap
        self.history = history
        self.topic = topic
        self.partitions = partitions
        self.producers = producers
        self.rate = rate
        self.rng = rng
        self.acks = acks

    async def run(self, duration_s: float) -> None:
        async with trio.open_nursery() as nursery:
            for process in range(self.producers):
                nursery.start_soon(self._producer, process, duration_s)
            nursery.start_soon(self._consumer, self.producers, duration_s)

    async def _producer(self, process: int, duration_s: float) -> None:
        cluster = ClusterClient(
            self.bootstrap,
            client_id=f"jepsen-{process}",
            request_timeout_ms=SEND_TIMEOUT_MS + 1_000,
        )
        try:
            await self._paced(
                process,
                duration_s,
                lambda partition, value: self._send_one(cluster, process, partition, value),
            )
        finally:
            await cluster.aclose()

    async def _paced(
        self, process: int, duration_s: float, send: Callable[[int, str], Awaitable[None]]
    ) -> None:
        """One producer's share of the rate: unique values to random partitions."""
        interval = self.producers / self.rate
        deadline = trio.current_time() + duration_s
        next_at = trio.current_time() + self.rng.random() * interval
        seq = 0
        while next_at < deadline:
            await trio.sleep_until(next_at)
            next_at += interval
            value = f"{process}-{seq}"
            seq += 1
            await send(self.rng.randrange(self.partitions), value)

    async def _send_one(
        self, cluster: ClusterClient, process: int, partition: int, value: str
    ) -> None:
        invoked = self.history.now()
        self.history.add(process, INVOKE, "send", [partition, value])
        try:
            if cluster.leader(self.topic, partition) is None:
                await cluster.refresh([self.topic])
            leader = cluster.leader(self.topic, partition)
            if leader is None:
                self.history.add(
                    process, FAIL, "send", [partition, value], invoked=invoked, error="no leader"
                )
                return
            Request = kafka.ProduceRequest
            request = Request(
                transactional_id=None,
                acks=self.acks,
                timeout_ms=SEND_TIMEOUT_MS,
                topic_data=(
                    Request.TopicProduceData(
                        name=self.topic,
                        partition_data=(
                            Request.PartitionProduceData(
                                index=partition,
                                records=build_batch(
                                    [RecordInput(timestamp=0, value=value.encode())]
                                ),
                            ),
                        ),
                    ),
                ),
            )
            answer = await cluster.request_broker(leader.leader, request)
            if answer is None:  # acks=0: no answer, so no telling whether it was written
                code, base_offset = ErrorCode.REQUEST_TIMED_OUT, -1
            else:
                result = answer.responses[0].partition_responses[0]
                code, base_offset = result.error_code, result.base_offset
        except KafkaError as error:
            code, base_offset = error.code, -1
        if code == ErrorCode.NONE:
            self.history.add(process, OK, "send", [partition, base_offset, value], invoked=invoked)
            return
        outcome = FAIL if code in DEFINITE_FAILURES else INFO
        self.history.add(
            process,
            outcome,
            "send",
            [partition, value],
            invoked=invoked,
            error=ErrorCode(code).name if code in ErrorCode._value2member_map_ else code,
        )
        with contextlib.suppress(KafkaError):
            await cluster.refresh([self.topic])

    async def _consumer(self, process: int, duration_s: float) -> None:
        deadline = trio.current_time() + duration_s
        async with Consumer(
            self.bootstrap, auto_offset_reset="earliest", request_timeout_ms=3_000
        ) as consumer:
            consumer.assign([(self.topic, p) for p in range(self.partitions)])
            while trio.current_time() < deadline:
                try:
                    records = await consumer.poll(0.5)
                except KafkaError:
                    await trio.sleep(0.2)
                    continue
                if records:
                    by_partition: dict[str, list[list[Any]]] = {}
                    for r in records:
                        by_partition.setdefault(str(r.partition), []).append(
                            [r.offset, (r.value or b"").decode()]
                        )
                    self.history.add(process, OK, "poll", by_partition)

    async def final_read(self, timeout_s: float = 60.0) -> None:
        """Every partition from its log start to its high-water mark."""
        async with Consumer(
            self.bootstrap, auto_offset_reset="earliest", request_timeout_ms=3_000
        ) as consumer:
            tps = [(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            with trio.fail_after(timeout_s):
                while True:
                    try:
                        ends = await consumer.list_offsets({tp: -1 for tp in tps})
                        break
                    except KafkaError:
                        await trio.sleep(0.2)
                found: dict[str, list[list[Any]]] = {str(p): [] for p in range(self.partitions)}
                positions = {tp: 0 for tp in tps}
                while any(positions[tp] < ends[tp] for tp in tps):
                    try:
                        records = await consumer.poll(1.0)
                    except KafkaError:
                        continue
                    for r in records:
                        found[str(r.partition)].append([r.offset, (r.value or b"").decode()])
                        positions[(r.topic, r.partition)] = r.offset + 1
        self.history.add("final", OK, "final-read", found)


class ClusterObserver:
    """Records controller and partition-leader changes as the nodes report them."""

    def __init__(self, cluster: ClusterControl, history: History, *, topic: str) -> None:
        self.cluster = cluster
        self.history = history
        self.topic = topic
        self._controllers: set[tuple[int, int]] = set()
        # Per observing broker: brokers' views lag each other, so epochs are only
        # comparable within one broker's view.
        self._leaders: dict[tuple[int, int], tuple[int, int]] = {}

    async def run(self, interval_s: float = 0.2) -> None:
        while True:
            await self.observe()
            await trio.sleep(interval_s)

    async def observe(self) -> None:
        for node in self.cluster.controller_ids:
            if not self.cluster.is_running(node):
                continue
            try:
                answer = await self.cluster.request(
                    node, ApiKey.DESCRIBE_QUORUM, {}, listener="CONTROLLER", timeout_s=0.5
                )
            except KafkaError:
                continue
            if answer.get("error_code", 0) == 0 and answer.get("leader_id") == node:
                seen = (node, answer["leader_epoch"])
                if seen not in self._controllers:
                    self._controllers.add(seen)
                    self.history.add("cluster", OK, "controller", {"node": node, "epoch": seen[1]})
        for node in self.cluster.broker_ids:
            if not self.cluster.is_running(node):
                continue
            try:
                answer = await self.cluster.request(
                    node, ApiKey.METADATA, {"topics": [self.topic]}, timeout_s=0.5
                )
            except KafkaError:
                continue
            for part in answer["topics"][0]["partitions"]:
                now = (part["leader"], part["leader_epoch"])
                if self._leaders.get((node, part["partition"])) != now:
                    self._leaders[(node, part["partition"])] = now
                    self.history.add(
                        "cluster",
                        OK,
                        "partition-leader",
                        {
                            "observer": node,
                            "topic": self.topic,
                            "partition": part["partition"],
                            "leader": now[0],
                            "leader_epoch": now[1],
                            "isr": part["isr"],
                        },
                    )
            break
