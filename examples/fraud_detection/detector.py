"""One detector process of the `fraud-detectors` consumer group.

Per-card state lives in memory (`rules.CardStates`). After a rebalance, a partition the
process did not just own, or whose committed offset is not where it stopped, gets its
state rebuilt from the partition's recent history: it seeks back `rebuild_window_s`
(`offsets_for_times`) from the committed offset's side and replays those payments into
state without alerting, then goes on from the committed offset. Every rule looks back
seconds, so a bounded window rebuilds it whole; a changelog topic would be the choice
for state that looks back further (documented in the README's paragraph).

Delivery, per batch of consumed payments:
- at-least-once: produce the batch's alerts, wait for their acks, commit the offsets
  (a crash between the two repeats those alerts);
- exactly-once: begin a transaction, produce the alerts, `send_offsets_to_transaction`
  with the group's metadata, commit; an abortable error aborts and rewinds to the
  committed offsets (KIP-447: the group generation fences a zombie).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter, deque
from typing import Any

from examples.fraud_detection.events import Alert, card_key, decode_payment, encode_alert
from examples.fraud_detection.rules import CardStates

BATCH_MAX = 5_000
POLL_TIMEOUT_S = 0.05
COMMIT_EVERY_S = 0.05
# exactly-once: a batch with no alert adds its offsets to the next transaction rather than
# running one of its own; offsets wait at most this long (or until the stream pauses).
OFFSETS_EVERY_S = 1.0
# The broker answers a long-polling Fetch as soon as data is readable, so this bounds
# only how often an idle consumer asks again (each ask costs every broker CPU).
FETCH_WAIT_MS = 500
# What a bench's detectors replay after an assignment: the longest planted incident
# spans 6 s, and the committed offset may trail the clock by a restart and a second
# of deferred offsets; more only lengthens a restarted detector's stall.
BENCH_REBUILD_WINDOW_S = 12.0
STATS_EVERY_S = 5.0
TRANSACTIONS_UNSERVED = (
    "exactly-once unavailable: this broker does not serve transactions "
    "(init_transactions failed: {reason})"
)


def consumer_config(
    bootstrap: str,
    group: str,
    instance: str | None = None,
    fetch_wait_ms: int = FETCH_WAIT_MS,
) -> dict[str, Any]:
    """`instance`: a static member (KIP-345), so a detector restarted under the same
    instance takes its partitions back without a rebalance."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.wait.max.ms": fetch_wait_ms,
        "enable.partition.eof": False,
    }
    if instance is not None:
        config["group.instance.id"] = f"{group}-{instance}"
    return config


def take_ready(consumer: Any, most: int, timeout_s: float) -> list[Any]:
    """What is ready now, up to `most`, waiting up to `timeout_s` only for the first.

    `consume(n, timeout)` alone waits for n messages or the whole timeout: at low rates
    every batch would wait the full timeout, which is latency added to every alert.
    """
    first = consumer.consume(num_messages=1, timeout=timeout_s)
    if not first:
        return first
    return first + consumer.consume(num_messages=most - 1, timeout=0)


def probe_transactions(bootstrap: str, timeout_s: float = 10.0) -> str | None:
    """None when the cluster serves transactions; otherwise why not, in one line."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"fraud-probe-{time.time_ns()}",
            "log_level": 0,  # its failure is reported in one line, below
        }
    )
    try:
        producer.init_transactions(timeout_s)
    except KafkaException as error:
        return TRANSACTIONS_UNSERVED.format(reason=error.args[0].str())
    return None


class Detector:
    def __init__(
        self,
        *,
        bootstrap: str,
        group: str,
        payments_topic: str,
        alerts_topic: str,
        semantics: str,
        instance: str,
        rebuild_window_s: float,
        fetch_wait_ms: int = FETCH_WAIT_MS,
        consumer: Any = None,
        producer: Any = None,
    ) -> None:
        """`consumer`, `producer`: confluent-kafka's, built here unless given (tests)."""
        from confluent_kafka import Consumer, Producer

        self.payments_topic = payments_topic
        self.alerts_topic = alerts_topic
        self.exactly_once = semantics == "exactly-once"
        self.rebuild_window_ms = int(rebuild_window_s * 1000)
        self.states = CardStates()
        self.replay_until: dict[int, int] = {}  # below it, a payment rebuilds state only
        self.stopped_at: dict[int, int] = {}  # the next offset this process would read
        self.consumer = consumer or Consumer(
            consumer_config(bootstrap, group, instance, fetch_wait_ms)
        )
        producer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            # Alerts are rare and each batch's are flushed at once (commit or flush):
            # lingering only delays them.
            "linger.ms": 0,
        }
        if self.exactly_once:
            producer_config["transactional.id"] = f"fraud-detector-{group}-{instance}"
            # A SIGKILLed detector's open transaction holds back every read_committed
            # reader of `alerts` until it is aborted: at once when the detector comes
            # back under the same instance (init_transactions), else when the
            # coordinator times it out: 10 s, not Kafka's 60 s. Not lower: librdkafka
            # also caps each transactional request's timeout at it, and a coordinator
            # call on this busy 2-core machine has taken over 3 s.
            producer_config["transaction.timeout.ms"] = 10_000
            # A transaction begun right after the previous commit finds the coordinator
            # still writing its markers (CONCURRENT_TRANSACTIONS); librdkafka's default
            # 100 ms backoff before the retry was most of a transaction's time.
            producer_config["retry.backoff.ms"] = 5
            producer_config["retry.backoff.max.ms"] = 50
        else:
            producer_config["enable.idempotence"] = True
        self.producer = producer or Producer(producer_config)
        self.processed = 0
        self.alerted = 0
        self.rebuilt = 0
        self.rebalances = 0
        self.running = True
        # Where the loop's time goes (wall seconds): the delivery steps, and the rules.
        self.spent_s: Counter[str] = Counter()
        # Processed, and their alerts acked (at-least-once) or none (exactly-once), but
        # the offsets not committed yet.
        self.uncommitted: dict[int, int] = {}
        self.last_commit = 0.0
        self.commit_every_s = OFFSETS_EVERY_S if self.exactly_once else COMMIT_EVERY_S
        self.batches = 0
        self.transactions = 0
        # begin to commit returned, of the transactions with alerts (the alerts' path)
        self.alert_txn_ms: deque[float] = deque(maxlen=1_000)

    # ------------------------------------------------------------------ rebalances

    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.rebalances += 1
        kept = {tp.partition for tp in partitions}
        for p in list(self.states.by_partition):
            if p not in kept:
                self.states.drop(p)
        self.stopped_at = {p: o for p, o in self.stopped_at.items() if p in kept}
        consumer.assign(self.plan_starts(consumer, partitions))
        self.say({"assigned": sorted(kept)})

    def plan_starts(self, consumer: Any, partitions: list[Any]) -> list[Any]:
        """Where to read each partition from, and up to where only to rebuild state."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        committed = consumer.committed(partitions, timeout=30)
        since = int(time.time() * 1000) - self.rebuild_window_ms
        lookups = [TopicPartition(tp.topic, tp.partition, since) for tp in committed]
        history = consumer.offsets_for_times(lookups, timeout=30)
        starts = []
        for tp, back in zip(committed, history, strict=True):
            p = tp.partition
            if tp.offset < 0:  # nothing committed: from the beginning, nothing to rebuild
                self.states.drop(p)
                self.replay_until[p] = 0
                starts.append(TopicPartition(tp.topic, p, OFFSET_BEGINNING))
            elif self.stopped_at.get(p) == tp.offset:  # owned it and stopped right there
                self.replay_until[p] = 0
                starts.append(tp)
            else:
                self.states.drop(p)
                self.replay_until[p] = tp.offset
                start = tp.offset if back.offset < 0 else min(back.offset, tp.offset)
                self.rebuilt += tp.offset - start
                starts.append(TopicPartition(tp.topic, p, start))
        return starts

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # What is done is committed before the partitions go; state stays until the
        # next assignment says which partitions are still ours.
        self.commit_uncommitted(asynchronous=False)
        self.say({"revoked": sorted(tp.partition for tp in partitions)})

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        if self.exactly_once:
            from confluent_kafka import KafkaException

            try:
                self.producer.init_transactions(10)
            except KafkaException as error:
                print(TRANSACTIONS_UNSERVED.format(reason=error.args[0].str()), file=sys.stderr)
                raise SystemExit(2) from None
        self.consumer.subscribe(
            [self.payments_topic], on_assign=self.on_assign, on_revoke=self.on_revoke
        )
        next_stats = time.monotonic() + STATS_EVERY_S
        try:
            while self.running:
                messages = take_ready(self.consumer, BATCH_MAX, POLL_TIMEOUT_S)
                if messages:
                    self.handle(messages)
                elif self.uncommitted and self.offsets_due():
                    # The stream paused: offsets wait no longer than `commit_every_s`.
                    # (Not at every empty poll: a transaction of offsets alone holds
                    # up the alerts of the next batch for its whole length.)
                    self.commit_uncommitted(asynchronous=True)
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_EVERY_S
                    self.say(self.figures())
        finally:
            self.commit_uncommitted(asynchronous=False)
            self.consumer.close()

    def offsets_due(self) -> bool:
        if not self.exactly_once:
            return True
        return time.monotonic() - self.last_commit >= self.commit_every_s

    def handle(self, messages: list[Any]) -> None:
        started = time.perf_counter()
        alerts: list[Alert] = []
        positions: dict[int, int] = {}
        states = self.states
        replay_until = self.replay_until
        for message in messages:
            if message.error() is not None:
                continue
            partition = message.partition()
            offset = message.offset()
            payment = decode_payment(message.value())
            found = states.observe(partition, payment)
            positions[partition] = offset + 1
            if found and offset >= replay_until.get(partition, 0):
                now = int(time.time() * 1000)
                for pattern in found:
                    alerts.append(
                        Alert(
                            payment.card,
                            pattern,
                            payment.seq,
                            payment.ts_ms,
                            partition,
                            offset,
                            now,
                        )
                    )
        self.processed += len(messages)
        self.batches += 1
        self.spent_s["rules"] += time.perf_counter() - started
        if not positions:
            return
        if self.exactly_once:
            self.deliver_exactly_once(alerts, positions)
        else:
            self.deliver_at_least_once(alerts, positions)

    def _produce(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            while True:
                try:
                    self.producer.produce(
                        self.alerts_topic, encode_alert(alert), card_key(alert.card)
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.alerted += len(alerts)

    def _offsets(self, positions: dict[int, int]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(self.payments_topic, p, o) for p, o in positions.items()]

    def deliver_at_least_once(self, alerts: list[Alert], positions: dict[int, int]) -> None:

        started = time.perf_counter()
        if alerts:
            self._produce(alerts)
            if self.producer.flush(30) > 0:
                raise RuntimeError("alerts not acknowledged within 30 s")
        acked = time.perf_counter()
        self.spent_s["alerts_acked"] += acked - started
        self.uncommitted.update(positions)
        if acked - self.last_commit >= self.commit_every_s:
            self.commit_uncommitted(asynchronous=True)
            self.last_commit = acked
            self.spent_s["commit"] += time.perf_counter() - acked

    def commit_uncommitted(self, *, asynchronous: bool) -> None:
        """Commit what is processed and its alerts acknowledged.

        Asynchronous in the loop: the alerts are acknowledged already, so any later commit
        is safe, and the next batch need not wait a replicated write (~50 ms here). A
        commit that fails leaves the group's offset behind `stopped_at`, so the next
        assignment rebuilds from it (at least once). At most one each `commit_every_s`,
        as each commit is a replicated write on the brokers.
        """
        from confluent_kafka import KafkaException

        if not self.uncommitted:
            return
        if self.exactly_once:
            self.deliver_exactly_once([], {})
            return
        try:
            self.consumer.commit(offsets=self._offsets(self.uncommitted), asynchronous=asynchronous)
        except KafkaException as error:
            self.say({"commit_failed": error.args[0].str()})
            self.stopped_at.clear()
        else:
            self.stopped_at.update(self.uncommitted)
        self.uncommitted = {}

    def deliver_exactly_once(self, alerts: list[Alert], positions: dict[int, int]) -> None:
        """A transaction for a batch with alerts: the alerts and every offset processed
        so far. A batch without alerts only adds its offsets to the next transaction
        (or to one of offsets alone after `commit_every_s`): replaying those payments
        after a crash alerts for nothing, so committing them late loses nothing, and
        the transaction (5 replicated writes) is no longer on every batch's path."""
        from confluent_kafka import KafkaException

        self.uncommitted.update(positions)
        now = time.monotonic()
        if not self.uncommitted or (
            positions and not alerts and now - self.last_commit < self.commit_every_s
        ):
            return
        offsets = self.uncommitted
        self.uncommitted = {}
        self.last_commit = now
        try:
            started = time.perf_counter()
            self.producer.begin_transaction()
            self._produce(alerts)
            metadata = self.consumer.consumer_group_metadata()
            _retrying(
                lambda: self.producer.send_offsets_to_transaction(
                    self._offsets(offsets), metadata, 30
                )
            )
            offsets_sent = time.perf_counter()
            _retrying(lambda: self.producer.commit_transaction(30))
            committed = time.perf_counter()
            self.spent_s["send_offsets"] += offsets_sent - started
            self.spent_s["commit"] += committed - offsets_sent
            self.transactions += 1
            if alerts:
                self.alert_txn_ms.append((committed - started) * 1000)
        except KafkaException as raised:
            error = raised.args[0]
            if not error.txn_requires_abort():
                raise  # fenced or fatal: another instance owns the work now
            self.say({"transaction_aborted": error.str()})
            self.producer.abort_transaction(30)
            self.rewind()
            return
        self.stopped_at.update(offsets)

    def rewind(self) -> None:
        """After an abort: back to the committed offsets, state rebuilt (as on assign)."""
        self.stopped_at.clear()
        self.uncommitted = {}
        for start in self.plan_starts(self.consumer, self.consumer.assignment()):
            self.consumer.seek(start)

    def figures(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "alerts": self.alerted,
            "cards": self.states.cards(),
            "rebuilt": self.rebuilt,
            "rebalances": self.rebalances,
            "batches": self.batches,
            "transactions": self.transactions,
            "alert_txn_ms": _percentiles(self.alert_txn_ms),
            "spent_s": {step: round(s, 3) for step, s in sorted(self.spent_s.items())},
        }

    def say(self, line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)


def _retrying(call: Any, attempts: int = 5) -> None:
    """A transactional call that failed retriably (a request timed out) is made again,
    as librdkafka allows; an abortable or fatal error goes to the caller."""
    from confluent_kafka import KafkaException

    for attempt in range(attempts):
        try:
            call()
            return
        except KafkaException as raised:
            error = raised.args[0]
            if not error.retriable() or error.txn_requires_abort() or attempt == attempts - 1:
                raise


def _percentiles(values: deque[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max": round(ordered[-1], 1),
    }


def run(**settings: Any) -> None:
    detector = Detector(**settings)

    def stop(signum: int, frame: object) -> None:
        detector.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    detector.run()
