"""Checkers over a history: what went wrong, counted, with examples.

Pure functions of the operations (see history.py). Values are unique per send, so a
value names a write. Reads are `poll` operations (consumers) and the `final-read`
at the end; both carry {partition: [[offset, value], ...]}.

| anomaly | definition |
|---|---|
| lost | acknowledged (ok) but absent from every read, though the final read covered the partition |
| duplicated | one value at two or more offsets (expected only where a send was retried) |
| inconsistent-offsets | one (partition, offset) with two values, across acks and reads |
| nonmonotonic-poll | one consumer's successive reads of a partition go back in offset |
| reordered | one producer's acknowledged sends to a partition go back in offset |
| unexpected | read but never sent |
| split-brain | two nodes claim to be the active controller in one epoch |
| leader-epoch-regression | a partition's leader epoch goes back in the cluster's events |
| metadata-divergence | after healing, brokers still show different topics or partition counts |
| lost-topic | a create was acknowledged, no delete was tried, yet the topic is gone |
| resurrected-topic | a delete was acknowledged, yet the topic is there |
| phantom-topic | a topic is there though every create of it was refused (or none was sent) |
| lost-partitions | fewer partitions than an acknowledged create or add-partitions gave |
| phantom-partitions | more partitions than any change not refused asked for |
| group-lost, commit-regression, double-owned, unowned-partition | the subscribe workload's consumer group (see group_checkers.py) |
| aborted-read, precommitted-read, torn-transaction, lost-committed, torn-offsets | the transactional workload's (see txn_checkers.py) |
| stale-admin | a metadata change through a broker under no fault took more than twice the request timeout (checked when given one) |
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import attrs

from jepsen_like.history import FAIL, INFO, INVOKE, OK, Op

EXAMPLES = 5
ANOMALIES = (
    "lost",
    "inconsistent-offsets",
    "nonmonotonic-poll",
    "reordered",
    "unexpected",
    "split-brain",
    "leader-epoch-regression",
    "metadata-divergence",
    "lost-topic",
    "resurrected-topic",
    "phantom-topic",
    "lost-partitions",
    "phantom-partitions",
    "stale-admin",
    # the subscribe workload's (jepsen_like/group_checkers.py)
    "group-lost",
    "commit-regression",
    "double-owned",
    "unowned-partition",
    # the transactional workload's (jepsen_like/txn_checkers.py)
    "aborted-read",
    "precommitted-read",
    "torn-transaction",
    "lost-committed",
    "torn-offsets",
    # checked from inside the simulator (jepsen_like/sim/invariants.py)
    "two-leaders-in-an-epoch",
    "metadata-divergence",
    "hwm-regression",
    "node-died",
    "run-failed",
)
METADATA_CHANGES = ("create", "add-partitions", "delete")
# Faults that may rightly hold any broker's admin requests for the whole forwarding
# deadline: the broker may be cut off from every controller, or be restarting.
CLUSTER_WIDE_FAULTS = ("halves", "ring", "bridge", "rolling-restart", "power-loss")


@attrs.define
class Finding:
    name: str
    count: int = 0
    examples: list[Any] = attrs.field(factory=list)

    def add(self, example: Any) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@attrs.define
class Verdict:
    findings: dict[str, Finding]
    stats: dict[str, Any]

    @property
    def valid(self) -> bool:
        return all(self.findings[name].count == 0 for name in ANOMALIES if name in self.findings)

    def summary(self) -> str:
        lines = [f"valid: {self.valid}"]
        for key, value in self.stats.items():
            lines.append(f"{key}: {value}")
        for finding in self.findings.values():
            tag = "" if finding.name in ANOMALIES else " (not an anomaly)"
            lines.append(f"{finding.name}{tag}: {finding.count}")
            for example in finding.examples:
                lines.append(f"    e.g. {example}")
        return "\n".join(lines)


def _reads(ops: Iterable[Op]) -> Iterable[tuple[Op, int, int, Any]]:
    for op in ops:
        if op["type"] == OK and op["f"] in ("poll", "final-read"):
            for partition, pairs in op["value"].items():
                for offset, value in pairs:
                    yield op, int(partition), int(offset), value


def check_queue(ops: list[Op]) -> Verdict:
    lost = Finding("lost")
    duplicated = Finding("duplicated")
    inconsistent = Finding("inconsistent-offsets")
    nonmonotonic = Finding("nonmonotonic-poll")
    reordered = Finding("reordered")
    unexpected = Finding("unexpected")

    sent: set[Any] = set()
    acked: dict[Any, tuple[int, int]] = {}  # value -> (partition, offset)
    counts = defaultdict(int)
    retried_values: set[Any] = set()
    for op in ops:
        if op["f"] != "send":
            continue
        counts[op["type"]] += 1
        if op["type"] == INVOKE:
            value = op["value"][1]
            if value in sent:
                retried_values.add(value)
            sent.add(value)
        elif op["type"] == OK:
            partition, offset, value = op["value"]
            acked[value] = (partition, offset)
        elif op.get("retried"):
            retried_values.add(op["value"][-1])

    at: dict[tuple[int, int], Any] = {}  # (partition, offset) -> value
    offsets_of: dict[Any, set[tuple[int, int]]] = defaultdict(set)
    for value, (partition, offset) in acked.items():
        at[(partition, offset)] = value
        offsets_of[value].add((partition, offset))
    seen: set[Any] = set()
    final_partitions: set[int] = set()
    last_by_consumer: dict[tuple[Any, int], int] = {}
    for op, partition, offset, value in _reads(ops):
        seen.add(value)
        if op["f"] == "final-read":
            final_partitions.add(partition)
        known = at.setdefault((partition, offset), value)
        if known != value:
            inconsistent.add({"partition": partition, "offset": offset, "values": [known, value]})
        offsets_of[value].add((partition, offset))
        if value not in sent:
            unexpected.add({"partition": partition, "offset": offset, "value": value})
        if op["f"] == "poll":
            key = (op["process"], partition)
            previous = last_by_consumer.get(key)
            if previous is not None and offset <= previous:
                nonmonotonic.add(
                    {
                        "process": op["process"],
                        "partition": partition,
                        "after": previous,
                        "got": offset,
                    }
                )
            last_by_consumer[key] = offset
    for value, places in offsets_of.items():
        if len(places) > 1:
            duplicated.add({"value": value, "at": sorted(places)})
    for value, (partition, offset) in acked.items():
        if value not in seen and partition in final_partitions:
            lost.add({"partition": partition, "offset": offset, "value": value})

    last_ack: dict[tuple[Any, int], int] = {}
    for op in ops:
        if op["f"] == "send" and op["type"] == OK:
            partition, offset, value = op["value"]
            key = (op["process"], partition)
            if key in last_ack and offset < last_ack[key]:
                reordered.add(
                    {
                        "process": op["process"],
                        "partition": partition,
                        "after": last_ack[key],
                        "got": offset,
                    }
                )
            last_ack[key] = offset

    unexplained = sum(1 for v in offsets_of if len(offsets_of[v]) > 1 and v not in retried_values)
    findings = {
        f.name: f for f in (lost, inconsistent, nonmonotonic, reordered, unexpected, duplicated)
    }
    stats = {
        "sends": counts[INVOKE],
        "ok": counts[OK],
        "fail": counts[FAIL],
        "info": counts[INFO],
        "acknowledged": len(acked),
        "read": len(seen),
        "duplicates-without-a-retry": unexplained,
    }
    return Verdict(findings=findings, stats=stats)


def check_cluster(ops: list[Op]) -> Verdict:
    """Controllers and partition leaders, from the events scraped from the nodes."""
    split_brain = Finding("split-brain")
    regression = Finding("leader-epoch-regression")
    active: dict[int, set[Any]] = defaultdict(set)
    last_epoch: dict[Any, int] = {}
    for op in ops:
        if op["f"] == "controller" and op["type"] == OK and op["process"] == "cluster":
            epoch, node = op["value"]["epoch"], op["value"]["node"]
            active[epoch].add(node)
        elif op["f"] == "partition-leader" and op["type"] == OK and op["process"] == "cluster":
            key = (op["value"].get("observer"), op["value"]["topic"], op["value"]["partition"])
            epoch = op["value"]["leader_epoch"]
            if key in last_epoch and epoch < last_epoch[key]:
                regression.add({"partition": key, "after": last_epoch[key], "got": epoch})
            last_epoch[key] = max(epoch, last_epoch.get(key, epoch))
    for epoch, nodes in sorted(active.items()):
        if len(nodes) > 1:
            split_brain.add({"epoch": epoch, "nodes": sorted(nodes)})
    return Verdict(
        findings={f.name: f for f in (split_brain, regression)},
        stats={"controller-epochs": len(active)},
    )


def check_metadata(ops: list[Op], *, request_timeout_ms: int | None = None) -> Verdict:
    """Topic changes (create, add-partitions, delete) against every broker's final view.

    With `request_timeout_ms` (the cluster's), also how long each change took: one
    through a broker that was under no fault of its own, and during no cluster-wide
    fault, must come back (answered or refused) within twice that (issue 13: a paused
    controller stalled every admin request for as long as it was paused)."""
    divergence = Finding("metadata-divergence")
    lost = Finding("lost-topic")
    resurrected = Finding("resurrected-topic")
    phantom = Finding("phantom-topic")
    lost_partitions = Finding("lost-partitions")
    phantom_partitions = Finding("phantom-partitions")
    stale = Finding("stale-admin")
    counts: dict[str, int] = defaultdict(int)
    # topic -> change -> outcomes; and partition counts acknowledged / maybe applied
    outcomes: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    acked_partitions: dict[str, int] = defaultdict(int)
    maybe_partitions: dict[str, int] = defaultdict(int)
    views: dict[str, dict[str, int]] = {}
    for op in ops:
        if op["f"] == "final-topics" and op["type"] == OK:
            views = op["value"]
        if op["f"] not in METADATA_CHANGES or op["type"] == INVOKE:
            continue
        counts[op["type"]] += 1
        topic, count = op["value"]
        outcomes[topic][op["f"]].add(op["type"])
        if op["f"] != "delete" and op["type"] != FAIL:
            maybe_partitions[topic] = max(maybe_partitions[topic], count)
            if op["type"] == OK:
                acked_partitions[topic] = max(acked_partitions[topic], count)

    distinct = {json_key(view) for view in views.values()}
    if not views and outcomes:
        divergence.add({"problem": "no broker answered the final read"})
    if len(distinct) > 1:
        topics = set().union(*views.values())
        differing = sorted(t for t in topics if len({v.get(t) for v in views.values()}) > 1)
        divergence.add({"topics": differing[:10], "brokers": sorted(views)})
    checked: set[str] = set()
    for broker, view in sorted(views.items()):
        for topic in sorted(set(view) | set(outcomes)):
            if topic in checked:
                continue
            changes = outcomes.get(topic, {})
            present = topic in view
            created = OK in changes.get("create", ())
            maybe_created = bool(changes.get("create", set()) - {FAIL})
            maybe_deleted = bool(changes.get("delete", set()) - {FAIL})
            example = {"topic": topic, "broker": broker, "partitions": view.get(topic)}
            if created and not maybe_deleted and not present:
                lost.add(example)
            elif OK in changes.get("delete", ()) and present:
                resurrected.add(example)
            elif present and not maybe_created:
                phantom.add(example)
            elif present and view[topic] < acked_partitions.get(topic, 0):
                lost_partitions.add({**example, "acknowledged": acked_partitions[topic]})
            elif present and view[topic] > maybe_partitions.get(topic, 0):
                phantom_partitions.add({**example, "most-asked": maybe_partitions[topic]})
            else:
                continue
            checked.add(topic)  # one finding per topic, whichever broker showed it first
    if request_timeout_ms is not None:
        _check_latency(ops, 2 * request_timeout_ms, stale)
    findings = {
        f.name: f
        for f in (
            divergence,
            lost,
            resurrected,
            phantom,
            lost_partitions,
            phantom_partitions,
            stale,
        )
    }
    stats = {
        "changes-ok": counts[OK],
        "changes-fail": counts[FAIL],
        "changes-info": counts[INFO],
        "topics-at-end": len(next(iter(views.values()), {})),
        "brokers-read": len(views),
    }
    return Verdict(findings=findings, stats=stats)


def _check_latency(ops: list[Op], bound_ms: int, stale: Finding) -> None:
    """Changes through a live broker that took longer than `bound_ms`."""
    under_fault = _fault_intervals(ops)
    for op in ops:
        if op["f"] not in METADATA_CHANGES or op["type"] not in (OK, FAIL, INFO):
            continue
        if "invoked" not in op or "via" not in op:
            continue  # not sent (no broker running), or an older history
        began, ended = op["invoked"], op["time"]
        took_ms = (ended - began) / 1e6
        if took_ms <= bound_ms:
            continue
        faults = under_fault.get(op["via"], []) + under_fault.get(None, [])
        if any(start <= ended and began <= end for start, end in faults):
            continue  # the broker itself was down, paused or cut off
        stale.add(
            {
                "change": op["f"],
                "topic": op["value"][0],
                "via": op["via"],
                "outcome": op["type"],
                "took_ms": round(took_ms),
                "bound_ms": bound_ms,
            }
        )


def _fault_intervals(ops: list[Op]) -> dict[Any, list[tuple[float, float]]]:
    """Per node, when a fault of its own held it (killed, paused, isolated...); under
    the key None, when a cluster-wide one held every node. A fault never healed lasts
    to the end."""
    started: dict[tuple[str, Any], int] = {}
    intervals: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for op in ops:
        value = op.get("value")
        if op["process"] != "nemesis" or not isinstance(value, dict) or "phase" not in value:
            continue
        key = (op["f"], value.get("node"))
        if value["phase"] == "start":
            started[key] = op["time"]
        elif key in started:
            _add_fault(intervals, key, started.pop(key), op["time"])
    for key, start in started.items():
        _add_fault(intervals, key, start, float("inf"))
    return intervals


def _add_fault(
    intervals: dict[Any, list[tuple[float, float]]], key: tuple[str, Any], start: float, end: float
) -> None:
    fault, node = key
    intervals[None if fault in CLUSTER_WIDE_FAULTS else node].append((start, end))


def json_key(view: dict[str, int]) -> str:
    return json.dumps(view, sort_keys=True)


WRITES = ("send", "txn", *METADATA_CHANGES)  # a transaction counts as one write


def availability(ops: list[Op], faults: list[tuple[int, str]]) -> dict[str, Any]:
    """ok/fail per second, and after each fault: the time to the next ok send, overall
    and per partition."""
    per_second: dict[int, dict[str, int]] = defaultdict(lambda: {OK: 0, FAIL: 0, INFO: 0})
    for op in ops:
        if op["f"] in WRITES and op["type"] in (OK, FAIL, INFO):
            per_second[op["time"] // 1_000_000_000][op["type"]] += 1
    acked = [op for op in ops if op["f"] in WRITES and op["type"] == OK]
    windows = []
    for at, name in faults:
        # Unavailability: from the fault to the first ok whose send began after it, for
        # the workload as a whole and for each partition (one leader's failover stalls
        # only its own partitions).
        first: dict[int, int] = {}
        for op in acked:
            if op.get("invoked", 0) >= at:
                # A send's partition; a metadata change counts as "partition" -1.
                partition = int(op["value"][0]) if op["f"] == "send" else -1
                waited = op["time"] - at
                if partition not in first or waited < first[partition]:
                    first[partition] = waited
        windows.append(
            {
                "fault": name,
                "at_s": round(at / 1e9, 2),
                "window_ms": round(min(first.values()) / 1e6) if first else None,
                "per_partition_ms": {p: round(w / 1e6) for p, w in sorted(first.items())},
            }
        )
    return {"per_second": dict(sorted(per_second.items())), "windows": windows}
