"""An idempotent producer's identity and sequences (KIP-98, KIP-360, KIP-679).

The producer id and epoch come from InitProducerId. Each partition numbers its
records from 0: a batch takes its base sequence when it is first drained and keeps
it across retries, so a leader that already wrote it answers the retry with the
original offset instead of writing it twice.

A batch refused with OUT_OF_ORDER_SEQUENCE_NUMBER is only retried while an earlier
batch of its partition is still unresolved (the broker has not seen that one yet);
when it is the next batch the broker should accept, the partition lost acknowledged
records (or never will see the gap filled), so the batch fails and the epoch is
bumped. A batch that fails for good after it took a sequence leaves a gap too, and
UNKNOWN_PRODUCER_ID means the leader forgot the producer: both bump the epoch. The
bump waits until nothing is in flight, then every partition starts again at 0 under
the new epoch, and batches waiting for a retry take new sequences (none of them was
written: the broker writes a partition's batches only in sequence order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

if TYPE_CHECKING:
    from client.accumulator import ProducerBatch, TopicPartition
    from client.cluster import ClusterClient

SEQUENCE_SPAN = 1 << 31  # sequences are int32 and wrap to 0
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
# InitProducerId answers after which it is asked again.
INIT_RETRY_ON = frozenset(
    {
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.CONCURRENT_TRANSACTIONS,
    }
)


class ProducerSequences:
    def __init__(self) -> None:
        self.producer_id = NO_PRODUCER_ID
        self.epoch = NO_PRODUCER_EPOCH
        self.next_sequence: dict[TopicPartition, int] = {}
        # The sequence after the last acknowledged batch: the next one the leader takes.
        self.acked_end: dict[TopicPartition, int] = {}
        self.bump_due = False
        self.bumps = 0

    def assign(self, batch: ProducerBatch) -> None:
        """Give a batch drained for the first time its partition's next sequence."""
        tp = batch.tp
        sequence = self.next_sequence.get(tp, 0)
        batch.base_sequence = sequence
        self.next_sequence[tp] = (sequence + batch.records) % SEQUENCE_SPAN

    def acknowledged(self, batch: ProducerBatch) -> None:
        if batch.base_sequence >= 0:
            self.acked_end[batch.tp] = (batch.base_sequence + batch.records) % SEQUENCE_SPAN

    def is_next(self, batch: ProducerBatch) -> bool:
        """Whether every batch of its partition before this one is acknowledged."""
        return batch.base_sequence == self.acked_end.get(batch.tp, 0)

    def failed(self, batch: ProducerBatch) -> None:
        """A batch fails for good: if it took a sequence, the partition has a gap."""
        if batch.base_sequence >= 0:
            self.bump_due = True

    def new_identity(self, producer_id: int, epoch: int, waiting: Iterable[ProducerBatch]) -> None:
        """Sequences start again at 0; waiting retries are numbered anew when drained."""
        if self.producer_id != NO_PRODUCER_ID:
            self.bumps += 1
        self.producer_id, self.epoch = producer_id, epoch
        self.next_sequence.clear()
        self.acked_end.clear()
        self.bump_due = False
        for batch in waiting:
            batch.base_sequence = -1
            batch.data = None


async def init_producer_id(
    cluster: ClusterClient,
    *,
    transactional_id: str | None = None,
    transaction_timeout_ms: int = 60_000,
    producer_id: int = NO_PRODUCER_ID,
    epoch: int = NO_PRODUCER_EPOCH,
    broker_id: int | None = None,
) -> tuple[int, int]:
    """One InitProducerId: (producer id, epoch); naming the current pair asks a bump."""
    request = kafka.InitProducerIdRequest(
        transactional_id=transactional_id,
        transaction_timeout_ms=transaction_timeout_ms,
        producer_id=producer_id,
        producer_epoch=epoch,
    )
    if broker_id is None:
        response = await cluster.request_any(request)
    else:
        response = await cluster.request_broker(broker_id, request)
    if response.error_code != ErrorCode.NONE:
        raise KafkaError(response.error_code, "InitProducerId refused")
    return response.producer_id, response.producer_epoch
