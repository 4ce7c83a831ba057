"""When a client may try to reach a peer again after failing to: Kafka's reconnect backoff.

Shared by the native `RpcClient` and the Kafka-protocol `KafkaConnection`: exponential
from `reconnect.backoff.ms` up to `reconnect.backoff.max.ms`, with full jitter, so
that the clients that lost the same node do not all come back in step.
"""

from __future__ import annotations

import random

import trio

RECONNECT_BACKOFF_MS = 50
RECONNECT_BACKOFF_MAX_MS = 1000  # Kafka's reconnect.backoff.max.ms


class ReconnectBackoff:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.failures = 0
        self.retry_at = 0.0

    async def wait(self) -> None:
        """Until the next attempt is due (at once after a success)."""
        delay = self.retry_at - trio.current_time()
        if delay > 0:
            await trio.sleep(delay)

    def failed(self) -> None:
        self.failures += 1
        backoff_ms = min(RECONNECT_BACKOFF_MAX_MS, RECONNECT_BACKOFF_MS * 2 ** (self.failures - 1))
        self.retry_at = trio.current_time() + self.rng.uniform(0, backoff_ms) / 1000

    def succeeded(self) -> None:
        self.failures = 0
