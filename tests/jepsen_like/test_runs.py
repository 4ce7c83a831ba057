"""Short bounded runs against real clusters: safe settings pass, an unsafe one is caught."""

from __future__ import annotations

import json
import os

import pytest

from jepsen_like.run import RunConfig, run


async def short_run(tmp_path, **settings) -> dict:
    chosen = {
        "time_s": 14.0,
        "rate": 150.0,
        "producers": 3,
        "interval_s": 2.5,
        "fault_duration_s": 3.0,
        **settings,
    }
    config = RunConfig(out=str(tmp_path / "run"), **chosen)
    result = await run(config)
    with open(os.path.join(config.out, "stats.json"), encoding="utf-8") as file:
        stats = json.load(file)
    assert os.path.exists(os.path.join(config.out, "summary.txt"))
    assert os.path.exists(os.path.join(config.out, "history.jsonl"))
    stats["summary"] = result.summary
    return stats


# One run of each fault; the suite's own run takes kill-leader, the rest run in their
# own CI step (`pytest -m lab`), keeping the README's test command within its budget.
LAB = pytest.mark.lab


@pytest.mark.lab  # a CI step of its own: the default suite's budget
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("kill", marks=LAB),
        pytest.param("pause", marks=LAB),
        pytest.param("kill-controller", marks=LAB),
        "kill-leader",
        pytest.param("isolate", marks=LAB),
        pytest.param("isolate-controller", marks=LAB),
    ],
)
async def test_acks_all_loses_nothing_under(tmp_path, fault: str) -> None:
    stats = await short_run(tmp_path, scripted=(fault, fault))
    assert stats["valid"], stats["summary"]
    assert stats["lost"] == 0 and stats["inconsistent-offsets"] == 0
    assert stats["acknowledged"] > 500, stats["summary"]
    assert stats["duplicates-without-a-retry"] == 0


@pytest.mark.slow
@LAB
async def test_acks_1_with_unclean_election_is_caught_losing_writes(tmp_path) -> None:
    stats = await short_run(
        tmp_path,
        # Each kill loses what the leader acknowledged in the ~1 ms before its followers
        # fetched it: at ~1,000 sends/s, four kills lose something almost surely.
        scripted=("kill-leader",) * 4,
        time_s=18.0,
        interval_s=1.5,
        fault_duration_s=2.5,
        acks=1,
        min_insync_replicas=1,
        unclean_leader_election=True,
        rate=1000.0,
        producers=8,
        partitions=1,
    )
    assert not stats["valid"], stats["summary"]
    assert stats["lost"] > 0, stats["summary"]


@pytest.mark.slow
@LAB
async def test_metadata_changes_survive_controller_failovers(tmp_path) -> None:
    stats = await short_run(
        tmp_path,
        controllers=3,
        brokers=3,
        workload="metadata",
        scripted=("kill-controller", "kill-controller", "kill"),
        time_s=16.0,
        interval_s=2.0,
        rate=10.0,
    )
    assert stats["valid"], stats["summary"]
    assert stats["changes-ok"] > 50, stats["summary"]
    for anomaly in ("lost-topic", "resurrected-topic", "phantom-topic", "metadata-divergence"):
        assert stats[anomaly] == 0, stats["summary"]
    assert stats["split-brain"] == 0


@pytest.mark.slow
@LAB
async def test_five_nodes_under_ring_bridge_and_rolling_restart(tmp_path) -> None:
    stats = await short_run(
        tmp_path, nodes=5, scripted=("ring", "bridge", "rolling-restart"), time_s=20.0
    )
    assert stats["valid"], stats["summary"]
    assert stats["lost"] == 0 and stats["inconsistent-offsets"] == 0
    assert stats["acknowledged"] > 500, stats["summary"]
