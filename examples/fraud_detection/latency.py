"""Detection latency percentiles.

A sorted list, not HdrHistogram (not installed here): a run sees one latency per alert,
a few thousand a minute, so keeping them all costs kilobytes and the percentiles are
exact (nearest rank) rather than bucketed.
"""

from __future__ import annotations

import bisect
import math


class Latencies:
    def __init__(self) -> None:
        self.values: list[float] = []

    def record(self, value_ms: float) -> None:
        bisect.insort(self.values, value_ms)

    def __len__(self) -> int:
        return len(self.values)

    def percentile(self, fraction: float) -> float | None:
        """Nearest rank: the smallest value at or above `fraction` of the values."""
        if not self.values:
            return None
        rank = max(1, math.ceil(fraction * len(self.values)))
        return self.values[rank - 1]

    def summary(self) -> dict[str, float | None]:
        return {
            "p50_ms": self.percentile(0.50),
            "p99_ms": self.percentile(0.99),
            "max_ms": self.values[-1] if self.values else None,
        }
