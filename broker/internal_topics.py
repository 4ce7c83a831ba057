"""The broker's own compacted topics, created through the controller on first use.

`__consumer_offsets` (the group coordinator's) and `__transaction_state` (the
transaction coordinator's) are made the same way, as Kafka makes them: when a client
first asks for a coordinator and the image has no such topic, the broker forwards a
CreateTopics marked `internal` (names starting with `__` are refused otherwise), with
RF min(3, live brokers), min ISR 2 where RF is 3, cleanup.policy=compact and the topic's
own segment size. One creation at a time per topic; a failed one is logged and tried
again at the next request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.schema import to_body
from kraft.controller.messages import CreateTopicsRequest
from kraft.controller.replication import CreateTopic
from kraft.metadata.image import MetadataImage
from storage.records import RecordInput, build_batch

log = logging.getLogger(__name__)

# offsets.topic.replication.factor and transaction.state.log.replication.factor
INTERNAL_REPLICATION_FACTOR = 3


class InternalTopic:
    def __init__(
        self,
        name: str,
        *,
        partitions: int,
        segment_bytes: int,
        image: Callable[[], MetadataImage],
        forward: Callable[[int, Any], Awaitable[Any]],
    ) -> None:
        self.name = name
        self.partitions = partitions
        self.segment_bytes = segment_bytes
        self._image = image
        self._forward = forward  # (api key, body) -> the controller's answer
        self._creating = False

    async def ensure(self) -> None:
        image = self._image()
        if image.topic(self.name) is not None or self._creating:
            return
        factor = max(1, min(INTERNAL_REPLICATION_FACTOR, len(image.unfenced_brokers())))
        configs = (
            ("min.insync.replicas", "2" if factor >= 3 else "1"),
            ("cleanup.policy", "compact"),
            # The active segment is never cleaned: a smaller one lets the cleaner reach
            # more of the log (Kafka's offsets.topic.segment.bytes is 100 MiB).
            ("segment.bytes", str(self.segment_bytes)),
        )
        request = CreateTopicsRequest(
            topics=(
                CreateTopic(
                    name=self.name,
                    partitions=self.partitions,
                    replication_factor=factor,
                    configs=configs,
                ),
            ),
            validate_only=False,
            internal=True,
        )
        self._creating = True
        try:
            await self._forward(ApiKey.CREATE_TOPICS, to_body(request))
        except (KafkaError, trio.TooSlowError, OSError) as error:
            log.warning("creating %s failed: %s", self.name, error)
        finally:
            self._creating = False


def append_as_coordinator(
    partition: Any,
    leader_epoch: int,
    wire: list[tuple[bytes, bytes | None]],
    *,
    now_ms: int,
    min_insync_replicas: int,
    what: str,
) -> int:
    """A coordinator's records (key, value) as one batch on its internal partition: the
    last offset appended, or -1 if the append was refused (leadership moved, the ISR
    below its minimum, a log error): a refused append leaves nothing durable to trust."""
    batch = build_batch(RecordInput(timestamp=now_ms, key=k, value=v) for k, v in wire)
    try:
        partition.require_leader(leader_epoch)
        if len(partition.isr) < min_insync_replicas:
            raise KafkaError(ErrorCode.NOT_ENOUGH_REPLICAS, f"ISR {list(partition.isr)}")
        info = partition.append_as_leader(batch)
    except Exception as error:
        log.warning("%s: %s not appended: %r", partition, what, error)
        return -1
    return int(info.last_offset)
