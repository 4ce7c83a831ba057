"""Every checker fails on a hand-made history showing its anomaly, and passes a clean one."""

from __future__ import annotations

from typing import Any

import pytest

from jepsen_like.checkers import availability, check_cluster, check_metadata, check_queue

T = 0


def op(process, type_, f, value, **extra):
    global T
    T += 1_000_000
    return {"process": process, "type": type_, "f": f, "value": value, "time": T, **extra}


def send(process, partition, offset, value, outcome="ok"):
    done = [partition, offset, value] if outcome == "ok" else [partition, value]
    return [op(process, "invoke", "send", [partition, value]), op(process, outcome, "send", done)]


def read(pairs, process="final", f="final-read", partition=0):
    return op(process, "ok", f, {str(partition): pairs})


def clean():
    return [
        *send(1, 0, 0, "a"),
        *send(1, 0, 1, "b"),
        *send(2, 0, 2, "c"),
        read([[0, "a"], [1, "b"], [2, "c"]]),
    ]


def test_a_clean_history_is_valid() -> None:
    verdict = check_queue(clean())
    assert verdict.valid, verdict.summary()
    assert verdict.stats["acknowledged"] == 3 and verdict.stats["read"] == 3


def test_lost_write() -> None:
    history = [*send(1, 0, 0, "a"), *send(1, 0, 1, "b"), read([[0, "a"]])]
    verdict = check_queue(history)
    assert not verdict.valid and verdict.findings["lost"].count == 1
    assert verdict.findings["lost"].examples[0]["value"] == "b"


def test_an_indeterminate_send_that_never_appears_is_not_lost() -> None:
    history = [*send(1, 0, 0, "a"), *send(1, 0, None, "b", outcome="info"), read([[0, "a"]])]
    assert check_queue(history).valid


def test_inconsistent_offsets_between_an_ack_and_a_read() -> None:
    history = [*send(1, 0, 0, "a"), *send(2, 0, 1, "b"), read([[0, "a"], [1, "x"]])]
    history.insert(0, op(9, "invoke", "send", [0, "x"]))
    verdict = check_queue(history)
    assert verdict.findings["inconsistent-offsets"].count == 1
    assert not verdict.valid


def test_duplicates_are_counted_apart_and_flagged_without_a_retry() -> None:
    history = [*send(1, 0, 0, "a"), *send(1, 0, 1, "b"), read([[0, "a"], [1, "b"], [2, "a"]])]
    verdict = check_queue(history)
    assert verdict.findings["duplicated"].count == 1
    assert verdict.valid  # a duplicate alone is not an anomaly without idempotence...
    assert verdict.stats["duplicates-without-a-retry"] == 1  # ...but this one had no retry
    retried = [*history[:2], *send(1, 0, 2, "a"), *history[2:]]
    assert check_queue(retried).stats["duplicates-without-a-retry"] == 0


def test_nonmonotonic_poll() -> None:
    history = [
        *clean()[:-1],
        read([[0, "a"], [1, "b"]], process=7, f="poll"),
        read([[1, "b"]], process=7, f="poll"),
        read([[0, "a"], [1, "b"], [2, "c"]]),
    ]
    verdict = check_queue(history)
    assert verdict.findings["nonmonotonic-poll"].count == 1


def test_reordered_acknowledgements_of_one_producer() -> None:
    history = [*send(1, 0, 5, "a"), *send(1, 0, 3, "b"), read([[3, "b"], [5, "a"]])]
    assert check_queue(history).findings["reordered"].count == 1


def test_unexpected_value() -> None:
    history = [*send(1, 0, 0, "a"), read([[0, "a"], [1, "ghost"]])]
    verdict = check_queue(history)
    assert verdict.findings["unexpected"].count == 1 and not verdict.valid


def test_split_brain_and_leader_epoch_regression() -> None:
    def controller(node, epoch):
        return op("cluster", "ok", "controller", {"node": node, "epoch": epoch})

    def leader(epoch):
        return op(
            "cluster",
            "ok",
            "partition-leader",
            {"topic": "t", "partition": 0, "leader_epoch": epoch},
        )

    good = [controller(1, 1), controller(2, 2), leader(0), leader(1), leader(1)]
    assert check_cluster(good).valid
    bad = [*good, controller(3, 2), leader(0)]
    verdict = check_cluster(bad)
    assert verdict.findings["split-brain"].count == 1
    assert verdict.findings["leader-epoch-regression"].count == 1


def test_unavailability_window_after_a_fault() -> None:
    fault_at = 10_000_000_000
    ops = [
        {
            "process": 1,
            "type": "ok",
            "f": "send",
            "value": [0, 0, "a"],
            "time": 9_000_000_000,
            "invoked": 8_900_000_000,
        },
        {
            "process": 1,
            "type": "info",
            "f": "send",
            "value": [0, "b"],
            "time": 11_000_000_000,
            "invoked": 10_100_000_000,
        },
        {
            "process": 1,
            "type": "ok",
            "f": "send",
            "value": [0, 1, "c"],
            "time": 12_500_000_000,
            "invoked": 12_000_000_000,
        },
        # Partition 1 was led elsewhere and stalled longer.
        {
            "process": 2,
            "type": "ok",
            "f": "send",
            "value": [1, 7, "d"],
            "time": 14_000_000_000,
            "invoked": 13_900_000_000,
        },
    ]
    found = availability(ops, [(fault_at, "kill")])
    assert found["windows"] == [
        {
            "fault": "kill",
            "at_s": 10.0,
            "window_ms": 2500,
            "per_partition_ms": {0: 2500, 1: 4000},
        }
    ]
    assert found["per_second"][11]["info"] == 1


def _change(f: str, type_: str, topic: str, count: int | None) -> dict[str, Any]:
    return {"process": "meta-0", "type": type_, "f": f, "value": [topic, count], "time": 0}


def _final(views: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {"process": "final", "type": "ok", "f": "final-topics", "value": views, "time": 1}


def test_metadata_checker_passes_a_consistent_history() -> None:
    ops = [
        _change("create", "ok", "m0-0", 2),
        _change("add-partitions", "ok", "m0-0", 3),
        _change("create", "info", "m0-1", 1),  # maybe: either way is fine
        _change("create", "fail", "m0-2", 1),
        _change("create", "ok", "m0-3", 1),
        _change("delete", "info", "m0-3", None),  # maybe deleted: either way
        _change("create", "ok", "m0-4", 1),
        _change("delete", "ok", "m0-4", None),
        _change("add-partitions", "info", "m0-0", 4),
    ]
    views = {"1": {"m0-0": 4, "m0-1": 1}, "2": {"m0-0": 4, "m0-1": 1}}
    verdict = check_metadata([*ops, _final(views)])
    assert verdict.valid, verdict.summary()
    assert verdict.stats["changes-ok"] == 5


@pytest.mark.parametrize(
    ("ops", "views", "anomaly"),
    [
        ([_change("create", "ok", "m0-0", 1)], {"1": {}}, "lost-topic"),
        (
            [_change("create", "ok", "m0-0", 1), _change("delete", "ok", "m0-0", None)],
            {"1": {"m0-0": 1}},
            "resurrected-topic",
        ),
        ([_change("create", "fail", "m0-0", 1)], {"1": {"m0-0": 1}}, "phantom-topic"),
        ([], {"1": {"m7-0": 1}}, "phantom-topic"),
        (
            [_change("create", "ok", "m0-0", 1), _change("add-partitions", "ok", "m0-0", 2)],
            {"1": {"m0-0": 1}},
            "lost-partitions",
        ),
        (
            [_change("create", "ok", "m0-0", 1), _change("add-partitions", "fail", "m0-0", 2)],
            {"1": {"m0-0": 2}},
            "phantom-partitions",
        ),
        (
            [_change("create", "ok", "m0-0", 1), _change("add-partitions", "info", "m0-0", 2)],
            {"1": {"m0-0": 1}, "2": {"m0-0": 2}},
            "metadata-divergence",
        ),
        ([_change("create", "ok", "m0-0", 1)], {}, "metadata-divergence"),
    ],
)
def test_metadata_checker_finds_each_anomaly(
    ops: list[dict[str, Any]], views: dict[str, dict[str, int]], anomaly: str
) -> None:
    verdict = check_metadata([*ops, _final(views)])
    assert not verdict.valid
    assert verdict.findings[anomaly].count == 1, verdict.summary()
    others = [n for n, f in verdict.findings.items() if f.count and n != anomaly]
    assert others == [], verdict.summary()


def _timed(f: str, type_: str, topic: str, began_ms: int, ended_ms: int, via: int) -> dict:
    return {
        "process": "meta-0",
        "type": type_,
        "f": f,
        "value": [topic, 1],
        "time": ended_ms * 1_000_000,
        "invoked": began_ms * 1_000_000,
        "via": via,
    }


def _fault(f: str, node: int, phase: str, at_ms: int) -> dict[str, Any]:
    return {
        "process": "nemesis",
        "type": "info",
        "f": f,
        "value": {"node": node, "phase": phase},
        "time": at_ms * 1_000_000,
    }


def test_stale_admin_a_change_through_a_live_broker_outlasts_twice_the_request_timeout() -> None:
    ops = [
        _fault("pause", 1, "start", 1_000),  # the active controller, say
        # Through broker 2, which was never paused: 3.5 s > 2 x 1 s.
        _timed("create", "info", "m0-0", 1_100, 4_600, via=2),
        # Through the paused broker itself: it cannot answer; not stale-admin.
        _timed("create", "info", "m0-1", 1_100, 6_100, via=1),
        _fault("pause", 1, "heal", 5_000),
        # Quick enough: 1.9 s.
        _timed("create", "ok", "m0-2", 5_100, 7_000, via=3),
        # During a network split a broker may be cut off from every controller.
        _fault("halves", 3, "start", 8_000),
        _timed("create", "info", "m0-3", 8_100, 13_100, via=2),
        _fault("halves", 3, "heal", 14_000),
    ]
    views = {"2": {"m0-0": 1, "m0-2": 1}, "3": {"m0-0": 1, "m0-2": 1}}
    verdict = check_metadata([*ops, _final(views)], request_timeout_ms=1000)
    assert not verdict.valid
    stale = verdict.findings["stale-admin"]
    assert stale.count == 1, verdict.summary()
    assert stale.examples[0]["topic"] == "m0-0" and stale.examples[0]["took_ms"] == 3500
    others = [n for n, f in verdict.findings.items() if f.count and n != "stale-admin"]
    assert others == [], verdict.summary()
    # Without a request timeout the latency is not judged.
    assert check_metadata([*ops, _final(views)]).valid
