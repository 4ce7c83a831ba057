"""The three fraud rules, over per-card state; no I/O, so they are unit-tested alone.

- velocity: `VELOCITY_COUNT` payments of one card within `VELOCITY_WINDOW_MS`;
- travel: two consecutive payments whose countries are farther apart than a plane
  flies in the time between them (`TRAVEL_KMH_MAX`, beyond `TRAVEL_KM_MIN`);
- spike: an amount above `SPIKE_RATIO` times the card's running mean (after
  `SPIKE_HISTORY_MIN` payments) and above `SPIKE_CENTS_MIN`.

A pattern alerts once: velocity clears its window when it fires, so the burst's later
payments do not alert again.
"""

from __future__ import annotations

import math
from collections import deque

from examples.fraud_detection.events import Payment

VELOCITY_COUNT = 5
VELOCITY_WINDOW_MS = 3_000
TRAVEL_KMH_MAX = 900.0
TRAVEL_KM_MIN = 1_000.0  # centroids are rough: neighbours never alert
TRAVEL_GAP_MS_MAX = 6 * 3_600_000  # older than this, the previous country says nothing
SPIKE_RATIO = 10.0
SPIKE_HISTORY_MIN = 3
SPIKE_CENTS_MIN = 50_000

# Rough centroids (latitude, longitude) of the countries the generator uses.
COUNTRIES: dict[str, tuple[float, float]] = {
    "US": (39.8, -98.6),
    "CA": (56.1, -106.3),
    "BR": (-14.2, -51.9),
    "GB": (55.4, -3.4),
    "FR": (46.2, 2.2),
    "DE": (51.2, 10.5),
    "ES": (40.5, -3.7),
    "IN": (20.6, 79.0),
    "JP": (36.2, 138.3),
    "AU": (-25.3, 133.8),
    "ZA": (-30.6, 22.9),
    "SG": (1.35, 103.8),
}
COUNTRY_CODES = sorted(COUNTRIES)


def distance_km(country_a: str, country_b: str) -> float:
    """Great-circle distance between two countries' centroids (haversine)."""
    lat1, lon1 = map(math.radians, COUNTRIES[country_a])
    lat2, lon2 = map(math.radians, COUNTRIES[country_b])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


_DISTANCES = {(a, b): distance_km(a, b) for a in COUNTRY_CODES for b in COUNTRY_CODES}


class CardState:
    __slots__ = ("amount_count", "amount_sum", "last_country", "last_ts_ms", "recent_ts")

    def __init__(self) -> None:
        self.recent_ts: deque[int] = deque()
        self.last_country = ""
        self.last_ts_ms = 0
        self.amount_count = 0
        self.amount_sum = 0


def observe(state: CardState, payment: Payment) -> list[str]:
    """Fold one payment into its card's state; the patterns it completes."""
    found: list[str] = []
    ts = payment.ts_ms

    recent = state.recent_ts
    recent.append(ts)
    while recent and ts - recent[0] > VELOCITY_WINDOW_MS:
        recent.popleft()
    if len(recent) >= VELOCITY_COUNT:
        found.append("velocity")
        recent.clear()

    if state.last_country and state.last_country != payment.country:
        gap_ms = ts - state.last_ts_ms
        if 0 <= gap_ms <= TRAVEL_GAP_MS_MAX:
            km = _DISTANCES[(state.last_country, payment.country)]
            if km > TRAVEL_KM_MIN and km > TRAVEL_KMH_MAX * max(gap_ms, 1) / 3_600_000:
                found.append("travel")
    state.last_country = payment.country
    state.last_ts_ms = ts

    amount = payment.amount_cents
    if (
        state.amount_count >= SPIKE_HISTORY_MIN
        and amount >= SPIKE_CENTS_MIN
        and amount * state.amount_count > SPIKE_RATIO * state.amount_sum
    ):
        found.append("spike")
    else:
        # A spike stays out of the mean, so a second one on the card is still a spike.
        state.amount_count += 1
        state.amount_sum += amount
    return found


class CardStates:
    """Per-card state of the partitions one detector owns."""

    def __init__(self) -> None:
        self.by_partition: dict[int, dict[int, CardState]] = {}

    def observe(self, partition: int, payment: Payment) -> list[str]:
        cards = self.by_partition.get(partition)
        if cards is None:
            cards = self.by_partition[partition] = {}
        state = cards.get(payment.card)
        if state is None:
            state = cards[payment.card] = CardState()
        return observe(state, payment)

    def drop(self, partition: int) -> None:
        self.by_partition.pop(partition, None)

    def cards(self) -> int:
        return sum(len(cards) for cards in self.by_partition.values())
