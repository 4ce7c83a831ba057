"""The planted-bug library: each bug is found by its targeted schedule within a few
seeds and replays to the same history; the real code passes the same schedules.

Bounded by seed counts, never by time: each bug is found at seed 0 today (see
`jepsen-like sim --planted NAME --seeds 20` for more), and FIND_WITHIN_SEEDS leaves a
margin for schedules that shift as the production code changes.
"""

from __future__ import annotations

import argparse

import pytest

from jepsen_like.sim import cli as sim_cli
from jepsen_like.sim import planted
from jepsen_like.sim.runner import simulate
from jepsen_like.sim.scenarios import SCENARIOS

FIND_WITHIN_SEEDS = 3
REAL_CODE_SEEDS = 2


def _first(result_violation: str | None) -> str:
    assert result_violation is not None
    return result_violation.split(":")[0]


# The longest targeted schedules run in the sweep step (the default suite's budget).
SWEPT = ("stale-alter-partition", "follower-skips-truncation")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.sweep) if name in SWEPT else name
        for name in planted.PLANTED_BUGS
    ],
)
def test_each_planted_bug_is_found_by_its_schedule_and_replays(name: str, tmp_path) -> None:
    bug = planted.get(name)
    scenario = SCENARIOS[bug.scenario]
    found = None
    for seed in range(FIND_WITHIN_SEEDS):
        result = simulate(scenario.config(seed, planted_bug=name))
        if not result.valid:
            found = result
            break
    assert found is not None, f"{name} not found in {FIND_WITHIN_SEEDS} seeds of {bug.scenario}"
    assert _first(found.first_violation) in bug.found_as, found.summary
    replay = simulate(scenario.config(found.seed, planted_bug=name, out=str(tmp_path / "replay")))
    assert replay.digest == found.digest
    assert replay.first_violation == found.first_violation
    assert (tmp_path / "replay" / "summary.txt").exists()
    assert (tmp_path / "replay" / "history.jsonl").exists()


@pytest.mark.sweep  # its own CI step: the sweeps cover the real code far more
@pytest.mark.parametrize(
    "scenario", sorted({planted.get(n).scenario for n in planted.PLANTED_BUGS})
)
def test_the_real_code_passes_the_targeted_schedules(scenario: str) -> None:
    for seed in range(REAL_CODE_SEEDS):
        result = simulate(SCENARIOS[scenario].config(seed))
        assert result.valid, f"seed {seed}:\n{result.summary}"


def _sim_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_planted_list_names_each_bug_with_the_issue_it_recreates(capsys) -> None:
    assert sim_cli.main(_sim_args("--planted", "list")) == 0
    printed = capsys.readouterr().out
    for bug in planted.REGISTRY.values():
        assert bug.name in printed
        assert bug.recreates in printed
    assert "KAFKA-15489" in printed and "KIP-966" in printed and "KIP-903" in printed
    assert "not built yet" not in printed  # every bug of issue 13 is built


def test_every_planted_bug_of_issue_13_is_built() -> None:
    wanted = {
        "no-check-quorum",
        "unpersisted-vote",
        "no-unclean-shutdown-detection",
        "stale-alter-partition",
        "follower-skips-truncation",
        "hwm-ignores-followers",
    }
    assert wanted <= set(planted.PLANTED_BUGS)


def test_an_unknown_bug_is_refused(capsys) -> None:
    assert sim_cli.main(_sim_args("--planted", "no-such-bug", "--seeds", "1")) == 2
    assert "unknown planted bug" in capsys.readouterr().out


def test_planting_restores_the_production_code() -> None:
    import kraft.raft.progress

    right = kraft.raft.progress.LeaderProgress.quorum_heard_within
    with planted.planted("no-check-quorum"):
        assert kraft.raft.progress.LeaderProgress.quorum_heard_within is not right
    assert kraft.raft.progress.LeaderProgress.quorum_heard_within is right
