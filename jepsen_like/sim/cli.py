"""`jepsen-like sim`: many seeds of the deterministic simulation, or one replayed.

    jepsen-like sim --seeds 200                      # seeds 0..199, mixed faults
    jepsen-like sim --planted list                   # the planted bugs, what each re-creates
    jepsen-like sim --seeds 20 --planted no-check-quorum    # with its targeted schedule
    jepsen-like sim --seeds 20 --scenario controller-cut-off  # the same, real code
    jepsen-like sim --seeds 200 --scenario transactions       # exactly-once, under faults
    jepsen-like sim --replay 17 --out /tmp/seed-17   # the same run again, with a report

A scenario (`jepsen_like/sim/scenarios.py`) fixes the faults, their timing and cluster
settings; `--planted NAME` runs its bug's scenario unless `--scenario` says otherwise;
`--faults` and `--time` override the scenario's. One line per failing seed: the seed
and the first violated property. Exit 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
from typing import Any

import attrs

from jepsen_like.report import describe_report
from jepsen_like.sim import hostile, planted
from jepsen_like.sim.runner import (
    LOSSY_FAULTS,
    SIM_FAULTS,
    TARGETED_FAULTS,
    TXN_FAULTS,
    SimConfig,
    SimResult,
    simulate,
)
from jepsen_like.sim.scenarios import SCENARIOS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--replay", type=int, help="run this one seed and write its report")
    parser.add_argument("--out", help="where --replay writes its report")
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        help="a named fault schedule (default: the planted bug's, else mixed)",
    )
    parser.add_argument(
        "--faults",
        help=f"comma-separated, from {', '.join(SIM_FAULTS + LOSSY_FAULTS + TARGETED_FAULTS + TXN_FAULTS + ('stall-end-txn',))}",
    )
    parser.add_argument("--time", type=float, help="simulated seconds of workload")
    parser.add_argument("--nodes", type=int, help="nodes (default: the scenario's, 3)")
    parser.add_argument(
        "--planted",
        help=f"a deliberate bug to find, or 'list': {', '.join(planted.PLANTED_BUGS)}",
    )
    parser.add_argument(
        "--hostile",
        type=int,
        default=0,
        help="also send this many hostile requests per seed (jepsen_like/sim/hostile.py)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)


def _scenario_name(args: argparse.Namespace) -> str:
    if args.scenario:
        return str(args.scenario)
    return planted.get(args.planted).scenario if args.planted else "mixed"


def _faults(args: argparse.Namespace) -> tuple[str, ...] | None:
    if args.faults is None:
        return None
    return tuple(f.strip() for f in args.faults.split(",") if f.strip())


def _config(args: argparse.Namespace, seed: int, out: str | None = None) -> SimConfig:
    more: dict[str, Any] = {"planted_bug": args.planted, "out": out}
    if args.nodes is not None:
        more["nodes"] = args.nodes
    faults = _faults(args)
    if faults is not None:
        more["faults"] = faults
    if args.time is not None:
        more["time_s"] = args.time
    config = SCENARIOS[_scenario_name(args)].config(seed, **more)
    if args.hostile:
        rng = random.Random(f"hostile-{seed}")
        config = attrs.evolve(
            config, hostile=hostile.random_requests(rng, args.hostile, config.time_s)
        )
    return config


def _replay_options(args: argparse.Namespace) -> str:
    options = f" --scenario {_scenario_name(args)}"
    options += f" --planted {args.planted}" if args.planted else ""
    options += f" --faults {args.faults}" if args.faults is not None else ""
    options += f" --time {args.time:g}" if args.time is not None else ""
    options += f" --hostile {args.hostile}" if args.hostile else ""
    return options + (f" --nodes {args.nodes}" if args.nodes is not None else "")


def _one(config: SimConfig) -> SimResult:
    return simulate(config)


def main(args: argparse.Namespace) -> int:
    if args.planted == "list":
        print(planted.describe())
        return 0
    if args.planted is not None:
        try:
            bug = planted.get(args.planted)
        except ValueError as error:
            print(error)
            return 2
        if not bug.simulated:
            print(f"planted bug {bug.name!r} is found by real processes: {bug.scenario}")
            return 2
    unknown = set(_faults(args) or ()) - set(
        SIM_FAULTS + LOSSY_FAULTS + TARGETED_FAULTS + TXN_FAULTS + ("stall-end-txn",)
    )
    if unknown:
        print(f"unknown faults: {', '.join(sorted(unknown))}")
        return 2
    if args.replay is not None:
        out = args.out or f"jepsen-like-sim-{args.replay}"
        started = time.monotonic()
        result = simulate(_config(args, args.replay, out))
        print(result.summary)
        print(
            f"\nseed {result.seed}: {'VALID' if result.valid else 'INVALID'}; "
            f"history digest {result.digest[:16]}; {result.simulated_s:.1f} simulated s "
            f"in {time.monotonic() - started:.1f} s"
        )
        print(describe_report(out))
        return 0 if result.valid else 1
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    configs = [_config(args, seed) for seed in seeds]
    started = time.monotonic()
    failures: list[SimResult] = []
    simulated = 0.0
    results: Any
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        results = pool.imap(_one, configs)
        for result in results:
            simulated += result.simulated_s
            if not result.valid:
                failures.append(result)
                print(f"seed {result.seed}: {result.first_violation}", flush=True)
    wall = time.monotonic() - started
    print(
        f"{len(configs)} seeds, {len(failures)} failed; {simulated:.0f} simulated s in "
        f"{wall:.0f} s ({simulated / wall:.1f} simulated s per wall s, "
        f"{60 * len(configs) / wall:.0f} seeds per minute with {args.jobs} jobs)"
    )
    if failures:
        extra = _replay_options(args)
        print(f"replay one: jepsen-like sim --replay {failures[0].seed}{extra} --out DIR")
    return 1 if failures else 0
