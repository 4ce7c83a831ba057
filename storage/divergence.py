"""Where two replicas' logs stop agreeing, from their leader-epoch caches (KIP-101/279/320).

Shared by the metadata quorum and the data partitions: the leader checks a fetcher's
(fetch offset, last fetched epoch) against its own epoch history; the fetcher
truncates to the answer, bounded by its own history of that epoch. Both sides only
compare epochs and offsets, never record contents.
"""

from __future__ import annotations

from typing import NamedTuple

from storage.log import SegmentedLog


class EpochEnd(NamedTuple):
    epoch: int
    end_offset: int


def diverging_epoch(
    log: SegmentedLog, fetch_offset: int, last_fetched_epoch: int
) -> EpochEnd | None:
    """The leader's answer: None if the fetcher's log is a prefix of ours.

    Otherwise the largest epoch we have at or below the fetcher's last one, and where
    it ends on our log: the fetcher's entries from there on are not ours.
    """
    if last_fetched_epoch < 0 or (fetch_offset == 0 and last_fetched_epoch == 0):
        return None  # an empty log agrees with everything
    epoch, end = log.end_offset_for_epoch(last_fetched_epoch)
    if epoch != last_fetched_epoch or end < fetch_offset:
        return EpochEnd(max(0, epoch), max(0, end))
    return None


def truncation_offset(log: SegmentedLog, diverging: EpochEnd) -> int:
    """Where a fetcher truncates after a divergence answer: never past what both hold."""
    local_epoch, local_end = log.end_offset_for_epoch(diverging.epoch)
    target = diverging.end_offset if local_epoch < 0 else min(diverging.end_offset, local_end)
    return max(target, log.log_start_offset)
