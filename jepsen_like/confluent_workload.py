"""The queue workload driven through librdkafka (confluent-kafka), over Kafka's protocol.

The same operations, history and checkers as `QueueWorkload`, but each producer process
is a confluent-kafka `Producer` (acks as configured, idempotence off: pykraft has no
InitProducerId yet) and the consumer a confluent-kafka `Consumer` assigned every
partition: what Kafka's own clients see of a pykraft cluster under faults. librdkafka
runs its own threads; this workload polls them from trio without blocking the loop.
The final read stays the cluster's own (pykraft's client), the checkers' ground truth.

    jepsen-like run --client confluent-kafka --nemesis kill,kill-leader
"""

from __future__ import annotations

from typing import Any

import trio

from jepsen_like.history import FAIL, INFO, INVOKE, OK
from jepsen_like.workload import DEFINITE_FAILURES, SEND_TIMEOUT_MS, QueueWorkload

POLL_INTERVAL_S = 0.002


class ConfluentQueueWorkload(QueueWorkload):
    async def _producer(self, process: int, duration_s: float) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "client.id": f"jepsen-{process}",
                "acks": "all" if self.acks == -1 else str(self.acks),
                "enable.idempotence": False,
                "linger.ms": 0,
                "message.timeout.ms": SEND_TIMEOUT_MS,
                "max.in.flight.requests.per.connection": 1,
            }
        )
        try:
            await self._paced(
                process,
                duration_s,
                lambda partition, value: self._send_through(producer, process, partition, value),
            )
        finally:
            await trio.to_thread.run_sync(producer.flush, 10.0)

    async def _send_through(self, producer: Any, process: int, partition: int, value: str) -> None:
        invoked = self.history.now()
        self.history.add(process, INVOKE, "send", [partition, value])
        reports: list[tuple[Any, Any]] = []
        producer.produce(
            self.topic,
            value=value.encode(),
            partition=partition,
            on_delivery=lambda error, message: reports.append((error, message)),
        )
        with trio.move_on_after(SEND_TIMEOUT_MS / 1000 + 5):
            while not reports:
                producer.poll(0)
                await trio.sleep(POLL_INTERVAL_S)
        if not reports:
            self.history.add(
                process, INFO, "send", [partition, value], invoked=invoked, error="no report"
            )
            return
        error, message = reports[0]
        if error is None:
            self.history.add(
                process, OK, "send", [partition, message.offset(), value], invoked=invoked
            )
            return
        # librdkafka reports Kafka's error codes as they are; its own (negative) ones,
        # a timed-out message above all, leave the outcome open.
        outcome = FAIL if error.code() in DEFINITE_FAILURES else INFO
        self.history.add(
            process, outcome, "send", [partition, value], invoked=invoked, error=error.name()
        )

    async def _consumer(self, process: int, duration_s: float) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "jepsen-unused",  # assigned, never subscribed: no group
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)]
        )
        deadline = trio.current_time() + duration_s
        try:
            while trio.current_time() < deadline:
                messages = consumer.consume(num_messages=500, timeout=0)
                by_partition: dict[str, list[list[Any]]] = {}
                for message in messages:
                    if message.error() is not None:
                        continue
                    by_partition.setdefault(str(message.partition()), []).append(
                        [message.offset(), (message.value() or b"").decode()]
                    )
                if by_partition:
                    self.history.add(process, OK, "poll", by_partition)
                await trio.sleep(0.05)
        finally:
            await trio.to_thread.run_sync(consumer.close)
