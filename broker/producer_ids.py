"""Producer ids for InitProducerId, handed out from blocks the controller allocates.

Like Kafka's RPCProducerIdManager (KIP-730): the broker asks the active controller for
a block of ids (AllocateProducerIds, 1,000 ids) and hands them out one by one. The
controller commits a `ProducerIdsRecord` to the metadata log before it answers, so no
id is handed out twice, by any broker, across controller failovers or restarts: a
block the controller granted is never granted again, and a block this broker did not
use up is simply skipped (ids are plentiful, reuse is not allowed).

When 90% of the current block is used, the next block is fetched in the background,
so InitProducerId rarely waits on the controller. While no id is at hand (the first
request, or a controller that does not answer), requests wait for the fetch in
progress; a failed fetch fails them with COORDINATOR_LOAD_IN_PROGRESS, which
producers retry, as Kafka's broker does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.schema import from_body, to_body
from kraft.controller.messages import AllocateProducerIdsRequest
from kraft.controller.producer_ids import ProducerIdsOutcome

log = logging.getLogger(__name__)

# Kafka's ProducerIdManager prefetches at 90% of a block.
PREFETCH_FRACTION = 0.9
ALLOCATE_TIMEOUT_S = 10.0

Forward = Callable[[int, Any], Awaitable[Any]]  # (api key, body) -> the controller's answer


@attrs.frozen
class ProducerIdBlock:
    first: int
    size: int

    @property
    def end(self) -> int:
        return self.first + self.size


class ProducerIdManager:
    def __init__(self, *, broker_id: int, broker_epoch: Callable[[], int], forward: Forward):
        self.broker_id = broker_id
        self.broker_epoch = broker_epoch
        self.forward = forward
        self._block: ProducerIdBlock | None = None
        self._next = 0
        self._prefetched: ProducerIdBlock | None = None
        self._fetching = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.blocks_fetched = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def next_id(self) -> int:
        """A producer id never handed out before; KafkaError if none can be had now."""
        while True:
            block = self._block
            if block is not None and self._next < block.end:
                producer_id = self._next
                self._next += 1
                if self._next >= block.first + block.size * PREFETCH_FRACTION:
                    self._start_prefetch()
                return producer_id
            if self._prefetched is not None:
                self._take(self._prefetched)
                self._prefetched = None
                continue
            await self._fetch(for_prefetch=False)

    def _take(self, block: ProducerIdBlock) -> None:
        self._block = block
        self._next = block.first

    def _start_prefetch(self) -> None:
        if self._prefetched is None and not self._fetching.locked() and self._nursery is not None:
            self._nursery.start_soon(self._prefetch)

    async def _prefetch(self) -> None:
        try:
            await self._fetch(for_prefetch=True)
        except KafkaError as error:
            log.warning("broker %d: prefetching producer ids failed: %s", self.broker_id, error)

    async def _fetch(self, *, for_prefetch: bool) -> None:
        async with self._fetching:
            # Someone else's fetch may have brought a block while this one waited.
            if self._prefetched is not None:
                return
            block = self._block
            if not for_prefetch and block is not None and self._next < block.end:
                return
            self._prefetched = await self._allocate()

    async def _allocate(self) -> ProducerIdBlock:
        epoch = self.broker_epoch()
        if epoch < 0:
            raise KafkaError(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, "this broker is not registered yet"
            )
        request = AllocateProducerIdsRequest(broker_id=self.broker_id, broker_epoch=epoch)
        try:
            answer = await self.forward(ApiKey.ALLOCATE_PRODUCER_IDS, to_body(request))
        except KafkaError as error:
            raise KafkaError(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, f"no producer id block: {error}"
            ) from error
        outcome = from_body(ProducerIdsOutcome, answer)
        if outcome.error_code != ErrorCode.NONE:
            raise KafkaError(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                f"the controller refused a producer id block: {ErrorCode(outcome.error_code).name}"
                f" {outcome.message}",
            )
        assert outcome.size > 0 and outcome.first_producer_id >= 0, outcome
        previous = self._prefetched or self._block
        # The controller's blocks only move forward: an overlap would hand an id twice.
        assert previous is None or outcome.first_producer_id >= previous.end, (previous, outcome)
        self.blocks_fetched += 1
        log.info(
            "broker %d: producer ids %d..%d",
            self.broker_id,
            outcome.first_producer_id,
            outcome.first_producer_id + outcome.size - 1,
        )
        return ProducerIdBlock(outcome.first_producer_id, outcome.size)
