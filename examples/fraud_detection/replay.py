"""Replay a time range of `payments` for retraining, beside the live pipeline.

It `assign()`s every partition (no subscribe, so it never joins and never rebalances the
live group; its group id is its own and it commits nothing), starts each at the first
offset at or after `--from` (`offsets_for_times`) and stops at the first at or after
`--to` (or the end offset when it started). It runs the rules on what it read, from
empty state, and with the ground truth counts the planted incidents in the range.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import datetime
from typing import Any

from examples.fraud_detection.events import decode_payment
from examples.fraud_detection.generator import read_incidents
from examples.fraud_detection.rules import CardStates


def parse_time_ms(text: str) -> int:
    """ISO 8601 (a naive time is UTC) or milliseconds since the epoch."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def replay(
    *,
    bootstrap: str,
    topic: str,
    from_ms: int,
    to_ms: int,
    truth_path: str | None,
    timeout_s: float = 600,
) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    if to_ms <= from_ms:
        raise ValueError("--to must be after --from")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fraud-replay-{os.getpid()}-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    started = time.monotonic()
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise SystemExit(f"replay: no topic {topic!r}")
        partitions = sorted(metadata.topics[topic].partitions)
        firsts = consumer.offsets_for_times(
            [TopicPartition(topic, p, from_ms) for p in partitions], timeout=30
        )
        lasts = consumer.offsets_for_times(
            [TopicPartition(topic, p, to_ms) for p in partitions], timeout=30
        )
        stops: dict[int, int] = {}
        starts = []
        for first, last in zip(firsts, lasts, strict=True):
            _, high = consumer.get_watermark_offsets(first, timeout=10, cached=False)
            begin = high if first.offset < 0 else first.offset
            stop = high if last.offset < 0 else last.offset
            if begin < stop:
                stops[first.partition] = stop
                starts.append(TopicPartition(topic, first.partition, begin))
        consumer.assign(starts)
        states = CardStates()
        patterns: Counter[str] = Counter()
        events = 0
        while stops:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error() is not None or message.partition() not in stops:
                    continue
                partition = message.partition()
                if message.offset() >= stops[partition]:
                    continue
                payment = decode_payment(message.value())
                if from_ms <= payment.ts_ms < to_ms:
                    events += 1
                    patterns.update(states.observe(partition, payment))
            # A transaction's marker can be the last offset before a stop: it is never
            # delivered, so the consumer's position says when a partition is done.
            for position in consumer.position([TopicPartition(topic, p) for p in stops]):
                if position.offset >= stops[position.partition]:
                    del stops[position.partition]
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"replay: not done after {timeout_s} s")
    finally:
        consumer.close()
    summary: dict[str, Any] = {
        "from_ms": from_ms,
        "to_ms": to_ms,
        "events": events,
        "alerts_by_rule": dict(sorted(patterns.items())),
        "seconds": round(time.monotonic() - started, 3),
    }
    if truth_path:
        planted = [i for i in read_incidents(truth_path) if from_ms <= i.ts_ms < to_ms]
        summary["planted"] = len(planted)
        summary["planted_by_pattern"] = dict(sorted(Counter(i.pattern for i in planted).items()))
    return summary


def main(args: Any) -> None:
    summary = replay(
        bootstrap=args.bootstrap,
        topic=args.topic,
        from_ms=parse_time_ms(args.from_time),
        to_ms=parse_time_ms(args.to_time),
        truth_path=args.truth,
    )
    line = json.dumps({"replay": summary})
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(line + "\n")
    print(line, flush=True)
