"""Snapshot files of a replicated state machine (KIP-630): `<offset>-<epoch>.checkpoint`.

A snapshot with id (end_offset, epoch) holds the state after applying every entry
below `end_offset`; `epoch` is the epoch of the entry at end_offset - 1. The file is
a sequence of record batches, like a segment: a SNAPSHOT_HEADER control batch, the
state's records, a SNAPSHOT_FOOTER control batch. It is written under a `.part`
name, synced, checked and renamed into place, so a visible `.checkpoint` is whole;
one fetched from a leader in chunks is validated the same way before it is renamed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

import attrs

from storage.fs import FileSystem
from storage.records import (
    ControlRecordType,
    RecordBatchError,
    RecordInput,
    build_batch,
    build_control_batch,
    iter_batches,
    iter_records,
    parse_control_record_key,
)

SUFFIX = ".checkpoint"
PARTIAL_SUFFIX = ".checkpoint.part"
_NAME = re.compile(r"(\d{20})-(\d{10})\.checkpoint")
RECORDS_PER_BATCH = 1_000


@attrs.frozen(order=True, slots=True)
class SnapshotId:
    end_offset: int
    epoch: int


class SnapshotError(ValueError):
    """A snapshot file is incomplete or corrupt."""


def file_name(snapshot_id: SnapshotId, suffix: str = SUFFIX) -> str:
    return f"{snapshot_id.end_offset:020d}-{snapshot_id.epoch:010d}{suffix}"


def list_snapshots(fs: FileSystem, directory: str) -> list[SnapshotId]:
    """Whole snapshots in `directory`, oldest first; leftover partial files are removed."""
    found = []
    for name in fs.listdir(directory):
        if name.endswith(PARTIAL_SUFFIX):
            fs.remove(posixpath.join(directory, name))
            continue
        match = _NAME.fullmatch(name)
        if match:
            found.append(SnapshotId(int(match.group(1)), int(match.group(2))))
    return sorted(found)


def write_snapshot(
    fs: FileSystem,
    directory: str,
    snapshot_id: SnapshotId,
    values: Sequence[bytes],
    *,
    timestamp_ms: int,
) -> None:
    """Write a complete snapshot of `values` durably."""
    parts = [build_control_batch(ControlRecordType.SNAPSHOT_HEADER, b"", timestamp=timestamp_ms)]
    for start in range(0, len(values), RECORDS_PER_BATCH):
        chunk = values[start : start + RECORDS_PER_BATCH]
        records = [RecordInput(timestamp=timestamp_ms, value=value) for value in chunk]
        parts.append(build_batch(records, base_offset=start))
    parts.append(
        build_control_batch(ControlRecordType.SNAPSHOT_FOOTER, b"", timestamp=timestamp_ms)
    )
    writer = SnapshotChunkWriter(fs, directory, snapshot_id)
    writer.append(0, b"".join(parts))
    writer.finish()


def read_chunk(
    fs: FileSystem, directory: str, snapshot_id: SnapshotId, position: int, max_bytes: int
) -> tuple[bytes, int]:
    """(bytes from `position`, total size) of a whole snapshot."""
    handle = fs.open(posixpath.join(directory, file_name(snapshot_id)), create=False)
    try:
        return handle.read_at(position, max_bytes), handle.size()
    finally:
        handle.close()


def read_values(fs: FileSystem, directory: str, snapshot_id: SnapshotId) -> list[bytes]:
    path = posixpath.join(directory, file_name(snapshot_id))
    data, _ = read_chunk(fs, directory, snapshot_id, 0, fs.file_size(path))
    return _values(data, file_name(snapshot_id))


def delete_before(fs: FileSystem, directory: str, keep: SnapshotId) -> None:
    """Remove snapshots older than `keep`."""
    for snapshot_id in list_snapshots(fs, directory):
        if snapshot_id < keep:
            fs.remove(posixpath.join(directory, file_name(snapshot_id)))


class SnapshotChunkWriter:
    """Builds a snapshot from chunks (a follower fetching one) and publishes it whole."""

    def __init__(self, fs: FileSystem, directory: str, snapshot_id: SnapshotId) -> None:
        self.fs = fs
        self.directory = directory
        self.snapshot_id = snapshot_id
        self._path = posixpath.join(directory, file_name(snapshot_id, PARTIAL_SUFFIX))
        if fs.exists(self._path):
            fs.remove(self._path)
        self._handle = fs.open(self._path)

    @property
    def position(self) -> int:
        return self._handle.size()

    def append(self, position: int, data: bytes) -> None:
        if position != self._handle.size():
            raise SnapshotError(f"chunk at {position}, expected {self._handle.size()}")
        self._handle.append(data)

    def finish(self) -> None:
        """Validate every batch, sync, and rename into place (atomically)."""
        data = self._handle.read_at(0, self._handle.size())
        _values(data, self._path)
        self._handle.sync()
        self._handle.close()
        self.fs.rename(self._path, posixpath.join(self.directory, file_name(self.snapshot_id)))
        self.fs.sync_dir(self.directory)

    def abort(self) -> None:
        self._handle.close()
        if self.fs.exists(self._path):
            self.fs.remove(self._path)


def _values(data: bytes, name: str) -> list[bytes]:
    values: list[bytes] = []
    kinds = []
    try:
        for position, header in iter_batches(data, validate=True):
            batch = data[position : position + header.size_bytes]
            for record in iter_records(batch):
                if header.is_control:
                    kinds.append(parse_control_record_key(record.key))
                else:
                    values.append(record.value or b"")
    except RecordBatchError as error:
        raise SnapshotError(f"snapshot {name} is corrupt: {error}") from None
    if kinds != [ControlRecordType.SNAPSHOT_HEADER, ControlRecordType.SNAPSHOT_FOOTER]:
        raise SnapshotError(f"snapshot {name} lacks its header or footer (found {kinds})")
    return values
