"""One run of the whole pipeline against a cluster: detectors, generator, watchers.

`demo` and `bench` both drive it; each second it samples the end offsets, the group's
lag, the alerts seen and their latencies, which the live view shows and the PNG plots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import attrs

from examples.fraud_detection import pipeline
from examples.fraud_detection.detector import probe_transactions
from examples.fraud_detection.generator import read_incidents
from examples.fraud_detection.latency import Latencies

DRAIN_TIMEOUT_S = 120.0
QUIET_S = 2.0  # no new alert for this long, with no lag: the run is over


@attrs.define
class Sample:
    t_s: float  # since the generator started
    ends: int  # payments written, summed over partitions
    lag: int
    alerts: int
    p50_ms: float | None  # of the alerts that arrived in the second before
    p99_ms: float | None


def resolve_semantics(requested: str, bootstrap: str, say: Callable[[str], None]) -> str:
    """`auto`: exactly-once when the cluster serves transactions, else at-least-once."""
    if requested == "at-least-once":
        return requested
    why_not = probe_transactions(bootstrap)
    if why_not is None:
        return "exactly-once"
    if requested == "exactly-once":
        raise SystemExit(why_not)
    say(f"note: {why_not}; running at-least-once")
    return "at-least-once"


@attrs.define
class PipelineRun:
    bootstrap: str
    workdir: str
    rate: int
    seconds: float
    detectors: int = 3
    partitions: int = 3
    replication: int = 3
    semantics: str = "auto"
    seed: int = 1
    fraud_share: float = 0.002
    kill_detector_at: float | None = None
    generator_linger_ms: float = 50.0
    fetch_wait_ms: int = 500
    rebuild_window_s: float = 12.0
    restart_killed: bool = True  # start the killed detector again at once, as a supervisor
    topic_suffix: str = ""
    say: Callable[[str], None] = print
    samples: list[Sample] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    generator_figures: dict[str, Any] = attrs.Factory(dict)
    killed_at_s: float | None = None
    started_at_s: float = 0.0  # wall clock when the generator started
    detector_children: list[pipeline.Child] = attrs.Factory(list)
    watcher: pipeline.AlertWatcher | None = None

    @property
    def payments_topic(self) -> str:
        return pipeline.PAYMENTS + self.topic_suffix

    @property
    def alerts_topic(self) -> str:
        return pipeline.ALERTS + self.topic_suffix

    @property
    def group(self) -> str:
        return pipeline.DETECTOR_GROUP + self.topic_suffix

    @property
    def truth_path(self) -> str:
        return os.path.join(self.workdir, "fraud-truth.jsonl")

    def execute(self, on_second: Callable[[PipelineRun], None] | None = None) -> dict[str, Any]:
        os.makedirs(self.workdir, exist_ok=True)
        pipeline.create_topics(
            self.bootstrap,
            partitions=self.partitions,
            replication=self.replication,
            names=[self.payments_topic, self.alerts_topic],
        )
        self.semantics = resolve_semantics(self.semantics, self.bootstrap, self.note)
        detectors = [self.detector(i, f"detector-{i}") for i in range(self.detectors)]
        self.detector_children = detectors
        watcher = meter = generator = None
        try:
            pipeline.wait_assigned(detectors, self.partitions)
            watcher = pipeline.AlertWatcher(
                self.bootstrap, self.alerts_topic, self.partitions, self.fetch_wait_ms
            )
            meter = pipeline.LagMeter(
                self.bootstrap, self.payments_topic, self.partitions, self.group
            )
            self.watcher = watcher
            watcher.start()
            generator = pipeline.Child("generator", self.generator_args(), self.workdir)
            started = time.monotonic()
            self.started_at_s = time.time()
            next_sample = started + 1.0
            drain_deadline = None
            while True:
                time.sleep(0.05)
                now = time.monotonic()
                if (
                    self.kill_detector_at is not None
                    and self.killed_at_s is None
                    and now - started >= self.kill_detector_at
                ):
                    detectors[0].kill()
                    self.killed_at_s = round(now - started, 3)
                    self.note(f"SIGKILLed {detectors[0].name} at {self.killed_at_s} s")
                    if self.restart_killed:
                        # As a supervisor would: the same instance, so the same static
                        # group member and transactional.id (its open transaction is
                        # aborted at once, its partitions come back without a rebalance).
                        detectors[0] = self.detector(0, "detector-0-restarted")
                        self.note("restarted detector-0 under the same instance")
                if now < next_sample:
                    continue
                next_sample += 1.0
                sample = self.sample(now - started, meter, watcher)
                if on_second is not None:
                    on_second(self)
                if generator.process.poll() is None:
                    continue
                if drain_deadline is None:
                    if generator.process.returncode != 0:
                        raise RuntimeError(f"the generator failed: {generator.stderr_tail()}")
                    self.generator_figures = generator.last("generator") or {}
                    drain_deadline = now + DRAIN_TIMEOUT_S
                expected = self.generator_figures.get("events", 0)
                quiet = now - watcher.last_alert_at >= QUIET_S
                if sample.lag == 0 and sample.ends >= expected and quiet:
                    break
                if now >= drain_deadline:
                    self.note(f"not drained after {DRAIN_TIMEOUT_S} s: lag {sample.lag}")
                    break
            return self.result()
        finally:
            for child in [generator, *detectors]:
                if child is not None:
                    child.stop()
            for closable in (watcher, meter):
                if closable is not None:
                    closable.close()

    def detector(self, instance: int, name: str) -> pipeline.Child:
        args = pipeline.detector_args(
            self.bootstrap,
            self.semantics,
            instance,
            self.payments_topic,
            self.alerts_topic,
            self.group,
            self.fetch_wait_ms,
            self.rebuild_window_s,
        )
        return pipeline.Child(name, args, self.workdir)

    def generator_args(self) -> list[str]:
        return [
            "generate",
            "--bootstrap", self.bootstrap,
            "--topic", self.payments_topic,
            "--rate", str(self.rate),
            "--seconds", str(self.seconds),
            "--seed", str(self.seed),
            "--fraud-share", str(self.fraud_share),
            "--truth", self.truth_path,
            "--linger-ms", str(self.generator_linger_ms),
        ]  # fmt: skip

    def sample(
        self, t_s: float, meter: pipeline.LagMeter, watcher: pipeline.AlertWatcher
    ) -> Sample:
        lag, ends = meter.measure()
        recent = Latencies()
        horizon = time.time() - 1.0
        for latency in watcher.recent(horizon):
            recent.record(latency)
        sample = Sample(
            round(t_s, 3), ends, lag, watcher.count, recent.percentile(0.5), recent.percentile(0.99)
        )
        self.samples.append(sample)
        return sample

    def note(self, line: str) -> None:
        self.notes.append(line)
        self.say(line)

    def result(self) -> dict[str, Any]:
        assert self.watcher is not None
        incidents = read_incidents(self.truth_path)
        latencies = self.watcher.latencies.summary()
        events = self.generator_figures.get("events", 0)
        return {
            "rate_target": self.rate,
            "seconds": self.seconds,
            "semantics": self.semantics,
            "detectors": self.detectors,
            "partitions": self.partitions,
            "events": events,
            "events_per_s": self.generator_figures.get("events_per_s"),
            "generator_behind_max_ms": self.generator_figures.get("behind_max_ms"),
            "payment_acked_p50_ms": self.generator_figures.get("acked_p50_ms"),
            "payment_acked_p99_ms": self.generator_figures.get("acked_p99_ms"),
            "detection_p50_ms": _round(latencies["p50_ms"]),
            "detection_p99_ms": _round(latencies["p99_ms"]),
            "detection_max_ms": _round(latencies["max_ms"]),
            "seen_by_detector_p50_ms": _round(self.watcher.to_detector.percentile(0.5)),
            "seen_by_detector_p99_ms": _round(self.watcher.to_detector.percentile(0.99)),
            "lag_end": self.samples[-1].lag if self.samples else None,
            **pipeline.score(incidents, self.watcher.seen),
            "alerts": self.watcher.count,
            "killed_detector_at_s": self.killed_at_s,
            # Each detector's last figures: begin to commit of its transactions with alerts.
            "alert_txn_ms": {d.name: d.last("alert_txn_ms") for d in self.detector_children},
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
