"""The transactional workload's checker (see txn_workload.py for the history's shape).

Every value is written by exactly one transaction, so a value read names the
transaction that wrote it. Transactions end ok (committed), fail (certainly not
committed: aborted) or info (either; the final read tells which, and it must be all
or nothing).

| anomaly | definition |
|---|---|
| aborted-read | G1a: a value of a failed (aborted) transaction read by a read_committed consumer (a poll or the final read_committed read) |
| precommitted-read | a read_committed read that returned a value before its transaction's commit was invoked (or of a transaction whose commit never was) |
| torn-transaction | a committed or unknown transaction some of whose writes are in the final read_committed read and others not |
| lost-committed | a write of a committed transaction missing from the final read_committed read, though below the end that read reached |
| torn-offsets | a group's final committed offset is not the one sent by the last of its producer's transactions whose writes the final read_committed read shows (consume-transform-produce: the offsets and the writes of a transaction take effect together, or neither) |
| duplicated | one value at two offsets, across deliveries and every read (a retried batch written twice) |
| inconsistent-offsets | one (partition, offset) with two values |
| unexpected | a value read that no transaction wrote |
| nonmonotonic-poll | one reader's successive read_committed reads of a partition go back |
| stuck-lso | the final read_committed read never reached the high-water marks: a transaction left open (its LSO stalled) well past the transaction timeout |

Stats: transactions committed, aborted by intent, aborted after an error, unknown (and
how the unknown ones settled), and how long the final read_committed read waited for
the last stable offsets to reach the high-water marks.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import attrs

from jepsen_like.checkers import Finding, Verdict
from jepsen_like.history import FAIL, INFO, INVOKE, OK, Op

# Checked here, not named in checkers.ANOMALIES (other workloads tolerate duplicates):
# a run of this workload counts them as anomalies (see run.ListedVerdict).
TXN_EXTRA_ANOMALIES = ("duplicated", "stuck-lso")
FINAL_COMMITTED, FINAL_UNCOMMITTED = "final-read-committed", "final-read-uncommitted"


@attrs.define
class Txn:
    process: Any
    writes: list[tuple[int, str]]  # (partition, value)
    outcome: str = INFO  # ok, fail or info (never completed counts as info)
    intent: str = "commit"
    # History time of the first commit request; None: never asked; -1: not known
    # (a transaction that never completed).
    commit_invoked: int | None = -1
    offsets: dict[str, int] = attrs.field(factory=dict)  # value -> offset it was written at
    group: str | None = None
    group_offsets: dict[str, int] = attrs.field(factory=dict)  # partition -> sent offset


def _transactions(ops: list[Op]) -> dict[str, Txn]:
    """value -> its transaction."""
    by_value: dict[str, Txn] = {}
    open_by_process: dict[Any, Txn] = {}
    for op in ops:
        if op["f"] != "txn":
            continue
        if op["type"] == INVOKE:
            txn = Txn(
                process=op["process"],
                writes=[(int(p), v) for p, v in op["value"]["writes"]],
                intent=op["value"].get("intent", "commit"),
                group=op["value"].get("group"),
                group_offsets=dict(op["value"].get("offsets", {})),
            )
            open_by_process[op["process"]] = txn
            for _, value in txn.writes:
                by_value[value] = txn
            continue
        txn = open_by_process.pop(op["process"])
        txn.outcome = op["type"]
        txn.commit_invoked = op.get("commit_invoked")
        for _, offset, value in op["value"]["writes"]:
            if offset >= 0:
                txn.offsets[value] = offset
    return by_value


def _reads(op: Op) -> list[tuple[int, int, str]]:
    return [
        (int(partition), int(offset), value)
        for partition, pairs in op["value"].items()
        for offset, value in pairs
    ]


def check_txn(ops: list[Op]) -> Verdict:
    aborted_read = Finding("aborted-read")
    precommitted = Finding("precommitted-read")
    torn = Finding("torn-transaction")
    lost = Finding("lost-committed")
    duplicated = Finding("duplicated")
    inconsistent = Finding("inconsistent-offsets")
    unexpected = Finding("unexpected")
    nonmonotonic = Finding("nonmonotonic-poll")
    stuck = Finding("stuck-lso")
    torn_offsets = Finding("torn-offsets")

    txns = _transactions(ops)
    at: dict[tuple[int, int], str] = {}
    places: dict[str, set[tuple[int, int]]] = defaultdict(set)

    def place(partition: int, offset: int, value: str) -> None:
        known = at.setdefault((partition, offset), value)
        if known != value:
            inconsistent.add({"partition": partition, "offset": offset, "values": [known, value]})
        places[value].add((partition, offset))

    for value, txn in txns.items():
        if value in txn.offsets:
            partition = next(p for p, v in txn.writes if v == value)
            place(partition, txn.offsets[value], value)

    def committed_read(op: Op, partition: int, offset: int, value: str, when: str) -> None:
        txn = txns.get(value)
        if txn is None:
            unexpected.add({"partition": partition, "offset": offset, "value": value, "in": when})
            return
        example = {"value": value, "partition": partition, "offset": offset, "in": when}
        if txn.outcome == FAIL:
            aborted_read.add({**example, "transaction_of": txn.process, "intent": txn.intent})
        elif txn.commit_invoked is None or (
            txn.commit_invoked != -1 and op["time"] < txn.commit_invoked
        ):
            precommitted.add(
                {
                    **example,
                    "read_at_s": round(op["time"] / 1e9, 3),
                    "commit_invoked_at_s": None
                    if txn.commit_invoked is None
                    else round(txn.commit_invoked / 1e9, 3),
                }
            )

    last_by_reader: dict[tuple[Any, int], int] = {}
    final_committed: Op | None = None
    final_uncommitted: Op | None = None
    polled = 0
    for op in ops:
        if op["type"] != OK:
            continue
        if op["f"] == "poll" and op.get("isolation") == "read_committed":
            for partition, offset, value in _reads(op):
                polled += 1
                place(partition, offset, value)
                committed_read(op, partition, offset, value, "poll")
                key = (op["process"], partition)
                previous = last_by_reader.get(key)
                if previous is not None and offset <= previous:
                    nonmonotonic.add(
                        {"process": op["process"], "partition": partition, "after": previous}
                        | {"got": offset}
                    )
                last_by_reader[key] = offset
        elif op["f"] == FINAL_COMMITTED:
            final_committed = op
        elif op["f"] == FINAL_UNCOMMITTED:
            final_uncommitted = op
    if final_uncommitted is not None:
        for partition, offset, value in _reads(final_uncommitted):
            place(partition, offset, value)
            if value not in txns:
                unexpected.add({"partition": partition, "offset": offset, "value": value})

    settled = {"committed": 0, "aborted": 0, "torn": 0}
    waited_s = None
    groups_checked = 0
    if final_committed is not None:
        visible: set[str] = set()
        for partition, offset, value in _reads(final_committed):
            place(partition, offset, value)
            committed_read(final_committed, partition, offset, value, "final")
            visible.add(value)
        ends = {int(p): int(o) for p, o in final_committed.get("ends", {}).items()}
        complete = final_committed.get("complete", True)
        waited_s = final_committed.get("waited_s")
        if not complete:
            stuck.add({"ends": ends, "waited_s": waited_s})
        _check_visibility(txns, visible, ends, complete, torn, lost, settled)
        final_offsets = next(
            (op["value"] for op in reversed(ops) if op["f"] == "final-committed-offsets"), None
        )
        if final_offsets is not None and complete:
            _check_offsets(ops, txns, visible, final_offsets, torn_offsets)
            groups_checked = len(final_offsets)

    for value, where in places.items():
        if len(where) > 1:
            duplicated.add({"value": value, "at": sorted(where)})

    distinct = {id(t): t for t in txns.values()}.values()
    counts: dict[str, int] = defaultdict(int)
    for txn in distinct:
        if txn.outcome == FAIL:
            counts["aborted" if txn.intent == "abort" else "failed-then-aborted"] += 1
        else:
            counts["committed" if txn.outcome == OK else "unknown"] += 1
    findings = (
        aborted_read,
        precommitted,
        torn,
        lost,
        torn_offsets,
        duplicated,
        inconsistent,
        unexpected,
        nonmonotonic,
        stuck,
    )
    return Verdict(
        findings={f.name: f for f in findings},
        stats={
            "transactions": len(distinct),
            "committed": counts["committed"],
            "aborted": counts["aborted"],
            "failed-then-aborted": counts["failed-then-aborted"],
            "unknown": counts["unknown"],
            "unknown-settled-committed": settled["committed"],
            "unknown-settled-aborted": settled["aborted"],
            "read-committed-polled": polled,
            "final-lso-wait-s": waited_s,
            "final-read": final_committed is not None,
            "groups-checked": groups_checked,
            "producers-stuck": sum(1 for op in ops if op["f"] == "producer-stuck"),
        },
    )


def _check_visibility(
    txns: dict[str, Txn],
    visible: set[str],
    ends: dict[int, int],
    complete: bool,
    torn: Finding,
    lost: Finding,
    settled: dict[str, int],
) -> None:
    """Committed and unknown transactions against the final read_committed read."""
    seen_txns: set[int] = set()
    for txn in txns.values():
        if id(txn) in seen_txns or txn.outcome == FAIL:
            continue
        seen_txns.add(id(txn))
        shown = [(p, v) for p, v in txn.writes if v in visible]
        # A write past the end an incomplete read reached is unknown, not missing.
        missing = [
            (p, v)
            for p, v in txn.writes
            if v not in visible and (complete or txn.offsets.get(v, -1) < ends.get(p, 0))
        ]
        if shown and missing:
            torn.add(
                {
                    "process": txn.process,
                    "outcome": txn.outcome,
                    "visible": shown,
                    "missing": missing,
                }
            )
        if txn.outcome == OK:
            for partition, value in missing:
                lost.add({"partition": partition, "value": value, "offset": txn.offsets.get(value)})
        elif txn.outcome == INFO:
            if shown and not missing:
                settled["committed"] += 1
            elif not shown:
                settled["aborted"] += 1


def _check_offsets(
    ops: list[Op],
    txns: dict[str, Txn],
    visible: set[str],
    final_offsets: dict[str, dict[str, int | None]],
    torn_offsets: Finding,
) -> None:
    """Each group's committed offsets are those of the last transaction (in its
    producer's order) whose writes are visible, or none if none is."""
    last: dict[str, Txn] = {}
    for op in ops:  # invocations, in each producer's order
        if op["f"] == "txn" and op["type"] == INVOKE and op["value"].get("group"):
            txn = txns[op["value"]["writes"][0][1]]
            if txn.outcome != FAIL and all(v in visible for _, v in txn.writes):
                assert txn.group is not None
                last[txn.group] = txn
    for group, committed in final_offsets.items():
        took_effect = last.get(group)
        for partition, offset in committed.items():
            expected = None if took_effect is None else took_effect.group_offsets.get(partition)
            if offset != expected:
                torn_offsets.add(
                    {
                        "group": group,
                        "partition": int(partition),
                        "committed": offset,
                        "expected": expected,
                        "last_visible_transaction_of": None
                        if took_effect is None
                        else took_effect.process,
                    }
                )
