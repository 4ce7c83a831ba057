"""The subscribe workload's checker on small histories, and real runs of the workload.

The checker tests are pure (histories written by hand): each anomaly is shown found in
a history that has it and not in the same history without it. The runs are real
processes (a 3-node cluster, 3 group members) and belong to the lab step.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from jepsen_like.group_checkers import check_subscribe, rebalance_windows

S = 1_000_000_000  # history times are nanoseconds


def op(process: str, f: str, value: Any, at_s: float, type_: str = "ok", **extra: Any) -> dict:
    return {
        "process": process,
        "type": type_,
        "f": f,
        "value": value,
        "time": int(at_s * S),
        **extra,
    }


def assigned(member: str, generation: int, partitions: list[int], at_s: float) -> dict:
    value = {"generation": generation, "member_id": f"{member}-id", "partitions": partitions}
    return op(member, "group-assigned", value, at_s)


def commit(member: str, partition: int, offset: int, invoked_s: float, done_s: float) -> dict:
    value = {"generation": 1, "offsets": {str(partition): offset}}
    return op(member, "group-commit", value, done_s, invoked=int(invoked_s * S))


def poll(member: str, partition: int, pairs: list[list[Any]], at_s: float) -> dict:
    return op(member, "group-poll", {"generation": 1, "records": {str(partition): pairs}}, at_s)


def send(partition: int, offset: int, value: str, at_s: float) -> dict:
    return op("0", "send", [partition, offset, value], at_s, invoked=int((at_s - 0.01) * S))


def healthy() -> list[dict]:
    """Two members share two partitions; member a leaves, b takes partition 0 over from
    a's last commit and goes on."""
    return [
        send(0, 0, "v0", 0.1),
        send(0, 1, "v1", 0.2),
        send(1, 0, "w0", 0.3),
        assigned("a", 1, [0], 1.0),
        assigned("b", 1, [1], 1.0),
        poll("a", 0, [[0, "v0"]], 1.1),
        commit("a", 0, 1, 1.2, 1.3),
        poll("b", 1, [[0, "w0"]], 1.1),
        commit("b", 1, 1, 1.2, 1.3),
        op("b", "group-revoked", {"generation": 1, "partitions": [1]}, 2.0),
        assigned("b", 2, [0, 1], 2.5),
        poll("b", 0, [[1, "v1"]], 2.6),
        commit("b", 0, 2, 2.7, 2.8),
    ]


def findings(ops: list[dict], partitions: int = 2) -> dict[str, int]:
    verdict = check_subscribe(ops, partitions=partitions)
    return {name: f.count for name, f in verdict.findings.items() if f.count}


def test_a_healthy_history_is_valid() -> None:
    verdict = check_subscribe(healthy(), partitions=2)
    assert verdict.valid, verdict.summary()
    assert verdict.stats["rebalances"] == 1


def test_a_zombie_commit_after_the_new_owner_moved_on_is_a_regression() -> None:
    ops = [*healthy(), commit("a", 0, 1, 3.0, 3.1)]  # a wakes up and commits its old position
    assert findings(ops) == {"commit-regression": 1}


def test_overlapping_commits_are_not_ordered() -> None:
    # Invoked before the higher commit completed: the coordinator may have taken it first.
    ops = [*healthy(), commit("a", 0, 1, 2.75, 2.9)]
    assert findings(ops) == {}


def test_a_new_owner_starting_below_a_completed_commit_is_a_regression() -> None:
    ops = healthy()
    ops[11] = poll("b", 0, [[0, "v0"], [1, "v1"]], 2.6)  # b re-reads from 0: a's commit lost
    assert findings(ops) == {"commit-regression": 1}


def test_a_record_below_the_committed_offset_that_nobody_read_is_lost() -> None:
    ops = healthy()
    ops[11] = poll("b", 0, [], 2.6)  # b never reads v1 yet commits past it
    assert findings(ops) == {"group-lost": 1}


def test_two_owners_in_one_generation_and_an_unowned_partition() -> None:
    ops = healthy()
    ops[10] = assigned("b", 2, [1], 2.5)
    ops.append(assigned("a", 2, [1], 2.5))
    assert findings(ops, partitions=2) == {"double-owned": 1, "unowned-partition": 1}


def test_rebalance_windows_run_from_the_first_revocation_to_full_coverage() -> None:
    (window,) = rebalance_windows(sorted(healthy(), key=lambda o: o["time"]), 2)
    assert (window["from_generation"], window["to_generation"], window["ms"]) == (1, 2, 500)


# ---------------------------------------------------------------------- real runs


def _run(tmp_path: Any, faults: tuple[str, ...], planted: str | None) -> Any:
    from jepsen_like.run import RunConfig, run

    config = RunConfig(
        out=os.path.join(str(tmp_path), "run"),
        workload="subscribe",
        faults=faults,
        time_s=30.0,
        rate=150.0,
        interval_s=3.0,
        fault_duration_s=9.0,  # a pause outlives the 6 s session: the member is a zombie
        seed=1,
        planted_bug=planted,
        report=False,
    )
    return trio.run(run, config)


@pytest.mark.lab
def test_a_group_under_member_and_coordinator_faults_is_valid(tmp_path: Any) -> None:
    result = _run(tmp_path, ("kill-member", "pause-member", "kill-coordinator"), None)
    assert result.valid, result.summary
    assert result.stats["group-lost"] == 0


@pytest.mark.lab
def test_the_planted_commit_ignores_generation_is_caught(tmp_path: Any) -> None:
    result = _run(tmp_path, ("pause-member",), "commit-ignores-generation")
    assert not result.valid, result.summary
    assert result.stats["commit-regression"] > 0, result.summary
