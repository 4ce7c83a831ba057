"""The wire form of payments and alerts.

A payment is a fixed 30-byte struct, not JSON: the detector decodes every event, and
`struct.unpack_from` of one precompiled format costs well under a microsecond where
`json.loads` of the same fields costs several (`bench --offline` measures both). Alerts are rare,
so they are small JSON, readable with kcat.
"""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

PAYMENT_FORMAT = struct.Struct(">QIIIQ2s")  # seq, card, merchant, amount_cents, ts_ms, country
PAYMENT_SIZE = PAYMENT_FORMAT.size
CARD_KEY = struct.Struct(">I")


class Payment(NamedTuple):
    seq: int  # the generator's sequence number, unique per run
    card: int
    merchant: int
    amount_cents: int
    ts_ms: int  # when the payment happened (the record's timestamp too)
    country: str  # ISO 3166 alpha-2


def encode_payment(payment: Payment) -> bytes:
    return PAYMENT_FORMAT.pack(
        payment.seq,
        payment.card,
        payment.merchant,
        payment.amount_cents,
        payment.ts_ms,
        payment.country.encode("ascii"),
    )


def decode_payment(data: bytes) -> Payment:
    if len(data) != PAYMENT_SIZE:
        raise ValueError(f"a payment is {PAYMENT_SIZE} bytes, got {len(data)}")
    seq, card, merchant, amount, ts_ms, country = PAYMENT_FORMAT.unpack(data)
    return Payment(seq, card, merchant, amount, ts_ms, country.decode("ascii"))


def card_key(card: int) -> bytes:
    return CARD_KEY.pack(card)


class Alert(NamedTuple):
    card: int
    pattern: str  # "velocity", "travel" or "spike"
    event_seq: int  # the payment that completed the pattern
    event_ts_ms: int
    partition: int
    offset: int
    detected_ms: int  # wall clock when the detector saw it


def encode_alert(alert: Alert) -> bytes:
    return json.dumps(alert._asdict(), separators=(",", ":")).encode()


def decode_alert(data: bytes) -> Alert:
    fields = json.loads(data)
    return Alert(**fields)
