"""The queue workload driven through librdkafka (confluent-kafka), over Kafka's protocol.

The same operations, history and checkers as `QueueWorkload`, but each producer process
is a confluent-kafka `Producer` (acks as configured) and the consumer a confluent-kafka
`Consumer` assigned every partition: what Kafka's own clients see of a pykraft cluster
under faults. librdkafka runs its own threads; this workload polls them from trio
without blocking the loop. The final read stays the cluster's own (pykraft's client),
the checkers' ground truth.

Plain (the default): idempotence off, one request in flight, each send awaited before
the next. `idempotent=True`: `enable.idempotence` with 5 requests in flight and
librdkafka's retries, sends not awaited one by one (so up to 5 are really in flight
through a leader kill), and a message timeout long enough to ride out a fault: a
retried batch must then never be written twice (the run counts `duplicated` as an
anomaly) and each partition's acknowledgements keep the order of the sends.

    jepsen-like run --client confluent-kafka --nemesis kill,kill-leader
    jepsen-like run --client confluent-kafka --idempotent --nemesis kill,kill-leader
"""

from __future__ import annotations

from typing import Any

import trio

from jepsen_like.history import FAIL, INFO, INVOKE, OK
from jepsen_like.workload import DEFINITE_FAILURES, SEND_TIMEOUT_MS, QueueWorkload

POLL_INTERVAL_S = 0.002


# Long enough that a send outlives a fault (librdkafka retries it meanwhile); an
# idempotent producer whose message times out must bump its epoch, which is its own test.
IDEMPOTENT_MESSAGE_TIMEOUT_MS = 30_000
IDEMPOTENT_IN_FLIGHT = 5


class ConfluentQueueWorkload(QueueWorkload):
    def __init__(self, *args: Any, idempotent: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idempotent = idempotent

    def _producer_settings(self, process: int) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": f"jepsen-{process}",
            "acks": "all" if self.acks == -1 else str(self.acks),
            "linger.ms": 0,
        }
        if self.idempotent:
            return settings | {
                "enable.idempotence": True,
                "max.in.flight.requests.per.connection": IDEMPOTENT_IN_FLIGHT,
                "message.timeout.ms": IDEMPOTENT_MESSAGE_TIMEOUT_MS,
            }
        return settings | {
            "enable.idempotence": False,
            "message.timeout.ms": SEND_TIMEOUT_MS,
            "max.in.flight.requests.per.connection": 1,
        }

    async def _producer(self, process: int, duration_s: float) -> None:
        from confluent_kafka import Producer

        producer = Producer(self._producer_settings(process))
        message_timeout_s = self._producer_settings(process)["message.timeout.ms"] / 1000
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll_reports, producer)
                async with trio.open_nursery() as sends:

                    async def send(partition: int, value: str) -> None:
                        if self.idempotent:  # not awaited: several in flight
                            sends.start_soon(
                                self._send_through,
                                producer,
                                process,
                                partition,
                                value,
                                message_timeout_s,
                            )
                        else:
                            await self._send_through(
                                producer, process, partition, value, message_timeout_s
                            )

                    await self._paced(process, duration_s, send)
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(producer.flush, 10.0)

    async def _poll_reports(self, producer: Any) -> None:
        """Delivery reports run in this task (trio's thread), in librdkafka's order:
        per partition, the order the broker acknowledged them."""
        while True:
            producer.poll(0)
            await trio.sleep(POLL_INTERVAL_S)

    async def _send_through(
        self, producer: Any, process: int, partition: int, value: str, timeout_s: float
    ) -> None:
        invoked = self.history.now()
        self.history.add(process, INVOKE, "send", [partition, value])
        done = trio.Event()

        def report(error: Any, message: Any) -> None:
            if done.is_set():
                return  # already given up on as info
            done.set()
            if error is None:
                self.history.add(
                    process, OK, "send", [partition, message.offset(), value], invoked=invoked
                )
                return
            # librdkafka reports Kafka's error codes as they are; its own (negative)
            # ones, a timed-out message above all, leave the outcome open.
            outcome = FAIL if error.code() in DEFINITE_FAILURES else INFO
            self.history.add(
                process, outcome, "send", [partition, value], invoked=invoked, error=error.name()
            )

        producer.produce(self.topic, value=value.encode(), partition=partition, on_delivery=report)
        with trio.move_on_after(timeout_s + 5):
            await done.wait()
        if not done.is_set():
            done.set()
            self.history.add(
                process, INFO, "send", [partition, value], invoked=invoked, error="no report"
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
