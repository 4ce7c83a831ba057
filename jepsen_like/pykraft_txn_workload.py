"""The transactional workload through pykraft's own client (`--client pykraft`; the simulator's).

The same transactions, history and checker as `txn_workload.py` (librdkafka), made with
`client.producer.Producer(transactional_id=...)` and read with read_committed
`client.consumer.Consumer`s, all trio tasks: so it runs in real runs and, unchanged,
inside the simulator. Each producer runs transaction after transaction: one unique
value to each of 2-3 random partitions, its group's offset through
send_offsets_to_transaction (consume-transform-produce: producer n's group advances
its position in partition n mod partitions to the transaction's number), then commit,
or abort with probability `abort_probability`.

An outcome the producer cannot know (a commit that kept failing, a fatal error, a
transaction that outlived its time bound) is recorded as info; that producer is
closed and a new one with the same transactional id takes over: its InitProducerId
fences the old epoch and settles what the old one left open.

pykraft's client ends transactions with EndTxn v5 (KIP-890 part 2): every commit and
abort bumps the producer epoch, so a request of one transaction that arrives late
(a stalled connection: the simulator's `stall-coordinator` fault) is fenced in the
next. `jepsen-like sim --planted no-epoch-bump` turns the bump off.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from client.consumer import Consumer
from client.producer import Producer
from client.protocol.errors import KafkaError
from client.transaction_manager import TransactionAbortable, TransactionFatal, TxnState
from jepsen_like.history import FAIL, INFO, INVOKE, OK
from jepsen_like.txn_workload import (
    FINAL_READ_TIMEOUT_S,
    POLL_INTERVAL_S,
    TRANSACTION_TIMEOUT_MS,
    TransactionalWorkload,
    group_of,
    transactional_id,
)

log = logging.getLogger(__name__)

# Shorter than the client's defaults, as the cluster's are (run.CLUSTER_SETTINGS): a
# stalled request gives up, and is asked again on a new connection, within a second.
REQUEST_TIMEOUT_MS = 1_000
DELIVERY_TIMEOUT_MS = 8_000
# One transaction, begin to end: past this its outcome is unknown.
TRANSACTION_BOUND_S = 30.0
INIT_BOUND_S = 20.0


class PykraftTxnWorkload(TransactionalWorkload):
    """The transactions, producers and readers, through pykraft's client."""

    def _new_producer(self, process: int) -> Producer:
        return Producer(
            self.bootstrap,
            client_id=f"jepsen-txn-{process}",
            transactional_id=transactional_id(process),
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
            linger_ms=5,
        )

    async def _producer(self, process: int, duration_s: float) -> None:
        rng = self._rngs[process]
        interval = self.producers / self.rate
        deadline = trio.current_time() + duration_s
        next_at = trio.current_time() + rng.random() * interval
        number = 0
        while next_at < deadline and trio.current_time() < deadline:
            # Its close flushes what is in flight and aborts a transaction it left open
            # (each bounded by the request timeouts); the unsent records are dropped.
            async with self._new_producer(process) as producer:
                with trio.move_on_after(INIT_BOUND_S) as init:
                    await self._init(producer, process)
                while next_at < deadline and not init.cancelled_caught:
                    await trio.sleep_until(next_at)
                    next_at = max(next_at + interval, trio.current_time())
                    count = min(self.partitions, rng.choice((2, 3)))
                    targets = rng.sample(range(self.partitions), count)
                    writes = [[p, f"{process}-{number}-{i}"] for i, p in enumerate(targets)]
                    number += 1
                    intent = "abort" if rng.random() < self.abort_probability else "commit"
                    if not await self._transaction(producer, process, writes, intent, number):
                        break  # unknown outcome: a new producer fences this one
                producer.accumulator.take_queued()

    async def _init(self, producer: Producer, process: int) -> None:
        while True:
            try:
                await producer.init_transactions()
                return
            except KafkaError as error:
                log.info("producer %d: init_transactions: %s", process, error)
                if isinstance(error, TransactionFatal):
                    raise
                await trio.sleep(0.5)

    async def _transaction(
        self, producer: Producer, process: int, writes: list[list[Any]], intent: str, number: int
    ) -> bool:
        """One transaction, recorded; False if the producer must be replaced (the
        outcome is unknown, or the producer failed for good)."""
        partition = process % self.partitions
        group = group_of(process)
        asked = {
            "writes": writes,
            "intent": intent,
            "group": group,
            "offsets": {str(partition): number},
        }
        invoked = self.history.add(process, INVOKE, "txn", asked)["time"]
        offsets: dict[str, int] = {}
        state: dict[str, Any] = {"commit_invoked": None}
        type_, error = INFO, f"not settled within {TRANSACTION_BOUND_S:g} s"
        with trio.move_on_after(TRANSACTION_BOUND_S):
            try:
                type_, error = await self._steps(
                    producer, writes, intent, group, partition, number, offsets, state
                )
            except KafkaError as failure:
                # Not settled: if commit was never asked for, it cannot have committed.
                type_ = INFO if state["commit_invoked"] is not None else FAIL
                error = f"{type(failure).__name__}: {failure}"
        placed = [[p, offsets.get(v, -1), v] for p, v in writes]
        self.history.add(
            process,
            type_,
            "txn",
            {"writes": placed},
            invoked=invoked,
            intent=intent,
            commit_invoked=state["commit_invoked"],
            **({} if error is None else {"error": error}),
        )
        transactions = producer.transactions
        assert transactions is not None
        return error is None or (
            type_ == FAIL and transactions.fatal is None and transactions.state is TxnState.READY
        )

    async def _steps(
        self,
        producer: Producer,
        writes: list[list[Any]],
        intent: str,
        group: str,
        partition: int,
        number: int,
        offsets: dict[str, int],
        state: dict[str, Any],
    ) -> tuple[str, str | None]:
        errors: list[str] = []
        producer.begin_transaction()
        try:
            deliveries = [
                (value, await producer.send(self.topic, value.encode(), partition=p))
                for p, value in writes
            ]
            await producer.flush()
            for value, delivery in deliveries:
                try:
                    offsets[value] = (await delivery).offset
                except KafkaError as error:
                    errors.append(f"{value}: {error}")
            if not errors:
                await producer.send_offsets_to_transaction({(self.topic, partition): number}, group)
        except TransactionFatal:
            raise
        except KafkaError as error:  # a partition could not be added: abortable
            errors.append(f"{type(error).__name__}: {error}")
        if errors or intent == "abort":
            await producer.abort_transaction()
            return FAIL, ";".join(errors) or "aborted"
        state["commit_invoked"] = self.history.now()
        try:
            await producer.commit_transaction()
        except TransactionAbortable as error:
            await producer.abort_transaction()  # certainly not committed
            return FAIL, f"commit refused, aborted: {error}"
        return OK, None

    # ------------------------------------------------------------------ readers

    def _consumer(self, isolation: str) -> Consumer:
        consumer = Consumer(
            self.bootstrap,
            isolation_level=isolation,
            request_timeout_ms=REQUEST_TIMEOUT_MS * 5,
            fetch_max_wait_ms=100,
        )
        consumer.assign([(self.topic, p) for p in range(self.partitions)])
        consumer.seek_to_beginning()
        return consumer

    async def _reader(self, process: int, duration_s: float) -> None:
        deadline = trio.current_time() + duration_s
        async with self._consumer("read_committed") as consumer:
            while trio.current_time() < deadline:
                records = []  # a poll cut short by the deadline returned nothing
                try:
                    with trio.move_on_at(deadline):
                        records = await consumer.poll(0.2)
                except KafkaError as error:
                    log.info("reader %d: %s", process, error)
                    await trio.sleep(POLL_INTERVAL_S)
                    continue
                found: dict[str, list[list[Any]]] = {}
                for record in records:
                    found.setdefault(str(record.partition), []).append(
                        [record.offset, (record.value or b"").decode()]
                    )
                if found:
                    self.history.add(process, OK, "poll", found, isolation="read_committed")
                await trio.sleep(POLL_INTERVAL_S)

    async def final_read(self, timeout_s: float = FINAL_READ_TIMEOUT_S) -> None:
        """read_uncommitted to the high-water marks, then read_committed until its
        positions (bounded by the LSO) reach them."""
        began = trio.current_time()
        found, ends, complete = await self._read_to_end("read_uncommitted", None, timeout_s)
        self.history.add("final", OK, "final-read-uncommitted", found, ends=ends, complete=complete)
        rc_began = trio.current_time()
        left = max(10.0, timeout_s - (rc_began - began))
        found, rc_ends, complete = await self._read_to_end("read_committed", ends, left)
        self.history.add(
            "final",
            OK,
            "final-read-committed",
            found,
            ends=rc_ends,
            complete=complete,
            waited_s=round(trio.current_time() - rc_began, 3),
        )
        self.history.add("final", OK, "final-committed-offsets", await self._committed_offsets())

    async def _read_to_end(
        self, isolation: str, at_least: dict[str, int] | None, timeout_s: float
    ) -> tuple[dict[str, list[list[Any]]], dict[str, int], bool]:
        found: dict[str, list[list[Any]]] = {str(p): [] for p in range(self.partitions)}
        ends: dict[str, int] = {}
        tps = [(self.topic, p) for p in range(self.partitions)]
        with trio.move_on_after(timeout_s):
            async with self._consumer(isolation) as consumer:
                while True:
                    try:
                        targets = await consumer.list_offsets(dict.fromkeys(tps, -1))
                        positions = {tp: await consumer.position(tp) for tp in tps}
                    except KafkaError as error:
                        log.info("final %s read: %s", isolation, error)
                        await trio.sleep(0.2)
                        continue
                    for tp, position in positions.items():
                        if position >= targets[tp]:
                            ends[str(tp[1])] = position
                    if len(ends) == self.partitions and all(
                        at_least is None or ends[p] >= at_least.get(p, 0) for p in ends
                    ):
                        return found, ends, True
                    try:
                        records = await consumer.poll(0.5)
                    except KafkaError as error:
                        log.info("final %s read: %s", isolation, error)
                        continue
                    for record in records:
                        found[str(record.partition)].append(
                            [record.offset, (record.value or b"").decode()]
                        )
        return found, ends, False

    async def _committed_offsets(self) -> dict[str, dict[str, int | None]]:
        """Each producer's group: its committed offset of its partition (None: none)."""
        found: dict[str, dict[str, int | None]] = {}
        for process in range(self.producers):
            committed: dict[tuple[str, int], int | None] = {}
            partition = process % self.partitions
            tp = (self.topic, partition)
            async with Consumer(
                self.bootstrap, group_id=group_of(process), enable_auto_commit=False
            ) as consumer:
                with trio.move_on_after(FINAL_READ_TIMEOUT_S / 3):
                    while True:
                        try:
                            committed = await consumer.committed([tp])
                            break
                        except KafkaError as error:
                            log.info("committed offsets of %s: %s", group_of(process), error)
                            await trio.sleep(0.5)
                found[group_of(process)] = {str(partition): committed.get(tp)}
        return found
