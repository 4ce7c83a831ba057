"""File names and crash recovery of a segment replacement (log compaction).

The cleaner writes a run of segments' surviving batches to `<base>.log.cleaned`, then
`SegmentedLog.replace_segments` renames it `<base>-<end>.log.swap` (the commit point),
removes the old segments with base offsets in [base, end) and renames the swap file
`<base>.log`. Kafka names its swap file after the base offset alone and finds the
segments it replaces from the offsets inside it; a cleaned run may end with batches
that all went away, so the end offset is in the name here: recovery never has to guess
which old segments a swap replaces.

On open, `finish_interrupted_swaps` removes `.cleaned` files (a cleaning that never
committed) and completes every swap (one that did): the log reads as before the
cleaning or as after it, never a mixture.
"""

from __future__ import annotations

import re

from storage.fs import FileSystem
from storage.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX

CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"
_SWAP_NAME = re.compile(r"(\d{20})-(\d{20})\.log\.swap")
_SEGMENT_NAME = re.compile(r"(\d{20})\.(log|index|timeindex)")


def cleaned_path(directory: str, base_offset: int) -> str:
    return f"{directory}/{base_offset:020d}{LOG_SUFFIX}{CLEANED_SUFFIX}"


def swap_path(directory: str, base_offset: int, end_offset: int) -> str:
    return f"{directory}/{base_offset:020d}-{end_offset:020d}{LOG_SUFFIX}{SWAP_SUFFIX}"


def finish_interrupted_swaps(fs: FileSystem, directory: str) -> frozenset[int]:
    """Drop uncommitted cleanings, complete committed ones; return the swapped bases."""
    names = fs.listdir(directory)
    for name in names:
        if name.endswith(CLEANED_SUFFIX):
            fs.remove(f"{directory}/{name}")
    swapped: set[int] = set()
    for name in names:
        match = _SWAP_NAME.fullmatch(name)
        if match is None:
            continue
        base, end = int(match[1]), int(match[2])
        assert base < end, f"{directory}/{name}: an empty offset range"
        for other in fs.listdir(directory):
            segment = _SEGMENT_NAME.fullmatch(other)
            if segment is not None and base <= int(segment[1]) < end:
                fs.remove(f"{directory}/{other}")
        fs.sync_dir(directory)
        fs.rename(f"{directory}/{name}", f"{directory}/{base:020d}{LOG_SUFFIX}")
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            assert not fs.exists(f"{directory}/{base:020d}{suffix}")
        fs.sync_dir(directory)
        swapped.add(base)
    return frozenset(swapped)


__all__ = ["CLEANED_SUFFIX", "SWAP_SUFFIX", "cleaned_path", "finish_interrupted_swaps", "swap_path"]
