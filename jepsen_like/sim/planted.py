"""Bugs planted on purpose, to show the simulator finds them (test-only switches).

Each one breaks one safety rule by swapping a production function for a wrong one,
only inside the block that asks for it; the production code carries no flag.

- `hwm-ignores-followers`: a partition leader's high-water mark jumps to its own log
  end without waiting for the ISR, so acks=all acknowledges writes only it holds.
- `unpersisted-vote`: a voter forgets its vote and epoch when it restarts (quorum-state
  is never written), so it may vote twice in one epoch: two leaders in an epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import broker.partition
import kraft.quorum_state_file


def _hwm_ignores_followers(current: int, leader_end: int, *_: Any, **__: Any) -> int:
    return max(current, leader_end)


def _forget(self: Any, *_: Any, **__: Any) -> None:
    return None


_PATCHES: dict[str, tuple[Any, str, Any]] = {
    "hwm-ignores-followers": (broker.partition, "high_watermark", _hwm_ignores_followers),
    "unpersisted-vote": (kraft.quorum_state_file.QuorumStateFile, "write", _forget),
}
PLANTED_BUGS = tuple(_PATCHES)


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    if name not in _PATCHES:
        raise ValueError(f"unknown planted bug {name!r}; choose from {', '.join(PLANTED_BUGS)}")
    owner, attribute, wrong = _PATCHES[name]
    right = getattr(owner, attribute)
    setattr(owner, attribute, wrong)
    try:
        yield
    finally:
        setattr(owner, attribute, right)
