"""The transactional workload, modelled on Jepsen's Kafka test, through librdkafka
(`--client confluent-kafka`; `pykraft_txn_workload.py` is pykraft's own client's).

`producers` transactional producers (confluent-kafka, `transactional.id`
`jepsen-txn-<n>`, each in a thread of its own: librdkafka blocks) run transaction
after transaction. Each writes one unique value to each of 2-3 random partitions,
commits consumer offsets through send_offsets_to_transaction (consume-transform-produce:
producer n's group `jepsen-txn-group-<n>` advances its position in partition
n mod partitions to the transaction's number + 1, one step per transaction, so the
group's final committed offset names the last transaction that took effect), then
commits, or aborts with probability `abort_probability`. One history operation per
transaction, process = the producer:

    invoke  {"writes": [[partition, value], ...], "intent": "commit" | "abort",
             "group": group, "offsets": {partition: offset}}
    ok      {"writes": [[partition, offset, value], ...]}   committed
    fail    {"writes": ...}   certainly not committed: aborted (by intent or after an error)
    info    {"writes": ...}   unknown: a commit that timed out, a fatal error

Each completion carries `commit_invoked` (history time of the first commit_transaction
call, None if commit was never asked for). After an uncertain outcome the producer is
dropped and a new one with the same transactional id calls init_transactions, which
fences the old epoch and settles its transaction (completed if it was prepared,
aborted otherwise) before the next one begins.

`readers` read_committed consumers (assigned every partition, from the start) poll
throughout (`poll` operations, `isolation: read_committed`). At the end, once every
producer has settled its last transaction, a final read_uncommitted read to the
high-water marks (`final-read-uncommitted`) and a final read_committed read
(`final-read-committed`) that waits until its end (the last stable offset) reaches
those marks: the coordinators' markers are all written; then each group's committed
offsets (`final-committed-offsets`, asked read_committed: stable only). See
txn_checkers.py.

    jepsen-like run --workload txn --nemesis kill,pause,kill-leader,kill-coordinator
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import trio

from jepsen_like.history import FAIL, INFO, INVOKE, OK, History

log = logging.getLogger(__name__)

TRANSACTIONAL_ID_PREFIX = "jepsen-txn-"
# The coordinator aborts a transaction its producer left open after this long; the
# final read waits for that at worst.
TRANSACTION_TIMEOUT_MS = 10_000
# A blocking librdkafka call (flush, commit, abort, init) gives up after this long.
CALL_TIMEOUT_S = 10.0
# How long a retriable commit/abort/init is retried before the outcome counts as unknown.
SETTLE_DEADLINE_S = 20.0
FINAL_READ_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.05
# Past the workload's end, a producer thread still busy is stuck: every call it makes
# is bounded by CALL_TIMEOUT_S, and a transaction makes a handful.
ABANDON_AFTER_S = 4 * SETTLE_DEADLINE_S + 4 * CALL_TIMEOUT_S
ABORT_PROBABILITY = 0.2


def transactional_id(process: int) -> str:
    return f"{TRANSACTIONAL_ID_PREFIX}{process}"


def group_of(process: int) -> str:
    return f"jepsen-txn-group-{process}"


class TransactionalWorkload:
    """What both clients' transactional workloads share: the producers and readers
    that `run` starts (`_producer`, `_reader`: each client's), seeded per producer."""

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
        readers: int = 1,
        abort_probability: float = ABORT_PROBABILITY,
    ) -> None:
        self.bootstrap = bootstrap
        self.history = history
        self.topic = topic
        self.partitions = partitions
        self.producers = producers
        self.rate = rate  # transactions per second, all producers
        self.rng = rng
        self.readers = readers
        self.abort_probability = abort_probability
        self._rngs = [random.Random(rng.random()) for _ in range(producers)]

    def transactional_ids(self) -> list[str]:
        return [transactional_id(p) for p in range(self.producers)]

    # ------------------------------------------------------------------ the run

    async def run(self, duration_s: float) -> None:
        async with trio.open_nursery() as nursery:
            for process in range(self.producers):
                nursery.start_soon(self._producer, process, duration_s)
            for reader in range(self.readers):
                nursery.start_soon(self._reader, self.producers + reader, duration_s)

    async def _producer(self, process: int, duration_s: float) -> None:
        raise NotImplementedError

    async def _reader(self, process: int, duration_s: float) -> None:
        raise NotImplementedError


class TxnWorkload(TransactionalWorkload):
    """Through librdkafka (confluent-kafka), each producer in a thread of its own."""

    async def _producer(self, process: int, duration_s: float) -> None:
        """The producer's thread, abandoned if a librdkafka call outlives every timeout
        it was given (its open transaction is then an unknown outcome, and its
        coordinator aborts it after the transaction timeout); the thread's stack goes
        to the log and the history says so."""
        threads: list[int] = []

        def body() -> None:
            threads.append(threading.get_ident())
            self._producer_thread(process, duration_s)

        with trio.move_on_after(duration_s + ABANDON_AFTER_S) as scope:
            await trio.to_thread.run_sync(body, abandon_on_cancel=True)
        if scope.cancelled_caught:
            frame = sys._current_frames().get(threads[0]) if threads else None
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            log.warning("producer %d stuck, abandoned; its thread:\n%s", process, stack)
            self.history.add(process, INFO, "producer-stuck", {"stack": stack.splitlines()[-6:]})

    def _record(self, process: Any, type_: str, value: Any, **extra: Any) -> dict[str, Any]:
        """From a producer's thread: the op is added in trio's thread (the history's
        clock and list are the loop's)."""
        return trio.from_thread.run_sync(
            lambda: self.history.add(process, type_, "txn", value, **extra)
        )

    def _now(self) -> int:
        return trio.from_thread.run_sync(self.history.now)

    def _new_producer(self, process: int) -> Any | None:
        """A producer with this process's transactional id, initialised (None if that
        did not work within the deadline)."""
        from confluent_kafka import KafkaException, Producer

        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while time.monotonic() < deadline:
            producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "client.id": f"jepsen-txn-{process}",
                    "transactional.id": transactional_id(process),
                    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                    "linger.ms": 5,
                    "message.timeout.ms": int(CALL_TIMEOUT_S * 1000),
                    # librdkafka (#5511, #5456, up to 2.16 at least) keeps a fenced,
                    # decommissioned broker as the group coordinator and blocks in
                    # send_offsets_to_transaction; closing idle connections makes it
                    # look the coordinator up again.
                    "connections.max.idle.ms": 3000,
                }
            )
            try:
                producer.init_transactions(CALL_TIMEOUT_S)
                return producer
            except KafkaException as error:
                log.info("producer %d: init_transactions: %s", process, error)
                time.sleep(0.5)
        return None

    def _group_consumer(self, process: int) -> Any:
        """Assigned nothing, never subscribed: it stands for the group whose offsets the
        transactions commit (its metadata goes with them), and reads them at the end."""
        from confluent_kafka import Consumer

        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": group_of(process),
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )

    def _producer_thread(self, process: int, duration_s: float) -> None:
        group = self._group_consumer(process)
        try:
            self._transactions(process, duration_s, group)
        finally:
            group.close()

    def _transactions(self, process: int, duration_s: float, group: Any) -> None:
        rng = self._rngs[process]
        interval = self.producers / self.rate
        deadline = time.monotonic() + duration_s
        next_at = time.monotonic() + rng.random() * interval
        producer = self._new_producer(process)
        seq = 0
        while next_at < deadline:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + interval, time.monotonic())
            if producer is None:
                producer = self._new_producer(process)
                continue
            count = min(self.partitions, rng.choice((2, 3)))
            targets = rng.sample(range(self.partitions), count)
            writes = [[p, f"{process}-{seq}-{i}"] for i, p in enumerate(targets)]
            seq += 1
            intent = "abort" if rng.random() < self.abort_probability else "commit"
            settled = self._transaction(producer, process, writes, intent, group, seq)
            if not settled:
                # Unknown outcome: a new instance fences this one and settles its
                # transaction before the next begins.
                producer.purge()
                producer = self._new_producer(process)
        if producer is not None:
            producer.flush(CALL_TIMEOUT_S)

    def _transaction(
        self,
        producer: Any,
        process: int,
        writes: list[list[Any]],
        intent: str,
        group: Any,
        number: int,
    ) -> bool:
        """One transaction, recorded; False if its outcome is unknown (info)."""
        from confluent_kafka import KafkaException, TopicPartition

        position = (process % self.partitions, number)  # number: 1, 2, ...
        asked = {
            "writes": writes,
            "intent": intent,
            "group": group_of(process),
            "offsets": {str(position[0]): position[1]},
        }
        invoked = self._record(process, INVOKE, asked)["time"]
        offsets: dict[str, int] = {}
        errors: list[str] = []
        commit_invoked: int | None = None

        def report(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(error.name())
            else:
                offsets[(message.value() or b"").decode()] = message.offset()

        def done(type_: str, **extra: Any) -> bool:
            placed = [[p, offsets.get(v, -1), v] for p, v in writes]
            self._record(
                process,
                type_,
                {"writes": placed},
                invoked=invoked,
                intent=intent,
                commit_invoked=commit_invoked,
                **extra,
            )
            return type_ != INFO

        try:
            producer.begin_transaction()
            for partition, value in writes:
                producer.produce(
                    self.topic, value=value.encode(), partition=partition, on_delivery=report
                )
            if producer.flush(CALL_TIMEOUT_S) > 0:
                errors.append("flush timed out")
            if not errors:
                producer.send_offsets_to_transaction(
                    [TopicPartition(self.topic, *position)],
                    group.consumer_group_metadata(),
                    CALL_TIMEOUT_S,
                )
        except KafkaException as error:
            errors.append(str(error.args[0]))
        except BufferError as error:
            errors.append(f"BufferError: {error}")
        if errors or intent == "abort":
            if not self._settle(producer.abort_transaction):
                return done(INFO, error=";".join(errors) or "abort failed")
            return done(FAIL, error=";".join(errors) or "aborted")
        commit_invoked = self._now()
        outcome = self._settle(producer.commit_transaction, abortable=True)
        if outcome is True:
            return done(OK)
        # "abort": the commit certainly failed; the transaction must be aborted.
        if outcome == "abort" and self._settle(producer.abort_transaction):
            return done(FAIL, error="commit refused, aborted")
        return done(INFO, error="commit outcome unknown")

    def _settle(self, call: Callable[[float], None], *, abortable: bool = False) -> Any:
        """Call commit/abort until it succeeds (True), the transaction must be aborted
        ("abort", `abortable` only), or it fails otherwise or the deadline passes (False)."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while True:
            try:
                call(CALL_TIMEOUT_S)
                return True
            except KafkaException as exception:
                error = exception.args[0]
                if abortable and error.txn_requires_abort():
                    return "abort"
                if not error.retriable() or time.monotonic() > deadline:
                    log.info("%s: %s", getattr(call, "__name__", call), error)
                    return False
                time.sleep(0.2)

    # ------------------------------------------------------------------ readers

    def _consumer(self, isolation: str) -> Any:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "jepsen-txn-unused",  # assigned, never subscribed: no group
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": isolation,
            }
        )
        consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)]
        )
        return consumer

    async def _reader(self, process: int, duration_s: float) -> None:
        consumer = self._consumer("read_committed")
        deadline = trio.current_time() + duration_s
        try:
            while trio.current_time() < deadline:
                found, _ = _sort(consumer.consume(num_messages=500, timeout=0))
                if found:
                    self.history.add(process, OK, "poll", found, isolation="read_committed")
                await trio.sleep(POLL_INTERVAL_S)
        finally:
            await trio.to_thread.run_sync(consumer.close)

    async def final_read(self, timeout_s: float = FINAL_READ_TIMEOUT_S) -> None:
        """read_uncommitted to the high-water marks, then read_committed until its end
        (the LSO) reaches them."""
        began = trio.current_time()
        found, ends, complete = await trio.to_thread.run_sync(
            self._read_to_end, "read_uncommitted", None, timeout_s
        )
        self.history.add("final", OK, "final-read-uncommitted", found, ends=ends, complete=complete)
        rc_began = trio.current_time()
        left = max(10.0, timeout_s - (rc_began - began))
        found, rc_ends, complete = await trio.to_thread.run_sync(
            self._read_to_end, "read_committed", ends, left
        )
        self.history.add(
            "final",
            OK,
            "final-read-committed",
            found,
            ends=rc_ends,
            complete=complete,
            waited_s=round(trio.current_time() - rc_began, 3),
        )
        offsets = await trio.to_thread.run_sync(self._committed_offsets)
        self.history.add("final", OK, "final-committed-offsets", offsets)

    def _committed_offsets(self) -> dict[str, dict[str, int | None]]:
        """Each producer's group: its committed offset of its partition (None: none)."""
        from confluent_kafka import KafkaException, TopicPartition

        found: dict[str, dict[str, int | None]] = {}
        for process in range(self.producers):
            partition = process % self.partitions
            consumer = self._group_consumer(process)
            try:
                deadline = time.monotonic() + FINAL_READ_TIMEOUT_S / 3
                while True:
                    try:
                        (tp,) = consumer.committed(
                            [TopicPartition(self.topic, partition)], timeout=CALL_TIMEOUT_S
                        )
                        break
                    except KafkaException as error:
                        if time.monotonic() > deadline:
                            raise
                        log.info("committed offsets of %s: %s", group_of(process), error)
                        time.sleep(0.5)
                offset = tp.offset if tp.offset >= 0 else None
                found[group_of(process)] = {str(partition): offset}
            finally:
                consumer.close()
        return found

    def _read_to_end(
        self, isolation: str, at_least: dict[str, int] | None, timeout_s: float
    ) -> tuple[dict[str, list[list[Any]]], dict[str, int], bool]:
        consumer = self._consumer(isolation)
        found: dict[str, list[list[Any]]] = {str(p): [] for p in range(self.partitions)}
        ends: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s

        def finished() -> bool:
            return len(ends) == self.partitions and all(
                at_least is None or ends[p] >= at_least.get(p, 0) for p in ends
            )

        try:
            while time.monotonic() < deadline and not finished():
                more, eofs = _sort(consumer.consume(num_messages=1000, timeout=0.5))
                for partition, pairs in more.items():
                    found[partition].extend(pairs)
                ends.update(eofs)
            return found, ends, finished()
        finally:
            consumer.close()


def _sort(messages: list[Any]) -> tuple[dict[str, list[list[Any]]], dict[str, int]]:
    """Records by partition, and the end offsets of partitions the consumer reached."""
    from confluent_kafka import KafkaError

    found: dict[str, list[list[Any]]] = {}
    eofs: dict[str, int] = {}
    for message in messages:
        error = message.error()
        if error is None:
            found.setdefault(str(message.partition()), []).append(
                [message.offset(), (message.value() or b"").decode()]
            )
        elif error.code() == KafkaError._PARTITION_EOF:
            eofs[str(message.partition())] = message.offset()
    return found, eofs
