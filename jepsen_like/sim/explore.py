"""Exploration with shrinking: Hypothesis generates fault schedules, finds one that
breaks a property, and shrinks it to a minimal schedule (fewest faults, simplest
ones, lowest seed) that still fails.

    schedule = find_failing_schedule(planted_bug="hwm-ignores-followers")

A schedule is (seed, [fault, ...]): the faults run in order, one per interval, and the
seed fixes everything else (targets, latencies, timeouts, the workload).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st

from jepsen_like.sim.runner import SIM_FAULTS, SimConfig, simulate

Schedule = tuple[int, tuple[str, ...]]


def schedules(faults: tuple[str, ...] = SIM_FAULTS, longest: int = 4) -> Any:
    return st.tuples(
        st.integers(min_value=0, max_value=1_000),
        st.lists(st.sampled_from(faults), min_size=0, max_size=longest).map(tuple),
    )


def fails(schedule: Schedule, *, planted_bug: str | None, time_s: float) -> bool:
    seed, faults = schedule
    result = simulate(
        SimConfig(
            seed=seed,
            scripted=faults,
            faults=faults,  # none at all for an empty schedule
            time_s=time_s,
            interval_s=time_s / (len(faults) + 1) if faults else time_s,
            planted_bug=planted_bug,
        )
    )
    return not result.valid


def find_failing_schedule(
    *,
    planted_bug: str | None = None,
    time_s: float = 6.0,
    max_examples: int = 30,
    faults: tuple[str, ...] = SIM_FAULTS,
    derandomize: bool = False,
) -> Schedule:
    """The minimal failing schedule Hypothesis found (raises NoSuchExample if none).
    `derandomize`: the same examples every time (a test's search must not be luck)."""
    return find(
        schedules(faults),
        lambda schedule: fails(schedule, planted_bug=planted_bug, time_s=time_s),
        settings=settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
        ),
    )
