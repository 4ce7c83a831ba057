"""The producer's record accumulator: records become batches, per partition, in order.

Pure (no I/O, time passed in): `append` adds a record to its partition's open batch
(a new one when it would pass `batch_size`; `append_to_open` is the common case
alone, which needs no clock, since only a new batch records its creation); `ready` says which partitions have a
batch to send (full, lingered `linger_ms`, or a flush asked for); `drain` hands the
oldest batch of a partition to the sender, and `requeue` puts a failed one back at
the front, so a retry never overtakes a later batch of the same partition.
"""

from __future__ import annotations

import collections
from collections.abc import Generator, Iterable
from typing import Any

import attrs
import trio

from client.idempotence import ProducerSequences
from client.protocol.errors import KafkaError
from storage.records import BatchBuilder, Compression

TopicPartition = tuple[str, int]


@attrs.frozen
class RecordMetadata:
    topic: str
    partition: int
    offset: int
    timestamp: int


class Delivery:
    """The outcome of one send: `await delivery` gives RecordMetadata or raises.

    Light on purpose (one per record): the batch carries the event and the outcome.
    """

    __slots__ = ("batch", "index", "timestamp")

    def __init__(self, batch: ProducerBatch, index: int, timestamp: int) -> None:
        self.batch = batch
        self.index = index  # the record's position in its batch
        self.timestamp = timestamp

    @property
    def tp(self) -> TopicPartition:
        return self.batch.tp

    def done(self) -> bool:
        return self.batch.done.is_set()

    def metadata(self) -> RecordMetadata:
        batch = self.batch
        if batch.error is not None:
            raise batch.error
        tp = batch.tp
        offset = batch.base_offset + self.index if batch.base_offset >= 0 else -1
        # A topic with message.timestamp.type=LogAppendTime: the broker's time is the record's.
        stamp = batch.log_append_time_ms if batch.log_append_time_ms >= 0 else self.timestamp
        return RecordMetadata(tp[0], tp[1], offset, stamp)

    async def wait(self) -> RecordMetadata:
        await self.batch.done.wait()
        return self.metadata()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        return self.wait().__await__()


class ProducerBatch:
    __slots__ = (
        "attempts",
        "base_offset",
        "base_sequence",
        "builder",
        "created_s",
        "data",
        "done",
        "drain_serial",
        "error",
        "log_append_time_ms",
        "records",
        "retry_at_s",
        "size_bytes",
        "tp",
    )

    def __init__(self, tp: TopicPartition, compression: Compression, now_s: float) -> None:
        self.tp = tp
        self.builder = BatchBuilder(compression)
        self.records = 0
        self.size_bytes = 0  # the builder's, uncompressed (append returns it)
        self.created_s = now_s
        self.attempts = 0
        self.retry_at_s = 0.0
        self.data: bytes | None = None  # built once, on first drain; retries resend it
        self.base_sequence = -1  # an idempotent producer's, from the first drain on
        self.drain_serial = -1  # when it was first drained: retries go back in this order
        self.done = trio.Event()
        self.base_offset = -1
        self.log_append_time_ms = -1
        self.error: KafkaError | None = None

    @property
    def record_count(self) -> int:
        return self.records

    def build(self, producer_id: int = -1, epoch: int = -1, transactional: bool = False) -> bytes:
        if self.data is None:
            if producer_id < 0:
                self.data = self.builder.build()
            else:
                self.data = self.builder.build(
                    producer_id=producer_id,
                    producer_epoch=epoch,
                    base_sequence=self.base_sequence,
                    is_transactional=transactional,
                )
        return self.data

    def succeed(self, base_offset: int, log_append_time_ms: int = -1) -> None:
        self.base_offset = base_offset
        self.log_append_time_ms = log_append_time_ms
        self.done.set()

    def fail(self, error: KafkaError) -> None:
        self.error = error
        self.done.set()


class RecordAccumulator:
    def __init__(
        self, *, batch_size: int, linger_ms: int, compression: Compression = Compression.NONE
    ) -> None:
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.compression = compression
        self.batches: dict[TopicPartition, collections.deque[ProducerBatch]] = {}
        self.flushing = False
        self.records = 0  # appended and not yet completed (for flush and backpressure)
        self.sequences: ProducerSequences | None = None  # set for an idempotent producer
        self.transactional = False  # batches are marked as a transaction's
        self._drains = 0

    def append(
        self,
        tp: TopicPartition,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        now_s: float,
    ) -> Delivery:
        delivery = self.append_to_open(tp, timestamp, key, value, headers)
        if delivery is not None:
            return delivery
        batch = ProducerBatch(tp, self.compression, now_s)
        self.batches.setdefault(tp, collections.deque()).append(batch)
        batch.size_bytes = batch.builder.append(timestamp, key, value, headers)
        batch.records = 1
        self.records += 1
        return Delivery(batch, 0, timestamp)

    def append_to_open(
        self,
        tp: TopicPartition,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
    ) -> Delivery | None:
        """`append` into the partition's open batch if it has room, else None (a new
        batch is due, and with it a creation time: the caller reads its clock only then)."""
        queue = self.batches.get(tp)
        if not queue:
            return None
        batch = queue[-1]
        if batch.data is not None:  # built: a retry waiting at the head
            return None
        estimate = batch.size_bytes + 16
        if key is not None:
            estimate += len(key)
        if value is not None:
            estimate += len(value)
        if estimate > self.batch_size:
            return None
        index = batch.records
        batch.size_bytes = batch.builder.append(timestamp, key, value, headers)
        batch.records = index + 1
        self.records += 1
        return Delivery(batch, index, timestamp)

    def open_batch_is_full(self, tp: TopicPartition) -> bool:
        queue = self.batches.get(tp)
        return bool(queue) and queue[-1].size_bytes >= self.batch_size  # type: ignore[index]

    def ready(self, now_s: float, muted: set[TopicPartition]) -> tuple[list[TopicPartition], float]:
        """Partitions with a batch to send now, and when the next one will be (or inf)."""
        ready = []
        next_s = float("inf")
        for tp, queue in self.batches.items():
            if not queue or tp in muted:
                continue
            head = queue[0]
            if head.retry_at_s > now_s:
                next_s = min(next_s, head.retry_at_s)
                continue
            due = head.created_s + self.linger_s
            if (
                head.data is not None  # a retry
                or len(queue) > 1
                or head.size_bytes >= self.batch_size
                or self.flushing
                or due <= now_s
            ):
                ready.append(tp)
            else:
                next_s = min(next_s, due)
        return ready, next_s

    def drain(self, tp: TopicPartition) -> ProducerBatch:
        batch = self.batches[tp].popleft()
        if batch.data is None:
            batch.drain_serial = self._drains
            self._drains += 1
            sequences = self.sequences
            if sequences is None:
                batch.build()
            else:
                sequences.assign(batch)
                batch.build(sequences.producer_id, sequences.epoch, self.transactional)
        batch.attempts += 1
        return batch

    def requeue(self, batch: ProducerBatch, retry_at_s: float) -> None:
        """Back before every batch drained after it: with several requests in flight,
        their failures come back in any order, and the retries must not."""
        batch.retry_at_s = retry_at_s
        queue = self.batches.setdefault(batch.tp, collections.deque())
        position = 0
        for queued in queue:
            if queued.data is None or queued.drain_serial > batch.drain_serial:
                break
            position += 1
        queue.insert(position, batch)

    def take_queued(self) -> list[ProducerBatch]:
        """Every batch not in flight, out of the accumulator (an aborted transaction's)."""
        queued = [b for queue in self.batches.values() for b in queue]
        self.batches.clear()
        return queued

    def waiting_retries(self) -> list[ProducerBatch]:
        return [b for queue in self.batches.values() for b in queue if b.data is not None]

    def completed(self, batch: ProducerBatch) -> None:
        self.records -= batch.record_count

    def expire(self, now_s: float, timeout_s: float) -> list[ProducerBatch]:
        """Batches waiting longer than the delivery timeout (not in flight)."""
        expired = []
        for queue in self.batches.values():
            while queue and queue[0].created_s + timeout_s <= now_s:
                expired.append(queue.popleft())
        return expired
