"""What the Raft core needs from its log, and the adapter over the segmented log.

The metadata log is a `storage.SegmentedLog`, the same class as data partitions; the
core sees it through `RaftLog`. Writes here go to the file system cache only: the
runtime flushes before it sends anything that reports them (see `core.Ready`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kraft.raft.messages import OffsetAndEpoch
from storage import snapshot as snapshot_files
from storage.log import SegmentedLog
from storage.records import (
    ControlRecordType,
    RecordInput,
    build_batch,
    build_control_batch,
    iter_batches,
)


class RaftLog(Protocol):
    @property
    def log_start_offset(self) -> int: ...

    @property
    def log_end_offset(self) -> int: ...

    def last_fetched_epoch(self) -> int:
        """Epoch of the last entry (0 for an empty log)."""

    def end_offset_for_epoch(self, epoch: int) -> OffsetAndEpoch:
        """KIP-279: where `epoch` (or the largest epoch below it) ended in this log."""

    def append_as_leader(self, values: Sequence[bytes], epoch: int, timestamp_ms: int) -> int:
        """Append one batch of entries; return the offset of the last one."""

    def append_leader_change(self, value: bytes, epoch: int, timestamp_ms: int) -> int:
        """Append the control record that opens a leader's epoch; return its offset."""

    def append_as_follower(self, data: bytes) -> None: ...

    def truncate_to(self, offset: int) -> None: ...

    def read(self, offset: int, max_bytes: int) -> bytes: ...

    def latest_snapshot_id(self) -> OffsetAndEpoch | None: ...

    def read_snapshot_chunk(
        self, snapshot_id: OffsetAndEpoch, position: int, max_bytes: int
    ) -> tuple[bytes, int] | None:
        """(chunk, total size) of that snapshot, or None if it is not (or no longer) here."""

    def write_snapshot_chunk(self, snapshot_id: OffsetAndEpoch, position: int, data: bytes) -> int:
        """Add a fetched chunk; return the position after it."""

    def install_fetched_snapshot(self, snapshot_id: OffsetAndEpoch) -> None:
        """Validate the fetched snapshot and restart the log empty at its end offset."""


class SegmentedRaftLog:
    """`RaftLog` over a `SegmentedLog`: an entry is a record in a batch."""

    def __init__(self, log: SegmentedLog) -> None:
        self.log = log
        self.fs = log.fs
        self.directory = log.directory
        snapshots = snapshot_files.list_snapshots(self.fs, self.directory)
        self._snapshot: snapshot_files.SnapshotId | None = snapshots[-1] if snapshots else None
        self._fetching: snapshot_files.SnapshotChunkWriter | None = None

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    def last_fetched_epoch(self) -> int:
        latest = self.log.latest_epoch()
        if latest < 0 and self._snapshot is not None:
            return self._snapshot.epoch  # an empty log continues its snapshot
        return max(0, latest)

    def end_offset_for_epoch(self, epoch: int) -> OffsetAndEpoch:
        found_epoch, end_offset = self.log.end_offset_for_epoch(epoch)
        snapshot = self._snapshot
        log_empty = self.log.log_end_offset == self.log.log_start_offset
        if (
            found_epoch < 0
            and snapshot is not None
            and epoch >= snapshot.epoch
            and (log_empty or epoch == snapshot.epoch)
        ):
            # Nothing of that epoch in the log, but the snapshot ends in it.
            return OffsetAndEpoch(offset=snapshot.end_offset, epoch=snapshot.epoch)
        return OffsetAndEpoch(offset=end_offset, epoch=found_epoch)

    def append_as_leader(self, values: Sequence[bytes], epoch: int, timestamp_ms: int) -> int:
        records = [RecordInput(timestamp=timestamp_ms, value=value) for value in values]
        return self.log.append(build_batch(records), leader_epoch=epoch).last_offset

    def append_leader_change(self, value: bytes, epoch: int, timestamp_ms: int) -> int:
        batch = build_control_batch(ControlRecordType.LEADER_CHANGE, value, timestamp=timestamp_ms)
        return self.log.append(batch, leader_epoch=epoch).last_offset

    def append_as_follower(self, data: bytes) -> None:
        self.log.append_as_follower(data)

    def truncate_to(self, offset: int) -> None:
        self.log.truncate_to(offset)

    def read(self, offset: int, max_bytes: int) -> bytes:
        return self.log.read(offset, max_bytes)

    def batches(self, start: int, end: int) -> list[bytes]:
        """Whole batches holding offsets in [start, end), for applying committed entries."""
        found: list[bytes] = []
        offset = start
        while offset < end:
            data, next_offset = self.log.read_slice(offset, 1 << 20, max_offset=end)
            if not data:
                break
            for position, header in iter_batches(data, validate=False):
                found.append(data[position : position + header.size_bytes])
            offset = next_offset
        return found

    # ------------------------------------------------------------------ snapshots

    def latest_snapshot_id(self) -> OffsetAndEpoch | None:
        snapshot = self._snapshot
        return (
            None
            if snapshot is None
            else OffsetAndEpoch(offset=snapshot.end_offset, epoch=snapshot.epoch)
        )

    def create_snapshot(
        self, end_offset: int, values: Sequence[bytes], timestamp_ms: int
    ) -> OffsetAndEpoch:
        """Write the state as of `end_offset` (committed), then drop the log before it."""
        epoch = self.log.epoch_cache.epoch_for_offset(end_offset - 1)
        if epoch < 0 and self._snapshot is not None and end_offset == self._snapshot.end_offset:
            epoch = self._snapshot.epoch
        snapshot_id = snapshot_files.SnapshotId(end_offset, max(0, epoch))
        snapshot_files.write_snapshot(
            self.fs, self.directory, snapshot_id, values, timestamp_ms=timestamp_ms
        )
        self._snapshot = snapshot_id
        self.log.advance_log_start_offset(min(end_offset, self.log.log_end_offset))
        snapshot_files.delete_before(self.fs, self.directory, snapshot_id)
        return OffsetAndEpoch(offset=end_offset, epoch=snapshot_id.epoch)

    def snapshot_values(self) -> list[bytes]:
        if self._snapshot is None:
            return []
        return snapshot_files.read_values(self.fs, self.directory, self._snapshot)

    def read_snapshot_chunk(
        self, snapshot_id: OffsetAndEpoch, position: int, max_bytes: int
    ) -> tuple[bytes, int] | None:
        current = self._snapshot
        if current is None or (current.end_offset, current.epoch) != (
            snapshot_id.offset,
            snapshot_id.epoch,
        ):
            return None
        return snapshot_files.read_chunk(self.fs, self.directory, current, position, max_bytes)

    def write_snapshot_chunk(self, snapshot_id: OffsetAndEpoch, position: int, data: bytes) -> int:
        wanted = snapshot_files.SnapshotId(snapshot_id.offset, snapshot_id.epoch)
        if self._fetching is None or self._fetching.snapshot_id != wanted or position == 0:
            if self._fetching is not None:
                self._fetching.abort()
            self._fetching = snapshot_files.SnapshotChunkWriter(self.fs, self.directory, wanted)
        self._fetching.append(position, data)
        return self._fetching.position

    def install_fetched_snapshot(self, snapshot_id: OffsetAndEpoch) -> None:
        writer = self._fetching
        assert writer is not None and writer.snapshot_id.end_offset == snapshot_id.offset
        self._fetching = None
        writer.finish()  # raises SnapshotError if the chunks do not make a valid snapshot
        self._snapshot = writer.snapshot_id
        self.log.truncate_fully_and_start_at(snapshot_id.offset)
        snapshot_files.delete_before(self.fs, self.directory, writer.snapshot_id)
