"""The detector process's bookkeeping, with stand-ins for confluent-kafka's consumer and
producer: where a partition is read from after a rebalance, that a rebuild alerts for
nothing it already handled, and that at-least-once commits only after its alerts."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from examples.fraud_detection.detector import Detector
from examples.fraud_detection.events import Payment, decode_alert, encode_payment

TOPIC = "payments"


class FakeMessage:
    def __init__(self, partition: int, offset: int, payment: Payment) -> None:
        self._partition = partition
        self._offset = offset
        self._value = encode_payment(payment)

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    def __init__(self, committed: dict[int, int], history: dict[int, int]) -> None:
        self.committed_offsets = committed  # partition -> committed offset (absent: none)
        self.history = history  # partition -> first offset of the rebuild window
        self.assigned: list[TopicPartition] = []
        self.log: list[tuple[str, Any]]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.committed_offsets.get(tp.partition, -1001))
            for tp in partitions
        ]

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.history.get(tp.partition, -1))
            for tp in partitions
        ]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.log.append(("commit", {tp.partition: tp.offset for tp in offsets}))


class FakeProducer:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.pending: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.pending.append(value)

    def flush(self, timeout: float) -> int:
        self.log.append(("acked", [decode_alert(v).event_seq for v in self.pending]))
        self.pending = []
        return 0


def detector(consumer: FakeConsumer) -> tuple[Detector, list[tuple[str, Any]]]:
    log: list[tuple[str, Any]] = []
    consumer.log = log
    built = Detector(
        bootstrap="unused:1",
        group="g",
        payments_topic=TOPIC,
        alerts_topic="alerts",
        semantics="at-least-once",
        instance="0",
        rebuild_window_s=30,
        consumer=consumer,
        producer=FakeProducer(log),
    )
    built.say = lambda line: None  # type: ignore[method-assign]
    built.commit_every_s = 0  # every batch
    return built, log


def burst(card: int, first_offset: int, count: int) -> list[FakeMessage]:
    return [
        FakeMessage(0, first_offset + k, Payment(100 + k, card, 1, 2_000, 1_000 + 100 * k, "FR"))
        for k in range(count)
    ]


def test_assignment_starts_rebuilds_and_fresh_partitions() -> None:
    consumer = FakeConsumer(committed={0: 500, 1: 80}, history={0: 420, 1: -1})
    built, _ = detector(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, p) for p in (0, 1, 2)])
    starts = {tp.partition: tp.offset for tp in consumer.assigned}
    # 0: back to the window's start; 1: no payment in the window, from the commit;
    # 2: nothing committed, from the beginning.
    assert starts == {0: 420, 1: 80, 2: OFFSET_BEGINNING}
    assert built.replay_until == {0: 500, 1: 80, 2: 0}
    assert built.rebuilt == 80


def test_a_rebuild_alerts_only_for_payments_after_the_commit() -> None:
    consumer = FakeConsumer(committed={0: 13}, history={0: 10})
    built, log = detector(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, 0)])
    # Offsets 10-14 are one velocity burst completed at offset 14, after the commit.
    built.handle(burst(card=9, first_offset=10, count=5))
    assert log == [("acked", [104]), ("commit", {0: 15})]


def test_a_pattern_completed_before_the_commit_is_not_alerted_again() -> None:
    consumer = FakeConsumer(committed={0: 20}, history={0: 10})
    built, log = detector(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, 0)])
    built.handle(burst(card=9, first_offset=10, count=6))  # completed at offset 14 < 20
    assert log == [("commit", {0: 16})]


def test_a_partition_kept_where_it_stopped_keeps_its_state() -> None:
    consumer = FakeConsumer(committed={}, history={})
    built, log = detector(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, 0)])
    built.handle(burst(card=9, first_offset=0, count=3))
    consumer.committed_offsets = {0: 3}
    consumer.history = {0: 0}
    built.on_assign(consumer, [TopicPartition(TOPIC, 0)])  # a rebalance gave it back
    assert {tp.partition: tp.offset for tp in consumer.assigned} == {0: 3}
    assert built.states.cards() == 1
    later = [
        FakeMessage(0, 3 + k, Payment(103 + k, 9, 1, 2_000, 1_300 + 100 * k, "FR"))
        for k in range(2)
    ]
    built.handle(later)  # the burst's 4th and 5th payment: it completes
    assert log[-2:] == [("acked", [104]), ("commit", {0: 5})]


class FakeTransactionalProducer:
    """Records each transaction as (alerts' event seqs, offsets sent)."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.pending: list[int] = []
        self.offsets: dict[int, int] = {}

    def begin_transaction(self) -> None:
        self.pending, self.offsets = [], {}

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.pending.append(decode_alert(value).event_seq)

    def send_offsets_to_transaction(
        self, offsets: list[Any], metadata: Any, timeout: float
    ) -> None:
        self.offsets = {tp.partition: tp.offset for tp in offsets}

    def commit_transaction(self, timeout: float) -> None:
        self.log.append(("transaction", (self.pending, self.offsets)))


class FakeGroupConsumer(FakeConsumer):
    def consumer_group_metadata(self) -> object:
        return object()


def exactly_once(consumer: FakeConsumer) -> tuple[Detector, list[tuple[str, Any]]]:
    log: list[tuple[str, Any]] = []
    consumer.log = log
    built = Detector(
        bootstrap="unused:1",
        group="g",
        payments_topic=TOPIC,
        alerts_topic="alerts",
        semantics="exactly-once",
        instance="0",
        rebuild_window_s=30,
        consumer=consumer,
        producer=FakeTransactionalProducer(log),
    )
    built.say = lambda line: None  # type: ignore[method-assign]
    return built, log


def quiet(partition: int, first_offset: int, count: int) -> list[FakeMessage]:
    """Payments of distinct cards: no rule fires."""
    return [
        FakeMessage(partition, first_offset + k, Payment(k, 1_000 + k, 1, 2_000, 1_000, "FR"))
        for k in range(count)
    ]


def test_exactly_once_a_batch_without_alerts_waits_for_the_next_transaction() -> None:
    consumer = FakeGroupConsumer(committed={}, history={})
    built, log = exactly_once(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, p) for p in (0, 1)])
    built.last_commit = time.monotonic()  # the offsets-only deadline is far away
    built.handle(quiet(partition=1, first_offset=0, count=7))
    assert log == []  # no transaction for a batch that alerts for nothing
    built.handle(burst(card=9, first_offset=0, count=5))
    # One transaction: the alert, and partition 1's offsets with partition 0's.
    assert log == [("transaction", ([104], {1: 7, 0: 5}))]
    assert built.stopped_at == {1: 7, 0: 5}


def test_exactly_once_offsets_alone_commit_when_the_stream_pauses_or_go_stale() -> None:
    consumer = FakeGroupConsumer(committed={}, history={})
    built, log = exactly_once(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, 0)])
    built.last_commit = time.monotonic()
    built.handle(quiet(partition=0, first_offset=0, count=3))
    assert log == []
    built.commit_uncommitted(asynchronous=True)  # what the loop does when nothing arrives
    assert log == [("transaction", ([], {0: 3}))]
    built.commit_uncommitted(asynchronous=True)  # nothing new: no empty transaction
    assert len(log) == 1
    built.last_commit = time.monotonic() - built.commit_every_s  # the deadline passed
    built.handle(quiet(partition=0, first_offset=3, count=2))
    assert log[-1] == ("transaction", ([], {0: 5}))


def test_exactly_once_revoke_commits_what_is_done() -> None:
    consumer = FakeGroupConsumer(committed={}, history={})
    built, log = exactly_once(consumer)
    built.on_assign(consumer, [TopicPartition(TOPIC, 0)])
    built.last_commit = time.monotonic()
    built.handle(quiet(partition=0, first_offset=0, count=4))
    built.on_revoke(consumer, [TopicPartition(TOPIC, 0)])
    assert log == [("transaction", ([], {0: 4}))]
