"""The transactional checker on hand-written histories (each anomaly found when
present, not when absent), and real runs (lab): the txn workload under leader and
coordinator kills, and the idempotent librdkafka queue with 0 duplicates."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from jepsen_like.history import FAIL, INFO, INVOKE, OK, Op
from jepsen_like.run import ListedVerdict, RunConfig, run
from jepsen_like.txn_checkers import TXN_EXTRA_ANOMALIES, check_txn

S = 1_000_000_000  # history time is nanoseconds


class Builder:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, process: Any, type_: str, f: str, value: Any, time: float, **extra: Any) -> None:
        self.ops.append(
            {"process": process, "type": type_, "f": f, "value": value, "time": int(time * S)}
            | extra
        )

    def txn(
        self,
        process: int,
        writes: list[tuple[int, int, str]],
        outcome: str,
        *,
        at: float,
        commit_at: float | None = None,
        intent: str = "commit",
        group_offset: int | None = None,
    ) -> None:
        """A transaction invoked at `at`, its commit asked for at `commit_at`, done 1 s
        later; with `group_offset`, it sends that offset of partition 0 for group g<process>."""
        asked: dict[str, Any] = {"writes": [[p, v] for p, _, v in writes], "intent": intent}
        if group_offset is not None:
            asked |= {"group": f"g{process}", "offsets": {"0": group_offset}}
        self.op(process, INVOKE, "txn", asked, at)
        self.op(
            process,
            outcome,
            "txn",
            {"writes": [list(w) for w in writes]},
            (commit_at or at) + 1,
            intent=intent,
            commit_invoked=None if commit_at is None else int(commit_at * S),
        )

    def poll(self, reads: dict[int, list[tuple[int, str]]], at: float, reader: int = 9) -> None:
        value = {str(p): [list(r) for r in rs] for p, rs in reads.items()}
        self.op(reader, OK, "poll", value, at, isolation="read_committed")

    def final(
        self,
        committed: dict[int, list[tuple[int, str]]],
        uncommitted: dict[int, list[tuple[int, str]]] | None = None,
        *,
        complete: bool = True,
        ends: dict[int, int] | None = None,
    ) -> None:
        def shape(reads: dict[int, list[tuple[int, str]]]) -> dict[str, list[list[Any]]]:
            return {str(p): [list(r) for r in rs] for p, rs in reads.items()}

        self.op(
            "final",
            OK,
            "final-read-uncommitted",
            shape(uncommitted or committed),
            100,
            complete=True,
        )
        self.op(
            "final",
            OK,
            "final-read-committed",
            shape(committed),
            101,
            complete=complete,
            ends={str(p): o for p, o in (ends or {}).items()},
            waited_s=0.1,
        )


def healthy() -> Builder:
    """A committed transaction over partitions 0 and 1, an aborted one over 1 and 2."""
    history = Builder()
    history.txn(0, [(0, 0, "a0"), (1, 0, "a1")], OK, at=1, commit_at=2)
    history.txn(1, [(1, 1, "b1"), (2, 0, "b2")], FAIL, at=1, intent="abort")
    history.poll({0: [(0, "a0")], 1: [(0, "a1")]}, at=4)
    history.final(
        {0: [(0, "a0")], 1: [(0, "a1")], 2: []},
        {0: [(0, "a0")], 1: [(0, "a1"), (1, "b1")], 2: [(0, "b2")]},
    )
    return history


def anomalies(history: Builder) -> dict[str, int]:
    verdict = check_txn(history.ops)
    return {name: f.count for name, f in verdict.findings.items() if f.count}


def test_a_healthy_history_has_no_anomaly() -> None:
    verdict = check_txn(healthy().ops)
    assert anomalies(healthy()) == {}
    assert verdict.valid
    assert verdict.stats["committed"] == 1 and verdict.stats["aborted"] == 1


def test_an_aborted_value_read_committed_is_an_aborted_read() -> None:
    history = healthy()
    history.poll({2: [(0, "b2")]}, at=5)
    assert anomalies(history) == {"aborted-read": 1}
    assert not check_txn(history.ops).valid


def test_an_aborted_value_in_the_final_read_committed_is_an_aborted_read() -> None:
    history = Builder()
    history.txn(1, [(1, 0, "b1"), (2, 0, "b2")], FAIL, at=1, intent="abort")
    history.final({1: [(0, "b1")], 2: []}, {1: [(0, "b1")], 2: [(0, "b2")]})
    assert anomalies(history) == {"aborted-read": 1}


def test_a_read_before_the_commit_was_asked_for_is_precommitted() -> None:
    history = healthy()
    history.poll({0: [(0, "a0")]}, at=1.5, reader=8)  # commit invoked at 2
    assert anomalies(history) == {"precommitted-read": 1}


def test_a_read_of_a_transaction_whose_commit_never_was_asked_is_precommitted() -> None:
    history = Builder()
    history.txn(0, [(0, 0, "c0"), (1, 0, "c1")], INFO, at=1)  # commit never invoked
    history.final({0: [(0, "c0")], 1: [(0, "c1")]})
    assert anomalies(history) == {"precommitted-read": 2}


def test_a_committed_transaction_half_visible_is_torn_and_lost() -> None:
    history = Builder()
    history.txn(0, [(0, 0, "a0"), (1, 0, "a1")], OK, at=1, commit_at=2)
    history.final({0: [(0, "a0")], 1: []}, {0: [(0, "a0")], 1: [(0, "a1")]})
    assert anomalies(history) == {"torn-transaction": 1, "lost-committed": 1}


def test_a_committed_transaction_wholly_missing_is_lost_not_torn() -> None:
    history = Builder()
    history.txn(0, [(0, 0, "a0"), (1, 0, "a1")], OK, at=1, commit_at=2)
    history.final({0: [], 1: []})
    assert anomalies(history) == {"lost-committed": 2}


def test_an_unknown_transaction_may_go_either_way_but_not_half() -> None:
    whole = Builder()
    whole.txn(0, [(0, 0, "a0"), (1, 0, "a1")], INFO, at=1, commit_at=2)
    whole.final({0: [(0, "a0")], 1: [(0, "a1")]})
    assert anomalies(whole) == {}
    assert check_txn(whole.ops).stats["unknown-settled-committed"] == 1
    gone = Builder()
    gone.txn(0, [(0, 0, "a0"), (1, 0, "a1")], INFO, at=1, commit_at=2)
    gone.final({0: [], 1: []})
    assert anomalies(gone) == {}
    assert check_txn(gone.ops).stats["unknown-settled-aborted"] == 1
    half = Builder()
    half.txn(0, [(0, 0, "a0"), (1, 0, "a1")], INFO, at=1, commit_at=2)
    half.final({0: [(0, "a0")], 1: []})
    assert anomalies(half) == {"torn-transaction": 1}


def test_one_value_at_two_offsets_is_duplicated() -> None:
    history = Builder()
    history.txn(0, [(0, 0, "a0"), (1, 0, "a1")], OK, at=1, commit_at=2)
    history.final({0: [(0, "a0"), (1, "a0")], 1: [(0, "a1")]})
    assert anomalies(history) == {"duplicated": 1}
    verdict = check_txn(history.ops)
    listed = ListedVerdict(
        findings=verdict.findings, stats=verdict.stats, anomalies=TXN_EXTRA_ANOMALIES
    )
    assert verdict.valid and not listed.valid  # an anomaly of this workload's runs


def test_a_final_read_short_of_the_high_water_marks_is_a_stuck_lso() -> None:
    history = Builder()
    history.txn(0, [(0, 0, "a0"), (1, 5, "a1")], OK, at=1, commit_at=2)
    # The read stopped at offset 3 of partition 1: a1 (offset 5) is unknown, not lost.
    history.final({0: [(0, "a0")], 1: []}, complete=False, ends={0: 1, 1: 3})
    assert anomalies(history) == {"stuck-lso": 1}


def test_a_read_nobody_wrote_is_unexpected_and_a_poll_going_back_nonmonotonic() -> None:
    history = healthy()
    history.poll({0: [(0, "a0")]}, at=6)  # reader 9 read offset 0 of p0 at 4 already
    history.poll({1: [(7, "zz")]}, at=7)
    assert anomalies(history) == {"nonmonotonic-poll": 1, "unexpected": 1}


def consume_transform_produce(committed: int | None) -> Builder:
    """Producer 0: transaction 1 committed (offset 1), transaction 2 aborted (offset 2);
    the group's final committed offset is `committed`."""
    history = Builder()
    history.txn(0, [(0, 0, "a0"), (1, 0, "a1")], OK, at=1, commit_at=2, group_offset=1)
    history.txn(0, [(1, 1, "b1"), (2, 0, "b2")], FAIL, at=4, intent="abort", group_offset=2)
    history.final(
        {0: [(0, "a0")], 1: [(0, "a1")], 2: []},
        {0: [(0, "a0")], 1: [(0, "a1"), (1, "b1")], 2: [(0, "b2")]},
    )
    history.op("final", OK, "final-committed-offsets", {"g0": {"0": committed}}, 102)
    return history


def test_offsets_committed_with_their_transaction_only() -> None:
    assert anomalies(consume_transform_produce(1)) == {}
    assert check_txn(consume_transform_produce(1).ops).stats["groups-checked"] == 1


def test_an_aborted_transactions_offsets_committed_are_torn_offsets() -> None:
    assert anomalies(consume_transform_produce(2)) == {"torn-offsets": 1}
    assert not check_txn(consume_transform_produce(2).ops).valid


def test_a_committed_transactions_offsets_missing_are_torn_offsets() -> None:
    assert anomalies(consume_transform_produce(None)) == {"torn-offsets": 1}


# ---------------------------------------------------------------- real runs


def _real(tmp_path: Any, **settings: Any) -> Any:
    pytest.importorskip("confluent_kafka")
    config = RunConfig(
        out=str(tmp_path / "run"),
        time_s=20.0,
        interval_s=4.0,
        fault_duration_s=3.0,
        seed=3,
        **settings,
    )
    return trio.run(run, config)


@pytest.mark.lab
@pytest.mark.parametrize("client", ["confluent-kafka", "pykraft"])
def test_the_txn_workload_under_leader_and_coordinator_kills_is_valid(
    tmp_path: Any, client: str
) -> None:
    result = _real(
        tmp_path,
        workload="txn",
        client=client,
        rate=10.0,
        producers=3,
        faults=("kill-leader", "kill-coordinator"),
    )
    assert result.valid, result.summary
    assert result.stats["committed"] > 10 and result.stats["aborted"] > 0, result.summary
    assert result.stats["final-read"] and result.stats["groups-checked"] == 3, result.summary


@pytest.mark.lab
def test_the_idempotent_confluent_queue_through_leader_kills_has_no_duplicate(
    tmp_path: Any,
) -> None:
    result = _real(
        tmp_path,
        client="confluent-kafka",
        idempotent=True,
        rate=200.0,
        faults=("kill", "kill-leader"),
    )
    assert result.valid, result.summary
    assert result.stats["duplicated"] == 0 and result.stats["ok"] > 500, result.summary
