"""The subscribe workload's checker: a consumer group under faults, at least once.

Members' events come from `jepsen_like.group_member` processes (see its docstring) as
history operations of process `member-N`: `group-assigned`, `group-revoked`,
`group-poll` and `group-commit` (ok, fail or info, with `invoked`). Sends and the
final read are the queue workload's.

| anomaly | definition |
|---|---|
| group-lost | an acknowledged send below its partition's final committed offset that no member ever polled (the group committed past a record it never read) |
| commit-regression | the group's committed position of a partition went back: an ok commit invoked after another ok commit of that partition completed names a lower offset, or a member newly assigned a partition starts reading below an ok commit that completed before it was assigned |
| double-owned | two members hold one partition in one generation |
| unowned-partition | after the last rebalance some partition has no owner |

Not anomalies, reported: rebalance windows (from the first revocation of a stable
generation to the first moment a later generation's assignments cover every
partition), commits refused (ILLEGAL_GENERATION and the like are how a zombie is told
off), and how far the group got (final committed offsets against the log end).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from jepsen_like.checkers import Finding, Verdict
from jepsen_like.history import FAIL, OK, Op

ASSIGNED, REVOKED, POLL, COMMIT = "group-assigned", "group-revoked", "group-poll", "group-commit"


def check_subscribe(ops: list[Op], *, partitions: int) -> Verdict:
    ops = sorted(ops, key=lambda op: op["time"])  # members' events arrive late, timed right
    lost = Finding("group-lost")
    regression = Finding("commit-regression")
    double = Finding("double-owned")
    unowned = Finding("unowned-partition")

    final_committed = _final_committed(ops)
    polled: set[tuple[int, str]] = set()
    for op in ops:
        if op["f"] == POLL:
            for partition, pairs in op["value"]["records"].items():
                polled.update((int(partition), value) for _, value in pairs)
    for op in ops:
        if op["f"] == "send" and op["type"] == OK:
            partition, offset, value = op["value"]
            if offset < final_committed.get(partition, 0) and (partition, value) not in polled:
                lost.add({"partition": partition, "offset": offset, "value": value})

    _check_commit_order(ops, regression)
    owners: dict[tuple[int, int], str] = {}  # (generation, partition) -> member id
    for op in ops:
        if op["f"] != ASSIGNED:
            continue
        generation, member = op["value"]["generation"], op["value"]["member_id"]
        for partition in op["value"]["partitions"]:
            holder = owners.setdefault((generation, partition), member)
            if holder != member:
                double.add(
                    {"generation": generation, "partition": partition, "members": [holder, member]}
                )

    windows = rebalance_windows(ops, partitions)
    last = _last_assignment(ops)
    if last is not None:
        generation, covered = last
        missing = sorted(set(range(partitions)) - covered)
        if missing:
            unowned.add({"generation": generation, "partitions": missing})
    refused = sum(1 for op in ops if op["f"] == COMMIT and op["type"] == FAIL)
    return Verdict(
        findings={f.name: f for f in (lost, regression, double, unowned)},
        stats={
            "group-commits-ok": sum(1 for op in ops if op["f"] == COMMIT and op["type"] == OK),
            "group-commits-refused": refused,
            "group-final-committed": {str(p): o for p, o in sorted(final_committed.items())},
            "rebalances": len(windows),
            "rebalance-ms": [w["ms"] for w in windows],
        },
    )


def _final_committed(ops: list[Op]) -> dict[int, int]:
    """The last committed offsets as the workload read them at the end, else the
    highest ok commit per partition."""
    for op in reversed(ops):
        if op["f"] == "group-final-committed" and op["type"] == OK:
            return {int(p): int(o) for p, o in op["value"].items()}
    best: dict[int, int] = {}
    for op in ops:
        if op["f"] == COMMIT and op["type"] == OK:
            for partition, offset in op["value"]["offsets"].items():
                best[int(partition)] = max(best.get(int(partition), 0), int(offset))
    return best


def _check_commit_order(ops: list[Op], regression: Finding) -> None:
    # Per partition, ok commits in the order they completed: (completed, invoked, offset, who).
    done: dict[int, list[tuple[int, int, int, Any]]] = defaultdict(list)
    for op in ops:
        if op["f"] == COMMIT and op["type"] == OK:
            for partition, offset in op["value"]["offsets"].items():
                done[int(partition)].append((op["time"], op["invoked"], int(offset), op["process"]))
    for partition, commits in done.items():
        commits.sort()
        highest: tuple[int, int, Any] | None = None  # (offset, completed, who) seen completed
        pending = sorted(commits, key=lambda c: c[1])  # by invocation
        finished = iter(commits)
        upcoming = next(finished, None)
        for completed, invoked, offset, who in pending:
            # Every commit that completed before this one was invoked bounds it below.
            while upcoming is not None and upcoming[0] < invoked:
                if highest is None or upcoming[2] > highest[0]:
                    highest = (upcoming[2], upcoming[0], upcoming[3])
                upcoming = next(finished, None)
            if highest is not None and offset < highest[0]:
                regression.add(
                    {
                        "partition": partition,
                        "committed": offset,
                        "by": who,
                        "after": highest[0],
                        "committed_by": highest[2],
                        "at_s": round(completed / 1e9, 3),
                    }
                )
    # A new owner starts at the committed position: never below an ok commit that
    # completed before its assignment.
    first_read: dict[
        tuple[Any, int], int
    ] = {}  # (process, partition) -> first offset since assigned
    assigned_at: dict[tuple[Any, int], int] = {}
    for op in ops:
        if op["f"] == ASSIGNED:
            for partition in op["value"]["partitions"]:
                assigned_at[(op["process"], partition)] = op["time"]
                first_read.pop((op["process"], partition), None)
        elif op["f"] == POLL:
            for partition, pairs in op["value"]["records"].items():
                key = (op["process"], int(partition))
                if key in assigned_at and key not in first_read and pairs:
                    first_read[key] = pairs[0][0]
                    bound = max(
                        (o for c, _, o, _ in done.get(int(partition), ()) if c < assigned_at[key]),
                        default=None,
                    )
                    if bound is not None and pairs[0][0] < bound:
                        regression.add(
                            {
                                "partition": int(partition),
                                "started_at": pairs[0][0],
                                "by": op["process"],
                                "committed_before_assignment": bound,
                                "at_s": round(op["time"] / 1e9, 3),
                            }
                        )


def _assignments(ops: list[Op]) -> dict[int, dict[str, set[int]]]:
    by_generation: dict[int, dict[str, set[int]]] = defaultdict(dict)
    for op in ops:
        if op["f"] == ASSIGNED:
            value = op["value"]
            by_generation[value["generation"]][value["member_id"]] = set(value["partitions"])
    return by_generation


def _last_assignment(ops: list[Op]) -> tuple[int, set[int]] | None:
    by_generation = _assignments(ops)
    if not by_generation:
        return None
    generation = max(by_generation)
    covered = set().union(*by_generation[generation].values())
    return generation, covered


def rebalance_windows(ops: list[Op], partitions: int) -> list[dict[str, Any]]:
    """From the first revocation after a stable generation to the first moment a later
    generation's assignments cover every partition."""
    everything = set(range(partitions))
    windows: list[dict[str, Any]] = []
    stable: int | None = None
    started: tuple[int, int] | None = None  # (time, generation it left)
    covered: dict[int, set[int]] = defaultdict(set)
    for op in ops:
        if op["f"] == REVOKED and started is None and stable is not None:
            started = (op["time"], stable)
        elif op["f"] == ASSIGNED:
            generation = op["value"]["generation"]
            covered[generation] |= set(op["value"]["partitions"])
            if covered[generation] >= everything and (stable is None or generation > stable):
                if started is not None:
                    windows.append(
                        {
                            "start": started[0],
                            "end": op["time"],
                            "ms": round((op["time"] - started[0]) / 1e6),
                            "from_generation": started[1],
                            "to_generation": generation,
                        }
                    )
                    started = None
                stable = generation
    return windows
