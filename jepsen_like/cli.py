"""`jepsen-like`: fault injection runs against a real pykraft cluster.

    jepsen-like demo
    jepsen-like sim --seeds 200
    jepsen-like sim --replay 17 --out /tmp/seed-17
    jepsen-like run --nodes 3 --workload queue --nemesis kill,pause,kill-controller --time 60 --rate 500 --seed 7
    jepsen-like run --nodes 5 --nemesis ring,bridge,rolling-restart
    jepsen-like run --controllers 3 --brokers 3 --workload metadata --nemesis kill-controller
    jepsen-like run --workload subscribe --nemesis kill,pause,kill-coordinator,pause-member
    jepsen-like run --workload subscribe --nemesis pause-member --planted commit-ignores-generation
    jepsen-like run --client confluent-kafka --idempotent --nemesis kill,kill-leader
    jepsen-like run --workload txn --nemesis kill,pause,kill-leader,kill-coordinator

Exit code 0 when every checker passes, 1 when one finds an anomaly, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import trio

from jepsen_like.nemesis import FAULTS
from jepsen_like.report import describe_report
from jepsen_like.run import RunConfig, run
from jepsen_like.sim import cli as sim_cli
from jepsen_like.sim.planted import PLANTED_BUGS, REAL_PROCESS_BUGS
from jepsen_like.sim.planted import get as get_planted


def _out_dir(given: str | None, name: str) -> str:
    if given:
        return given
    return os.path.join(
        tempfile.gettempdir(), f"jepsen-like-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )


def _shape(config: RunConfig) -> str:
    if config.controllers and config.brokers:
        return f"{config.controllers} controllers + {config.brokers} brokers"
    return f"{config.nodes} combined nodes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jepsen-like", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="~30 s: kill the active controller, then a partition leader"
    )
    demo.add_argument("--out")
    sim = commands.add_parser(
        "sim", help="the deterministic simulation: many seeds, or --replay one"
    )
    sim_cli.add_arguments(sim)
    runner = commands.add_parser("run", help="a run with a random fault schedule")
    runner.add_argument("--nodes", type=int, default=3, help="combined controller+broker nodes")
    runner.add_argument("--controllers", type=int, default=0, help="separate roles, with --brokers")
    runner.add_argument("--brokers", type=int, default=0)
    runner.add_argument(
        "--workload",
        default="queue",
        choices=["queue", "metadata", "subscribe", "txn"],
        help="subscribe: the queue's producers, read by a consumer group of --members processes; "
        "txn: transactional producers and read_committed readers (through --client)",
    )
    runner.add_argument("--members", type=int, default=3, help="subscribe: group members")
    runner.add_argument(
        "--planted",
        help=f"plant a bug in every node (real processes): {', '.join(REAL_PROCESS_BUGS + PLANTED_BUGS)}",
    )
    runner.add_argument(
        "--client",
        default="pykraft",
        choices=["pykraft", "confluent-kafka"],
        help="the queue and txn workloads' client: pykraft's own, or librdkafka",
    )
    runner.add_argument(
        "--idempotent",
        action="store_true",
        help="confluent-kafka queue: idempotent producers (5 in flight); a duplicate is an anomaly",
    )
    runner.add_argument(
        "--txn-abort", type=float, default=0.2, help="txn: the share of transactions aborted"
    )
    runner.add_argument("--nemesis", default="kill", help=f"comma-separated: {', '.join(FAULTS)}")
    runner.add_argument("--time", type=float, default=60.0, help="seconds of workload")
    runner.add_argument(
        "--rate",
        type=float,
        help="sends per second, all producers (default 500; txn: transactions per second, 20)",
    )
    runner.add_argument("--seed", type=int, default=0)
    runner.add_argument("--interval", type=float, default=5.0, help="quiet seconds between faults")
    runner.add_argument("--fault-duration", type=float, default=4.0)
    runner.add_argument("--acks", default="all", choices=["all", "1"])
    runner.add_argument("--unclean", action="store_true", help="unclean leader election (unsafe)")
    runner.add_argument("--corrupt-on-restart", action="store_true")
    runner.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "sim":
        return sim_cli.main(args)
    if args.command == "demo":
        config = RunConfig(
            out=_out_dir(args.out, "demo"),
            time_s=30.0,
            rate=300.0,
            interval_s=4.0,
            fault_duration_s=3.5,
            scripted=("kill-controller", "kill-leader", "pause"),
            seed=1,
        )
    else:
        faults = tuple(
            f.strip() for f in args.nemesis.split(",") if f.strip() and f.strip() != "none"
        )
        bad = set(faults) - set(FAULTS)
        if bad:
            parser.error(
                f"unknown nemesis {', '.join(sorted(bad))}; choose from {', '.join(FAULTS)}"
            )
        if args.planted is not None:
            try:
                get_planted(args.planted)
            except ValueError as error:
                parser.error(str(error))
        if args.idempotent and (args.client != "confluent-kafka" or args.workload != "queue"):
            parser.error("--idempotent goes with --client confluent-kafka and the queue workload")
        if bool(args.controllers) != bool(args.brokers):
            parser.error("--controllers and --brokers go together")
        config = RunConfig(
            out=_out_dir(args.out, "run"),
            nodes=args.nodes,
            controllers=args.controllers,
            brokers=args.brokers,
            workload=args.workload,
            client=args.client,
            idempotent=args.idempotent,
            txn_abort_probability=args.txn_abort,
            faults=faults,
            time_s=args.time,
            rate=args.rate
            if args.rate is not None
            else (20.0 if args.workload == "txn" else 500.0),
            seed=args.seed,
            interval_s=args.interval,
            fault_duration_s=args.fault_duration,
            acks=-1 if args.acks == "all" else 1,
            min_insync_replicas=2 if args.acks == "all" else 1,
            unclean_leader_election=args.unclean,
            corrupt_on_restart=args.corrupt_on_restart,
            members=args.members,
            planted_bug=args.planted,
        )
    print(
        f"jepsen-like: {_shape(config)}, {config.workload} workload, faults {', '.join(config.scripted or config.faults) or 'none'}, "
        f"{config.time_s:.0f} s of workload; report in {config.out}",
        flush=True,
    )
    result = trio.run(run, config)
    print(result.summary)
    print("\n" + describe_report(result.out))
    return 0 if result.valid else 1


if __name__ == "__main__":
    sys.exit(main())
