"""Follows the committed metadata log and keeps this node's MetadataImage current.

Every node runs one: the active controller, standbys and brokers alike, so every
node's image at offset N is the same function of the log (compare `digest()`s).
Batches that are committed are replayed in order into one delta per catch-up step
and published to subscribers as (delta, new image); loading a snapshot publishes
with `delta=None` (anything may have changed). A record that does not decode or
does not fit the image stops the loader with the error: a node must not serve
metadata it cannot explain.

Snapshots are taken here, by each node independently (as Kafka's
`metadata.log.max.record.bytes.between.snapshots`): once that many bytes of records
were replayed since the last one, the image is written out as records and the Raft
log before it goes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from kraft.metadata.image import EMPTY_IMAGE, MetadataDelta, MetadataImage, replay
from kraft.metadata.records import decode_record, encode_record
from kraft.runtime import RaftNode
from storage.records import iter_records, read_header

log = logging.getLogger(__name__)

# Kafka's default is 20 MiB; metadata records here are a little larger (CBOR).
SNAPSHOT_MIN_BYTES = 20 * 1024 * 1024

Subscriber = Callable[[MetadataDelta | None, MetadataImage], None]


class MetadataLoader:
    def __init__(self, node: RaftNode, *, snapshot_min_bytes: int = SNAPSHOT_MIN_BYTES) -> None:
        self.node = node
        self.snapshot_min_bytes = snapshot_min_bytes
        self.image = EMPTY_IMAGE
        # The first log offset not applied yet (control batches count as applied).
        self.next_offset = 0
        self.snapshots_written = 0
        self.snapshots_loaded = 0
        self._bytes_since_snapshot = 0
        self._subscribers: list[Subscriber] = []
        self._applied = trio.Event()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Called after every change, in log order; first with the image as it is now."""
        self._subscribers.append(subscriber)
        if self.next_offset > 0:
            subscriber(None, self.image)

    async def run(self) -> None:
        node = self.node
        while True:
            if self.next_offset < node.log.log_start_offset:
                self._load_snapshot()
            elif self.next_offset < node.high_watermark:
                self._replay_committed()
            else:
                await node.wait_for_change()

    async def wait_applied(self, offset: int) -> None:
        """Until the record at `offset` is in the image."""
        while self.next_offset <= offset:
            await self._applied.wait()

    def _load_snapshot(self) -> None:
        snapshot_id, values = self.node.snapshot()
        assert snapshot_id is not None, "the log start moved without a snapshot"
        image = replay(EMPTY_IMAGE, [(-1, decode_record(value)) for value in values])
        self.image = attrs.evolve(image, offset=snapshot_id.offset - 1)
        self.next_offset = snapshot_id.offset
        self._bytes_since_snapshot = 0
        self.snapshots_loaded += 1
        log.info("loaded metadata snapshot at offset %d", snapshot_id.offset)
        self._publish(None)

    def _replay_committed(self) -> None:
        delta = MetadataDelta(self.image)
        for batch in self.node.committed_batches(self.next_offset):
            header = read_header(batch)
            if not header.is_control:
                for record in iter_records(batch):
                    assert record.value is not None, "metadata records always have a value"
                    delta.replay(decode_record(record.value), record.offset)
                self._bytes_since_snapshot += header.size_bytes
            self.next_offset = header.next_offset
        self.image = delta.apply()
        self._publish(delta)
        if self._bytes_since_snapshot >= self.snapshot_min_bytes:
            self.write_snapshot()

    def write_snapshot(self) -> None:
        """Snapshot the image as of `next_offset` (all of it is committed)."""
        values = [encode_record(record) for record in self.image.to_records()]
        snapshot_id = self.node.write_snapshot(self.next_offset, values)
        self._bytes_since_snapshot = 0
        self.snapshots_written += 1
        log.info("wrote metadata snapshot %s (%d records)", snapshot_id, len(values))

    def _publish(self, delta: MetadataDelta | None) -> None:
        for subscriber in self._subscribers:
            subscriber(delta, self.image)
        self._applied.set()
        self._applied = trio.Event()
