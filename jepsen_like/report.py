"""The run directory's summary and timeline plot.

The plot has three panels sharing one time axis, fault windows shaded on each:
acknowledged / failed / indeterminate sends per second; the latency of each
acknowledged send; and the controller timeline (which node was the active controller,
with its epoch, and when partition 0's leader moved). matplotlib is optional
(`pip install -e '.[lab]'`); without it no PNG is drawn, and the summary and
`describe_report` say so and how to get it.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from jepsen_like.checkers import WRITES
from jepsen_like.history import FAIL, INFO, OK, Op

NO_PLOT = "no timeline plot: matplotlib is not installed; pip install -e '.[lab]' draws it"
# What a run directory may hold, in the order a reader wants them.
REPORT_FILES = ("summary.txt", "history.jsonl", "stats.json", "timeline.png")


def describe_report(out: str) -> str:
    """One line naming the files a run left in `out` (only those that exist)."""
    present = [name for name in REPORT_FILES if os.path.exists(os.path.join(out, name))]
    if glob.glob(os.path.join(out, "cluster", "node-*.log")):
        present.append("cluster/node-*.log")
    line = f"report: {out} ({', '.join(present) or 'no files'})"
    if "timeline.png" not in present:
        line += f"\n({NO_PLOT})"
    return line


REBALANCE_LABEL = "rebalance"


def write_report(
    out: str,
    ops: list[Op],
    fault_intervals: list[tuple[int, int, str]],
    summary: str,
    avail: dict[str, Any],
) -> str | None:
    png = _plot(out, ops, fault_intervals, avail)
    text = summary + ("\n\ntimeline: " + png if png else f"\n\n({NO_PLOT})")
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as file:
        file.write(text + "\n")
    return png


def _plot(
    out: str, ops: list[Op], fault_intervals: list[tuple[int, int, str]], avail: dict[str, Any]
) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (rate_ax, latency_ax, ctrl_ax) = plt.subplots(
        3, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.4]}
    )
    seconds = sorted(avail["per_second"])
    for kind, color in ((OK, "tab:green"), (FAIL, "tab:red"), (INFO, "tab:orange")):
        rate_ax.plot(
            seconds,
            [avail["per_second"][s][kind] for s in seconds],
            color=color,
            label=kind,
            lw=1.4,
        )
    rate_ax.set_ylabel("writes / s")
    rate_ax.legend(loc="upper right", fontsize=8)

    ok_times, latencies = [], []
    for op in ops:
        if op["f"] in WRITES and op["type"] == OK and "invoked" in op:
            ok_times.append(op["time"] / 1e9)
            latencies.append((op["time"] - op["invoked"]) / 1e6)
    latency_ax.scatter(ok_times, latencies, s=2, color="tab:blue")
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("ack latency (ms)")

    controllers = [op for op in ops if op["f"] == "controller" and op["type"] == OK]
    end_s = max((op["time"] for op in ops), default=0) / 1e9
    for index, op in enumerate(controllers):
        start = op["time"] / 1e9
        stop = controllers[index + 1]["time"] / 1e9 if index + 1 < len(controllers) else end_s
        node = op["value"]["node"]
        ctrl_ax.hlines(node, start, stop, color="tab:purple", lw=6)
        ctrl_ax.annotate(
            f"epoch {op['value']['epoch']}",
            (start, node),
            xytext=(2, 6),
            textcoords="offset points",
            fontsize=7,
        )
    moves = [
        op
        for op in ops
        if op["f"] == "partition-leader"
        and op["process"] == "cluster"
        and op["value"]["partition"] == 0
    ]
    for op in moves:
        ctrl_ax.plot(op["time"] / 1e9, op["value"]["leader"], "k|", ms=10)
    ctrl_ax.set_ylabel("active controller\n(| : leader of p0)")
    nodes = sorted(
        {op["value"]["node"] for op in controllers}
        | {op["value"]["leader"] for op in moves if op["value"]["leader"] >= 0}
    )
    ctrl_ax.set_yticks(nodes or [0])
    ctrl_ax.set_xlabel("seconds since the run began")

    for start, stop, name in fault_intervals:
        # A consumer group's rebalance (the subscribe workload) is shaded apart from faults.
        color, line = ("tab:blue", 2) if name.startswith(REBALANCE_LABEL) else ("tab:red", 1)
        for ax in (rate_ax, latency_ax, ctrl_ax):
            ax.axvspan(start / 1e9, stop / 1e9, color=color, alpha=0.12)
        rate_ax.annotate(
            name,
            (start / 1e9, 1),
            xycoords=("data", "axes fraction"),
            xytext=(2, -12 * line),
            textcoords="offset points",
            fontsize=8,
            color=color,
        )
    for window in avail["windows"]:
        if window["window_ms"] is not None:
            latency_ax.annotate(
                f"stalled {window['window_ms']} ms",
                (window["at_s"], 1),
                xycoords=("data", "axes fraction"),
                xytext=(2, -12),
                textcoords="offset points",
                fontsize=8,
            )
    fig.suptitle(
        "pykraft under faults: throughput, latency, controller timeline "
        "(faults shaded red, group rebalances blue)"
    )
    fig.tight_layout()
    path = os.path.join(out, "timeline.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
