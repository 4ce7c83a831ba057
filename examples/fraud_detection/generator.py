"""Payment events at a target rate, with a seeded share of planted fraud.

The stream is a pure function of (seed, rate, seconds, start time): normal payment `i`
happens at `start + i / rate`, on card `(a * i + b) mod cards`, a permutation that visits
every card once per `cards` payments, so a normal card pays every `cards / rate`
seconds (2 s by default), always in its home country, within 0.5-1.5x its base amount;
no rule can fire on it. Each planted incident takes a fresh card outside the normal
range and schedules its own payments (a burst, a jump across the world, warm-ups then a
spike), merged into the stream by time. The payment that completes an incident is its
ground truth: `(card, pattern, seq, ts)`, written to a JSON-lines side file.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

from examples.fraud_detection import rules
from examples.fraud_detection.events import Payment, card_key, encode_payment

FRAUD_CARD_BASE = 1 << 31  # planted incidents use cards from here up, never a normal card
PATTERNS = ("velocity", "travel", "spike")
VELOCITY_SPACING_MS = 150
VELOCITY_PAYMENTS = (
    rules.VELOCITY_COUNT + 1
)  # one more than the rule needs: it must not alert twice
TRAVEL_GAP_MS = 2_000
TRAVEL_KM_FAR = 3_000.0
SPIKE_WARMUPS = 4
SPIKE_SPACING_MS = 1_500
INCIDENT_SPAN_MS = SPIKE_WARMUPS * SPIKE_SPACING_MS + 1  # the longest incident
MERCHANTS = 100_000
# Fewer, larger produce requests: on pykraft each request's replication costs the
# brokers far more than its bytes (issue 18: 5 -> 50 ms took payment acks at 5,000/s
# from ~150 ms to ~35 ms, with 3 partitions).
LINGER_MS = 50.0


class Incident(NamedTuple):
    card: int
    pattern: str
    seq: int  # the payment that completes the pattern
    ts_ms: int


class _Planned(NamedTuple):
    ts_ms: int
    order: int  # ties in time keep the order they were planned in
    card: int
    country: str
    amount_cents: int
    completes: str  # the pattern this payment completes, or ""


def home_country(card: int) -> str:
    return rules.COUNTRY_CODES[((card * 2246822519) >> 7) % len(rules.COUNTRY_CODES)]


def base_amount_cents(card: int) -> int:
    return 500 + (card * 2654435761) % 19_500


def cards_for_rate(rate: int) -> int:
    return max(1_000, 2 * rate)


def _step_coprime(cards: int, rng: random.Random) -> int:
    while True:
        step = rng.randrange(cards // 3 + 1, cards) | 1
        if math.gcd(step, cards) == 1:
            return step


class PaymentStream:
    """The events of one run, in time order; `incidents` fills as their payments pass."""

    def __init__(
        self,
        *,
        seed: int,
        rate: int,
        seconds: float,
        start_ms: int,
        fraud_share: float = 0.002,
        cards: int | None = None,
    ) -> None:
        if rate <= 0 or seconds <= 0:
            raise ValueError("rate and seconds must be positive")
        self.rng = random.Random(seed)
        self.rate = rate
        self.start_ms = start_ms
        self.normal_count = int(rate * seconds)
        self.cards = cards or cards_for_rate(rate)
        self.step = _step_coprime(self.cards, self.rng)
        self.offset = self.rng.randrange(self.cards)
        mean_payments = (VELOCITY_PAYMENTS + 2 + SPIKE_WARMUPS + 1) / 3
        self.incident_chance = fraud_share / mean_payments
        self.incidents: list[Incident] = []
        self.incidents_started = 0
        self._planned: list[_Planned] = []
        self._order = 0

    def __iter__(self) -> Iterator[Payment]:
        rng = self.rng
        rate = self.rate
        start = self.start_ms
        planned = self._planned
        seq = 0
        # No incident starts that would outlast the normal payments: the run's rate holds
        # to its end.
        last_start = start + (self.normal_count * 1000) // rate - INCIDENT_SPAN_MS
        for i in range(self.normal_count):
            ts = start + (i * 1000) // rate
            while planned and planned[0].ts_ms <= ts:
                yield self._emit(heapq.heappop(planned), seq)
                seq += 1
            card = (self.step * i + self.offset) % self.cards
            amount = int(base_amount_cents(card) * (0.5 + rng.random()))
            yield Payment(seq, card, rng.randrange(MERCHANTS), amount, ts, home_country(card))
            seq += 1
            if rng.random() < self.incident_chance and ts < last_start:
                self._plan_incident(ts)
        while planned:
            yield self._emit(heapq.heappop(planned), seq)
            seq += 1

    def _emit(self, item: _Planned, seq: int) -> Payment:
        if item.completes:
            self.incidents.append(Incident(item.card, item.completes, seq, item.ts_ms))
        return Payment(
            seq,
            item.card,
            self.rng.randrange(MERCHANTS),
            item.amount_cents,
            item.ts_ms,
            item.country,
        )

    def _plan(self, ts: int, card: int, country: str, amount: int, completes: str = "") -> None:
        heapq.heappush(self._planned, _Planned(ts, self._order, card, country, amount, completes))
        self._order += 1

    def _plan_incident(self, now_ms: int) -> None:
        rng = self.rng
        card = FRAUD_CARD_BASE + self.incidents_started
        self.incidents_started += 1
        pattern = PATTERNS[rng.randrange(len(PATTERNS))]
        home = home_country(card)
        base = base_amount_cents(card)
        ts = now_ms + 1
        if pattern == "velocity":
            for k in range(VELOCITY_PAYMENTS):
                completes = "velocity" if k == rules.VELOCITY_COUNT - 1 else ""
                amount = int(base * (0.5 + rng.random()))
                self._plan(ts + k * VELOCITY_SPACING_MS, card, home, amount, completes)
        elif pattern == "travel":
            far = [c for c in rules.COUNTRY_CODES if rules.distance_km(home, c) > TRAVEL_KM_FAR]
            self._plan(ts, card, home, base)
            self._plan(ts + TRAVEL_GAP_MS, card, rng.choice(far), base, "travel")
        else:
            for k in range(SPIKE_WARMUPS):
                amount = int(base * (0.5 + rng.random()))
                self._plan(ts + k * SPIKE_SPACING_MS, card, home, amount)
            spike = max(20 * base, 2 * rules.SPIKE_CENTS_MIN)
            self._plan(ts + SPIKE_WARMUPS * SPIKE_SPACING_MS, card, home, spike, "spike")


def write_incidents(incidents: list[Incident], out: IO[str]) -> None:
    for incident in incidents:
        out.write(json.dumps(incident._asdict(), separators=(",", ":")) + "\n")
    out.flush()


def read_incidents(path: str) -> list[Incident]:
    with open(path, encoding="utf-8") as file:
        return [Incident(**json.loads(line)) for line in file if line.strip()]


def _acked_percentiles(acked_ms: list[float]) -> dict[str, float]:
    if not acked_ms:
        return {}
    acked_ms.sort()
    return {
        "acked_p50_ms": round(acked_ms[len(acked_ms) // 2], 1),
        "acked_p99_ms": round(acked_ms[min(len(acked_ms) - 1, int(len(acked_ms) * 0.99))], 1),
    }


def run(
    *,
    bootstrap: str,
    topic: str,
    rate: int,
    seconds: float,
    seed: int,
    truth_path: str,
    fraud_share: float,
    linger_ms: float = LINGER_MS,
) -> dict[str, float]:
    """Produce the stream in real time (each payment when its timestamp comes); the
    figures of the run, also printed as one JSON line."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    failures = [0]
    acked_ms: list[float] = []  # payment timestamp to acks=all, one payment in 64

    def on_delivery(error: object, message: Any) -> None:
        if error is not None:
            failures[0] += 1
        elif message.offset() % 64 == 0:
            acked_ms.append(time.time() * 1000 - message.timestamp()[1])

    start_ms = int(time.time() * 1000) + 200
    stream = PaymentStream(
        seed=seed, rate=rate, seconds=seconds, start_ms=start_ms, fraud_share=fraud_share
    )
    behind_max_ms = 0.0
    written = 0
    count = 0
    # Look at the clock every `check_every` payments: about once a millisecond.
    check_every = max(1, min(256, rate // 1000))
    next_truth_flush = time.monotonic() + 1.0
    with open(truth_path, "w", encoding="utf-8") as truth:
        for payment in stream:
            if count % check_every == 0:
                now = time.time() * 1000
                ahead = payment.ts_ms - now
                if ahead > 0:
                    producer.poll(0)
                    time.sleep(ahead / 1000)
                else:
                    behind_max_ms = max(behind_max_ms, -ahead)
                    producer.poll(0)
                if time.monotonic() >= next_truth_flush:
                    write_incidents(stream.incidents[written:], truth)
                    written = len(stream.incidents)
                    next_truth_flush = time.monotonic() + 1.0
            while True:
                try:
                    producer.produce(
                        topic,
                        encode_payment(payment),
                        card_key(payment.card),
                        timestamp=payment.ts_ms,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    producer.poll(0.01)
            count += 1
        produced_s = (time.time() * 1000 - start_ms) / 1000
        remaining = producer.flush(60)
        write_incidents(stream.incidents[written:], truth)
    elapsed_s = max(produced_s, 1e-3)
    figures = {
        "events": count,
        "incidents": len(stream.incidents),
        "elapsed_s": round(elapsed_s, 3),
        "events_per_s": round(count / elapsed_s, 1),
        "behind_max_ms": round(behind_max_ms, 1),
        "undelivered": remaining + failures[0],
        **_acked_percentiles(acked_ms),
    }
    print(json.dumps({"generator": figures}), flush=True)
    sys.stdout.flush()
    return figures
