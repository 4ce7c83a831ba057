"""`bench --offline`: the detector's own cost per payment, with no broker: what one
detector process could sustain if fetching were free, and the two encodings compared."""

from __future__ import annotations

import json
import time
from typing import Any

from examples.fraud_detection.events import decode_payment, encode_payment
from examples.fraud_detection.generator import PaymentStream
from examples.fraud_detection.rules import CardStates


def _per_item_us(started: float, count: int) -> float:
    return round((time.perf_counter() - started) / count * 1e6, 3)


def offline(payments: int = 200_000, seed: int = 1) -> dict[str, Any]:
    rate = max(1, payments // 20)  # 20 s of stream: incidents start in all but the last 6 s
    stream = list(
        PaymentStream(seed=seed, rate=rate, seconds=payments / rate, start_ms=0, fraud_share=0.002)
    )
    count = len(stream)

    started = time.perf_counter()
    encoded = [encode_payment(p) for p in stream]
    encode_us = _per_item_us(started, count)
    started = time.perf_counter()
    decoded = [decode_payment(data) for data in encoded]
    decode_us = _per_item_us(started, count)

    started = time.perf_counter()
    as_json = [json.dumps(p._asdict(), separators=(",", ":")).encode() for p in stream]
    encode_json_us = _per_item_us(started, count)
    started = time.perf_counter()
    for data in as_json:
        json.loads(data)
    decode_json_us = _per_item_us(started, count)

    states = CardStates()
    partitions = 12
    started = time.perf_counter()
    alerts = 0
    for payment in decoded:
        alerts += len(states.observe(payment.card % partitions, payment))
    rules_us = _per_item_us(started, count)
    return {
        "payments": count,
        "bytes_struct": len(encoded[0]),
        "bytes_json": sum(map(len, as_json)) // count,
        "encode_struct_us": encode_us,
        "decode_struct_us": decode_us,
        "encode_json_us": encode_json_us,
        "decode_json_us": decode_json_us,
        "rules_us": rules_us,
        "alerts": alerts,
        "cards": states.cards(),
        "detector_ceiling_per_s": round(1e6 / (decode_us + rules_us)),
    }
