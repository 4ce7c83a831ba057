"""Every checker fails on a hand-made history showing its anomaly, and passes a clean one."""

from __future__ import annotations

from jepsen_like.checkers import availability, check_cluster, check_queue

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
    ]
    found = availability(ops, [(fault_at, "kill")])
    assert found["windows"] == [{"fault": "kill", "at_s": 10.0, "window_ms": 2500}]
    assert found["per_second"][11]["info"] == 1
