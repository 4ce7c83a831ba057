"""Consume, transform, produce: exactly once, through one transaction per poll (KIP-447).

    async with Consumer(bootstrap, group_id="g", isolation_level="read_committed",
                        enable_auto_commit=False) as consumer, \\
               Producer(bootstrap, transactional_id="pipe-1") as producer:
        consumer.subscribe(["in"])
        await producer.init_transactions()
        await run_pipe(consumer, producer, "out", lambda r: [(r.key, r.value.upper())])

What one poll returned becomes one transaction: the transformed records, and the
consumer's positions past them committed for its group inside the same transaction,
so the output and the input's progress are visible together or not at all. If the
transaction cannot commit (a rebalance took a partition, so the group refuses the
offsets of a stale generation; a batch failed), it is aborted and the consumer goes
back to the first offset of the records it had polled on the partitions it still
owns: they are read and transformed again. A fenced producer (another one took the
transactional id) stops the pipe with ProducerFenced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from client.protocol.errors import KafkaError
from client.transaction_manager import TransactionFatal, consumer_group_metadata

log = logging.getLogger(__name__)

Transform = Callable[[Any], Iterable[tuple[bytes | None, bytes | None]]]


async def run_pipe(
    consumer: Any,
    producer: Any,
    output_topic: str,
    transform: Transform,
    *,
    stop: trio.Event | None = None,
    max_transactions: int | None = None,
    poll_timeout_s: float = 0.5,
) -> tuple[int, int]:
    """Until `stop` is set or `max_transactions` committed: (committed, aborted)."""
    committed = aborted = 0
    while not (stop is not None and stop.is_set()):
        if max_transactions is not None and committed >= max_transactions:
            break
        records = await consumer.poll(poll_timeout_s)
        if not records:
            continue
        first: dict[tuple[str, int], int] = {}
        for record in records:
            first.setdefault((record.topic, record.partition), record.offset)
        producer.begin_transaction()
        try:
            for record in records:
                for key, value in transform(record):
                    await producer.send(output_topic, value, key=key)
            positions = consumer.consumed_positions(list(first))
            await producer.send_offsets_to_transaction(positions, consumer_group_metadata(consumer))
            await producer.commit_transaction()
            committed += 1
        except TransactionFatal:
            raise
        except KafkaError as error:
            log.info("transaction aborted, the records are read again: %s", error)
            await producer.abort_transaction()
            aborted += 1
            owned = set(consumer.assignment())
            for tp, offset in first.items():
                if tp in owned:
                    consumer.seek(tp, offset)
    return committed, aborted
