"""`python -m examples.fraud_detection demo|bench|detect|generate|replay`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import attrs

from examples.fraud_detection import detector as detector_defaults
from examples.fraud_detection import generator, pipeline


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=int, default=2_000, help="payments per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--bootstrap", help="an existing cluster; default: start 3 pykraft nodes here"
    )
    parser.add_argument("--nodes", type=int, default=3, help="nodes of the cluster started here")
    parser.add_argument("--detectors", type=int, default=3, help="detector processes (one group)")
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="of each topic (3: each pykraft broker leads one; 12 tripled detection latency)",
    )
    parser.add_argument(
        "--rebuild-window-s",
        type=float,
        default=detector_defaults.BENCH_REBUILD_WINDOW_S,
        help="history a detector replays into state after an assignment",
    )
    parser.add_argument("--replication", type=int, help="default: min(3, nodes)")
    parser.add_argument(
        "--semantics",
        choices=["auto", "exactly-once", "at-least-once"],
        default="auto",
        help="auto: exactly-once if the cluster serves transactions, else at-least-once",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fraud-share", type=float, default=0.002, help="of all payments")
    parser.add_argument("--workdir", help="logs, ground truth, summary (default: a temp dir)")
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=detector_defaults.FETCH_WAIT_MS,
        help="fetch.wait.max.ms of the detectors and the alert watcher",
    )
    parser.add_argument(
        "--generator-linger-ms", type=float, default=generator.LINGER_MS, help="its linger.ms"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.fraud_detection")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the whole pipeline with a live view and a PNG")
    _common(demo)
    demo.add_argument("--png", help="summary chart (default: WORKDIR/fraud-summary.png)")

    bench = commands.add_parser("bench", help="the whole pipeline; one JSON line")
    _common(bench)
    bench.add_argument("--kill-detector-at", type=float, help="SIGKILL one detector at S s")
    bench.add_argument(
        "--no-restart",
        action="store_true",
        help="leave the killed detector dead (default: start it again at once, same instance)",
    )
    bench.add_argument(
        "--offline", action="store_true", help="the detector's own cost per payment, no broker"
    )

    detect = commands.add_parser("detect", help="one detector process of the group")
    detect.add_argument("--bootstrap", required=True)
    detect.add_argument("--group", default=pipeline.DETECTOR_GROUP)
    detect.add_argument("--payments-topic", default=pipeline.PAYMENTS)
    detect.add_argument("--alerts-topic", default=pipeline.ALERTS)
    detect.add_argument(
        "--semantics", choices=["exactly-once", "at-least-once"], default="at-least-once"
    )
    detect.add_argument("--instance", default=str(os.getpid()), help="part of transactional.id")
    detect.add_argument("--rebuild-window-s", type=float, default=30.0)
    detect.add_argument("--fetch-wait-ms", type=int, default=detector_defaults.FETCH_WAIT_MS)

    generate = commands.add_parser("generate", help="payments at a rate, with planted fraud")
    generate.add_argument("--bootstrap", required=True)
    generate.add_argument("--topic", default=pipeline.PAYMENTS)
    generate.add_argument("--rate", type=int, default=2_000)
    generate.add_argument("--seconds", type=float, default=60.0)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--fraud-share", type=float, default=0.002)
    generate.add_argument("--truth", default="fraud-truth.jsonl", help="ground truth (JSON lines)")
    generate.add_argument("--linger-ms", type=float, default=generator.LINGER_MS)

    replay = commands.add_parser("replay", help="read a time range for retraining")
    replay.add_argument("--bootstrap", default="127.0.0.1:9092")
    replay.add_argument("--topic", default=pipeline.PAYMENTS)
    replay.add_argument("--from", dest="from_time", required=True, help="ISO 8601 or epoch ms")
    replay.add_argument("--to", dest="to_time", required=True, help="ISO 8601 or epoch ms")
    replay.add_argument("--truth", help="the generator's ground truth, to count planted fraud")
    replay.add_argument("--out", help="also write the summary (one JSON line) here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "detect":
        from examples.fraud_detection import detector

        detector.run(
            bootstrap=args.bootstrap,
            group=args.group,
            payments_topic=args.payments_topic,
            alerts_topic=args.alerts_topic,
            semantics=args.semantics,
            instance=args.instance,
            rebuild_window_s=args.rebuild_window_s,
            fetch_wait_ms=args.fetch_wait_ms,
        )
    elif args.command == "generate":
        generator.run(
            bootstrap=args.bootstrap,
            topic=args.topic,
            rate=args.rate,
            seconds=args.seconds,
            seed=args.seed,
            truth_path=args.truth,
            fraud_share=args.fraud_share,
            linger_ms=args.linger_ms,
        )
    elif args.command == "replay":
        from examples.fraud_detection import replay

        replay.main(args)
    elif args.command == "bench" and args.offline:
        from examples.fraud_detection.bench import offline

        print(json.dumps({"offline": offline()}), flush=True)
    elif args.command == "bench":
        print(json.dumps(run_pipeline(args, quiet=True)), flush=True)
    elif args.command == "demo":
        from examples.fraud_detection import view

        view.demo(args, run_pipeline)


def run_pipeline(args: argparse.Namespace, *, quiet: bool, on_second=None, say=None) -> dict:  # type: ignore[no-untyped-def]
    from examples.fraud_detection.run import PipelineRun

    workdir = args.workdir or tempfile.mkdtemp(prefix="fraud-detection-")
    speak = say or (lambda line: print(line, file=sys.stderr, flush=True))
    os.makedirs(workdir, exist_ok=True)
    cluster_root = tempfile.mkdtemp(prefix="cluster-", dir=workdir)  # never a previous run's
    with pipeline.cluster_or_given(args.bootstrap, args.nodes, cluster_root) as bootstrap:
        replication = args.replication or (3 if args.bootstrap else min(3, args.nodes))
        run = PipelineRun(
            bootstrap=bootstrap,
            workdir=workdir,
            rate=args.rate,
            seconds=args.seconds,
            detectors=args.detectors,
            partitions=args.partitions,
            replication=replication,
            semantics=args.semantics,
            seed=args.seed,
            fraud_share=args.fraud_share,
            kill_detector_at=getattr(args, "kill_detector_at", None),
            restart_killed=not getattr(args, "no_restart", False),
            generator_linger_ms=args.generator_linger_ms,
            fetch_wait_ms=args.fetch_wait_ms,
            rebuild_window_s=args.rebuild_window_s,
            # On a cluster given, every run has topics of its own.
            topic_suffix=f"-{int(time.time())}" if args.bootstrap else "",
            say=speak,
        )
        result = run.execute(on_second)
        result["workdir"] = workdir
        with open(os.path.join(workdir, "samples.json"), "w", encoding="utf-8") as file:
            json.dump([attrs.asdict(s) for s in run.samples], file)
        assert run.watcher is not None
        with open(os.path.join(workdir, "latencies.json"), "w", encoding="utf-8") as file:
            json.dump(run.watcher.per_second, file)
        result["samples"] = None if quiet else [attrs.asdict(s) for s in run.samples]
        if quiet:
            del result["samples"]
        else:
            result["alert_latencies"] = run.watcher.per_second
            result["started_at_s"] = run.started_at_s
        return result


if __name__ == "__main__":
    main()
