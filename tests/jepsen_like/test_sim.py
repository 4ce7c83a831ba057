"""The deterministic simulation: one seed, one history; planted bugs are found."""

from __future__ import annotations

import argparse

import pytest

from jepsen_like.sim import cli as sim_cli
from jepsen_like.sim.runner import SimConfig, simulate


def test_same_seed_same_history_and_different_seeds_differ() -> None:
    first = simulate(SimConfig(seed=5, time_s=5))
    again = simulate(SimConfig(seed=5, time_s=5))
    other = simulate(SimConfig(seed=6, time_s=5))
    assert first.valid, first.summary
    assert first.ops > 500
    assert first.digest == again.digest
    assert first.ops == again.ops
    assert other.digest != first.digest


@pytest.mark.slow
def test_a_planted_bug_is_found_and_replays_exactly(tmp_path) -> None:
    found = None
    for seed in range(30):
        result = simulate(SimConfig(seed=seed, time_s=10, planted_bug="hwm-ignores-followers"))
        if not result.valid:
            found = result
            break
    assert found is not None, "hwm-ignores-followers not found in 30 seeds"
    assert found.first_violation is not None
    assert found.first_violation.split(":")[0] in ("lost", "inconsistent-offsets", "hwm-regression")
    replay = simulate(
        SimConfig(
            seed=found.seed,
            time_s=10,
            planted_bug="hwm-ignores-followers",
            out=str(tmp_path / "replay"),
        )
    )
    assert replay.digest == found.digest
    assert replay.first_violation == found.first_violation
    assert (tmp_path / "replay" / "summary.txt").exists()
    assert (tmp_path / "replay" / "history.jsonl").exists()


@pytest.mark.slow
def test_two_hundred_seeds_of_mixed_faults_pass(capsys) -> None:
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    args = parser.parse_args(["--seeds", "200", "--time", "6", "--jobs", "2"])
    code = sim_cli.main(args)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "200 seeds, 0 failed" in printed
