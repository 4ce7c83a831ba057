"""The demo: the pipeline with a live terminal view (rich), a replay of its first half
while the live group runs, and a PNG summary at the end (matplotlib)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from examples.fraud_detection.run import PipelineRun


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


class LiveView:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self.replay_started = False
        self.replay_thread: threading.Thread | None = None
        self.replay_summary: dict[str, Any] | None = None

    def render(self, run: PipelineRun) -> Table:
        samples = run.samples
        latest = samples[-1]
        rate = 0.0
        if len(samples) >= 2:
            before = samples[-2]
            rate = (latest.ends - before.ends) / max(latest.t_s - before.t_s, 1e-3)
        watcher = run.watcher
        overall = watcher.latencies.summary()
        table = Table(title=f"fraud detection on pykraft ({run.semantics})", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_row("time", f"{latest.t_s:,.0f} s of {run.seconds:,.0f} s")
        table.add_row("payments/s", f"{rate:,.0f} (target {run.rate:,})")
        table.add_row("payments written", f"{latest.ends:,}")
        table.add_row("consumer lag", f"{latest.lag:,}")
        table.add_row(
            "detection p50 / p99 (last s)", f"{_ms(latest.p50_ms)} / {_ms(latest.p99_ms)}"
        )
        table.add_row(
            "detection p50 / p99 (run)", f"{_ms(overall['p50_ms'])} / {_ms(overall['p99_ms'])}"
        )
        table.add_row("alerts", f"{latest.alerts:,}")
        patterns: dict[str, int] = {}
        for _card, pattern in watcher.seen:
            patterns[pattern] = patterns.get(pattern, 0) + 1
        table.add_row("  by pattern", ", ".join(f"{k} {v}" for k, v in sorted(patterns.items())))
        table.add_row("detectors", f"{run.detectors} processes, group {run.group}")
        if self.replay_summary is not None:
            replay = self.replay_summary
            table.add_row(
                "replay (first half)",
                f"{replay.get('events', 0):,} payments, {replay.get('planted', 0)} planted, "
                f"rules found {sum(replay.get('alerts_by_rule', {}).values())}",
            )
        elif self.replay_started:
            table.add_row("replay (first half)", "running beside the live group ...")
        for note in run.notes[-3:]:
            table.add_row("note", note)
        return table

    def on_second(self, run: PipelineRun) -> None:
        if not self.replay_started and run.samples[-1].t_s >= run.seconds / 2:
            self.start_replay(run)
        self.live.update(self.render(run))

    def start_replay(self, run: PipelineRun) -> None:
        """A separate process with its own group id reads the first half of the run
        (`offsets_for_times`) while the detectors go on."""
        self.replay_started = True
        to_ms = int(time.time() * 1000)
        from_ms = to_ms - int(run.seconds / 2 * 1000)

        def replay() -> None:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "examples.fraud_detection",
                    "replay",
                    "--bootstrap",
                    run.bootstrap,
                    "--topic",
                    run.payments_topic,
                    "--from",
                    str(from_ms),
                    "--to",
                    str(to_ms),
                    "--truth",
                    run.truth_path,
                    "--out",
                    os.path.join(run.workdir, "replay.json"),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode == 0:
                self.replay_summary = json.loads(done.stdout.strip().splitlines()[-1])["replay"]
            else:
                self.replay_summary = {"error": done.stderr.strip()[-200:]}

        self.replay_thread = threading.Thread(target=replay, daemon=True)
        self.replay_thread.start()


def save_png(
    samples: list[dict[str, Any]],
    alerts: list[tuple[float, float]],
    start_s: float,
    path: str,
    title: str,
) -> None:
    """`alerts`: (arrival, latency ms) of each alert; `start_s` the generator's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    rates = [0.0] + [
        (b["ends"] - a["ends"]) / max(b["t_s"] - a["t_s"], 1e-3)
        for a, b in itertools.pairwise(samples)
    ]
    figure, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, rates)
    axes[0].set_ylabel("payments/s")
    axes[1].plot(t, [s["lag"] for s in samples], color="tab:orange")
    axes[1].set_ylabel("consumer lag")
    axes[2].scatter([a - start_s for a, _ in alerts], [ms for _, ms in alerts], s=6)
    axes[2].axhline(100, color="grey", linestyle="--", linewidth=0.8)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("detection ms (each alert)")
    axes[3].plot(t, [s["alerts"] for s in samples], color="tab:red")
    axes[3].set_ylabel("alerts (total)")
    axes[3].set_xlabel("seconds since the generator started")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def demo(args: argparse.Namespace, run_pipeline: Callable[..., dict[str, Any]]) -> None:
    console = Console()
    view = LiveView(console)
    with view.live:
        result = run_pipeline(args, quiet=False, on_second=view.on_second, say=console.print)
    if view.replay_thread is not None:
        view.replay_thread.join(timeout=600)
    samples = result.pop("samples")
    png = args.png or os.path.join(result["workdir"], "fraud-summary.png")
    if samples:
        save_png(
            samples,
            result.pop("alert_latencies"),
            result.pop("started_at_s"),
            png,
            f"{result['events']:,} payments at {args.rate:,}/s, {result['semantics']}, "
            f"recall {result['recall']}",
        )
    result["png"] = png
    result["replay"] = view.replay_summary
    console.print_json(json.dumps(result))
