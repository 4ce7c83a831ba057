"""Leader-epoch cache: KIP-101/279 end-offset answers and the checkpoint file."""

from __future__ import annotations

import pytest

from storage.checkpoint import CheckpointError, write_atomically
from storage.fs import MemoryFileSystem
from storage.leader_epoch import UNDEFINED_EPOCH, UNDEFINED_OFFSET, EpochEndOffset, LeaderEpochCache


def make_cache(*entries: tuple[int, int]) -> LeaderEpochCache:
    fs = MemoryFileSystem()
    fs.makedirs("/p")
    cache = LeaderEpochCache.load(fs, "/p")
    for epoch, start in entries:
        cache.assign(epoch, start)
    return cache


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (UNDEFINED_EPOCH, EpochEndOffset(UNDEFINED_EPOCH, UNDEFINED_OFFSET)),
        (0, EpochEndOffset(0, 10)),  # older than our first epoch: diverged before it
        (1, EpochEndOffset(1, 20)),
        (2, EpochEndOffset(1, 20)),  # never seen: largest epoch below, where it ended
        (3, EpochEndOffset(3, 35)),
        (4, EpochEndOffset(4, 100)),  # the latest epoch ends at the log end
        (5, EpochEndOffset(UNDEFINED_EPOCH, UNDEFINED_OFFSET)),
    ],
)
def test_end_offset_for_epoch(requested: int, expected: EpochEndOffset) -> None:
    cache = make_cache((1, 10), (3, 20), (4, 35))
    assert cache.end_offset_for(requested, log_end_offset=100) == expected


def test_assign_ignores_older_epochs_and_replaces_superseded_starts() -> None:
    cache = make_cache((1, 0), (2, 10))
    assert not cache.assign(1, 50)
    assert not cache.assign(2, 60)
    assert cache.assign(5, 10)  # same start as epoch 2: epoch 2 never wrote anything
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(1, 0), (5, 10)]


def test_truncation_from_both_ends() -> None:
    cache = make_cache((1, 0), (2, 10), (3, 20))
    cache.truncate_from_end(20)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(1, 0), (2, 10)]
    cache.truncate_from_start(15)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(2, 15)]
    assert cache.epoch_for_offset(14) == UNDEFINED_EPOCH
    assert cache.epoch_for_offset(99) == 2


def test_checkpoint_round_trip_and_corruption() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/p")
    cache = LeaderEpochCache.load(fs, "/p")
    cache.assign(3, 7)
    cache.assign(9, 70)
    assert LeaderEpochCache.load(fs, "/p").entries == ()  # written on flush, not per change
    cache.flush()
    assert LeaderEpochCache.load(fs, "/p").entries == cache.entries
    write_atomically(fs, "/p/leader-epoch-checkpoint", b"0\n2\n3 7\n")
    with pytest.raises(CheckpointError):
        LeaderEpochCache.load(fs, "/p")
    write_atomically(fs, "/p/leader-epoch-checkpoint", b"0\n2\n9 7\n3 70\n")
    with pytest.raises(CheckpointError):
        LeaderEpochCache.load(fs, "/p")
