"""The fraud example's rules, generator and encodings, without a broker."""

from __future__ import annotations

import itertools

import pytest

from examples.fraud_detection import rules
from examples.fraud_detection.events import (
    PAYMENT_SIZE,
    Alert,
    Payment,
    decode_alert,
    decode_payment,
    encode_alert,
    encode_payment,
)
from examples.fraud_detection.generator import FRAUD_CARD_BASE, PaymentStream
from examples.fraud_detection.latency import Latencies
from examples.fraud_detection.pipeline import score


def pay(
    seq: int, ts_ms: int, *, card: int = 7, amount: int = 2_000, country: str = "FR"
) -> Payment:
    return Payment(seq, card, 42, amount, ts_ms, country)


def run_rules(payments: list[Payment]) -> list[tuple[int, str]]:
    states = rules.CardStates()
    return [(p.seq, pattern) for p in payments for pattern in states.observe(0, p)]


def test_velocity_burst_alerts_once_at_the_fifth_payment() -> None:
    burst = [pay(i, 1_000 + 200 * i) for i in range(8)]
    assert run_rules(burst) == [(4, "velocity")]


def test_payments_spread_wider_than_the_window_do_not_alert() -> None:
    spread = [pay(i, 1_000 + 800 * i) for i in range(20)]  # 5 span 3.2 s > 3 s
    assert run_rules(spread) == []


def test_impossible_travel_alerts_and_a_long_flight_does_not() -> None:
    assert run_rules([pay(0, 0, country="FR"), pay(1, 60_000, country="JP")]) == [(1, "travel")]
    twelve_hours = 12 * 3_600_000
    assert run_rules([pay(0, 0, country="FR"), pay(1, twelve_hours, country="JP")]) == []
    # Neighbours: closer than the rule's minimum distance.
    assert rules.distance_km("FR", "DE") < rules.TRAVEL_KM_MIN
    assert run_rules([pay(0, 0, country="FR"), pay(1, 1_000, country="DE")]) == []


def test_amount_spike_alerts_after_enough_history() -> None:
    history = [pay(i, 10_000 * i, amount=2_000) for i in range(3)]
    assert run_rules([*history, pay(3, 40_000, amount=100_000)]) == [(3, "spike")]
    # Too little history: the same amount is no spike yet.
    assert run_rules([*history[:2], pay(2, 40_000, amount=100_000)]) == []
    # A big but usual amount for this card is no spike.
    rich = [pay(i, 10_000 * i, amount=80_000) for i in range(5)]
    assert run_rules([*rich, pay(5, 60_000, amount=100_000)]) == []


def test_cards_keep_separate_state() -> None:
    interleaved = [pay(i, 1_000 + 200 * i, card=i % 2) for i in range(8)]  # 4 per card
    assert run_rules(interleaved) == []


def test_payment_and_alert_round_trip() -> None:
    payment = Payment(2**64 - 1, 2**32 - 1, 99_999, 123_456, 1_700_000_000_123, "JP")
    data = encode_payment(payment)
    assert len(data) == PAYMENT_SIZE == 30
    assert decode_payment(data) == payment
    with pytest.raises(ValueError):
        decode_payment(data[:-1])
    alert = Alert(5, "travel", 17, 1_700_000_000_000, 3, 1234, 1_700_000_000_050)
    assert decode_alert(encode_alert(alert)) == alert


def stream(seed: int, **overrides: object) -> PaymentStream:
    settings: dict = {"seed": seed, "rate": 2_000, "seconds": 20, "start_ms": 10**12}
    settings.update(overrides)
    return PaymentStream(fraud_share=0.01, **settings)


def test_the_stream_is_a_function_of_its_seed() -> None:
    first, again, other = stream(3), stream(3), stream(4)
    events = list(first)
    assert events == list(again)
    assert first.incidents == again.incidents
    assert events != list(other)
    assert [p.ts_ms for p in events] == sorted(p.ts_ms for p in events)
    assert [p.seq for p in events] == list(range(len(events)))


def test_the_rules_find_exactly_the_planted_incidents_of_a_stream() -> None:
    generated = stream(11)
    found = run_rules(list(generated))
    planted = {(incident.seq, incident.pattern) for incident in generated.incidents}
    assert len(planted) > 30
    assert {pattern for _, pattern in planted} == {"velocity", "travel", "spike"}
    assert set(found) == planted
    assert len(found) == len(planted)  # nothing twice, nothing on a normal card
    assert all(incident.card >= FRAUD_CARD_BASE for incident in generated.incidents)


def test_normal_payments_alone_give_no_alert() -> None:
    quiet = PaymentStream(seed=5, rate=5_000, seconds=10, start_ms=0, fraud_share=0.0)
    assert run_rules(list(quiet)) == []
    assert quiet.incidents == []


def test_score_counts_recall_false_and_duplicate_alerts() -> None:
    from collections import Counter

    generated = stream(2, seconds=10)
    list(generated)
    planted = generated.incidents
    seen = Counter({(i.card, i.pattern): 1 for i in planted[1:]})
    seen[(planted[1].card, planted[1].pattern)] += 1
    seen[(1, "spike")] = 1
    figures = score(planted, seen)
    assert figures["planted"] == len(planted)
    assert figures["found"] == len(planted) - 1
    assert figures["false_alerts"] == 1
    assert figures["duplicate_alerts"] == 1


def test_latency_percentiles_by_nearest_rank() -> None:
    latencies = Latencies()
    for value in itertools.chain(range(100, 0, -1)):
        latencies.record(float(value))
    assert latencies.percentile(0.5) == 50.0
    assert latencies.percentile(0.99) == 99.0
    assert latencies.summary()["max_ms"] == 100.0
    assert Latencies().percentile(0.5) is None
