"""Leader-epoch cache: which partition leader epoch started at which offset.

Each replica keeps the list of (epoch, start_offset) pairs of the leaders whose
records it holds. On a leader change a follower asks the new leader for the end
offset of its own latest epoch and truncates to the divergence point, instead of to
its high-water mark, which would lose or keep the wrong records (KIP-101, KIP-279).

The cache is persisted as `leader-epoch-checkpoint` in Kafka's text layout:
a version line (0), an entry-count line, then one "epoch start_offset" line each.
Changes are made in memory and written by `flush()`, which the log calls whenever it
syncs: an append never waits for, or fails on, the checkpoint. The log re-derives the
epochs of every segment it re-validates on open, so the checkpoint only needs to cover
the segments before the recovery point, which it does since it is flushed with them.
"""

from __future__ import annotations

import bisect
import itertools

import attrs

from storage.checkpoint import CheckpointError, read_file, write_atomically
from storage.fs import FileSystem

CHECKPOINT_NAME = "leader-epoch-checkpoint"
UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


@attrs.frozen(slots=True)
class EpochEntry:
    epoch: int
    start_offset: int


@attrs.frozen(slots=True)
class EpochEndOffset:
    """Answer to "where did epoch E end?": the largest epoch <= E and its end offset."""

    epoch: int
    end_offset: int


class LeaderEpochCache:
    def __init__(self, fs: FileSystem | None, path: str | None) -> None:
        self._fs = fs
        self._path = path
        self._entries: list[EpochEntry] = []
        self._dirty = False

    @classmethod
    def load(cls, fs: FileSystem, directory: str) -> LeaderEpochCache:
        path = f"{directory}/{CHECKPOINT_NAME}"
        cache = cls(fs, path)
        content = read_file(fs, path)
        if content is not None:
            cache._entries = _parse_checkpoint(path, content)
        return cache

    @property
    def entries(self) -> tuple[EpochEntry, ...]:
        return tuple(self._entries)

    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def earliest_entry(self) -> EpochEntry | None:
        return self._entries[0] if self._entries else None

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch of the leader that wrote `offset`, or UNDEFINED_EPOCH."""
        starts = [entry.start_offset for entry in self._entries]
        index = bisect.bisect_right(starts, offset) - 1
        return self._entries[index].epoch if index >= 0 else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` starts at `start_offset`; True if the cache changed.

        An epoch is only ever appended: a lower or equal epoch than the latest is a
        no-op, except that entries a new epoch supersedes (same or later start offset,
        which only happens after a truncation that was not reported here) are dropped.
        """
        if epoch < 0:
            raise ValueError(f"leader epoch must be >= 0, got {epoch}")
        latest = self._entries[-1] if self._entries else None
        if latest is not None and epoch <= latest.epoch:
            return False
        while self._entries and self._entries[-1].start_offset >= start_offset:
            self._entries.pop()
        self._entries.append(EpochEntry(epoch, start_offset))
        self._dirty = True
        return True

    def end_offset_for(self, requested_epoch: int, log_end_offset: int) -> EpochEndOffset:
        """KIP-279 semantics for OffsetsForLeaderEpoch.

        The end offset of an epoch is the start offset of the first later epoch, or the
        log end offset for the latest epoch. If we never saw `requested_epoch`, answer
        with the largest epoch below it, so the asker truncates to where our histories
        last agreed.
        """
        if requested_epoch == UNDEFINED_EPOCH or not self._entries:
            return EpochEndOffset(UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        latest = self._entries[-1].epoch
        if requested_epoch == latest:
            return EpochEndOffset(latest, log_end_offset)
        if requested_epoch > latest:
            # The asker knows an epoch we never saw: we cannot place it.
            return EpochEndOffset(UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        epochs = [entry.epoch for entry in self._entries]
        index = bisect.bisect_right(epochs, requested_epoch)
        # entries[index] is the first epoch after the requested one.
        if index == 0:
            # Older than anything we hold: everything before our first epoch diverges.
            return EpochEndOffset(requested_epoch, self._entries[0].start_offset)
        return EpochEndOffset(self._entries[index - 1].epoch, self._entries[index].start_offset)

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs that start at or after `end_offset` (the log was truncated)."""
        kept = [entry for entry in self._entries if entry.start_offset < end_offset]
        if len(kept) != len(self._entries):
            self._entries = kept
            self._dirty = True

    def truncate_from_start(self, start_offset: int) -> None:
        """The log start moved to `start_offset`: drop epochs wholly before it."""
        index = 0
        while (
            index + 1 < len(self._entries) and self._entries[index + 1].start_offset <= start_offset
        ):
            index += 1
        kept = self._entries[index:]
        if kept and kept[0].start_offset < start_offset:
            kept[0] = EpochEntry(kept[0].epoch, start_offset)
        if kept != self._entries:
            self._entries = kept
            self._dirty = True

    def clear(self) -> None:
        if self._entries:
            self._entries = []
            self._dirty = True

    def flush(self) -> None:
        """Write the checkpoint if anything changed since the last flush."""
        if not self._dirty or self._fs is None or self._path is None:
            return
        lines = ["0", str(len(self._entries))]
        lines += [f"{entry.epoch} {entry.start_offset}" for entry in self._entries]
        write_atomically(self._fs, self._path, ("\n".join(lines) + "\n").encode())
        self._dirty = False


def _parse_checkpoint(path: str, content: bytes) -> list[EpochEntry]:
    lines = content.decode("ascii", errors="replace").strip().split("\n")
    try:
        if lines[0] != "0":
            raise CheckpointError(f"unsupported version {lines[0]!r}")
        count = int(lines[1])
        entries = []
        for line in lines[2 : 2 + count]:
            epoch_text, offset_text = line.split()
            entries.append(EpochEntry(int(epoch_text), int(offset_text)))
        if len(entries) != count:
            raise CheckpointError(f"expected {count} entries, found {len(entries)}")
    except (IndexError, ValueError) as error:
        raise CheckpointError(f"malformed leader epoch checkpoint {path}: {error}") from None
    for before, after in itertools.pairwise(entries):
        if after.epoch <= before.epoch or after.start_offset < before.start_offset:
            raise CheckpointError(f"leader epoch checkpoint {path} is not increasing")
    return entries
