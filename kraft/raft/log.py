"""What the Raft core needs from its log, and the adapter over the segmented log.

The metadata log is a `storage.SegmentedLog`, the same class as data partitions; the
core sees it through `RaftLog`. Writes here go to the file system cache only: the
runtime flushes before it sends anything that reports them (see `core.Ready`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kraft.raft.messages import OffsetAndEpoch
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


class SegmentedRaftLog:
    """`RaftLog` over a `SegmentedLog`: an entry is a record in a batch."""

    def __init__(self, log: SegmentedLog) -> None:
        self.log = log

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    def last_fetched_epoch(self) -> int:
        return max(0, self.log.latest_epoch())

    def end_offset_for_epoch(self, epoch: int) -> OffsetAndEpoch:
        found_epoch, end_offset = self.log.end_offset_for_epoch(epoch)
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
