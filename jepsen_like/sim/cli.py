"""`jepsen-like sim`: many seeds of the deterministic simulation, or one replayed.

    jepsen-like sim --seeds 200                      # seeds 0..199, mixed faults
    jepsen-like sim --seeds 200 --planted hwm-ignores-followers
    jepsen-like sim --replay 17 --out /tmp/seed-17   # the same run again, with a report

One line per failing seed: the seed and the first violated property. Exit 1 if any
seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Any

from jepsen_like.sim.planted import PLANTED_BUGS
from jepsen_like.sim.runner import LOSSY_FAULTS, SIM_FAULTS, SimConfig, SimResult, simulate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--replay", type=int, help="run this one seed and write its report")
    parser.add_argument("--out", help="where --replay writes its report")
    parser.add_argument(
        "--faults",
        default=",".join(SIM_FAULTS),
        help=f"comma-separated, from {', '.join(SIM_FAULTS + LOSSY_FAULTS)}",
    )
    parser.add_argument("--time", type=float, default=10.0, help="simulated seconds of workload")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--planted", choices=PLANTED_BUGS, help="a deliberate bug to find")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)


def _config(args: argparse.Namespace, seed: int, out: str | None = None) -> SimConfig:
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    return SimConfig(
        seed=seed,
        nodes=args.nodes,
        faults=faults,
        time_s=args.time,
        planted_bug=args.planted,
        out=out,
    )


def _one(config: SimConfig) -> SimResult:
    return simulate(config)


def main(args: argparse.Namespace) -> int:
    unknown = {f.strip() for f in args.faults.split(",") if f.strip()} - set(
        SIM_FAULTS + LOSSY_FAULTS
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
            f"in {time.monotonic() - started:.1f} s; report: {out}"
        )
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
        extra = f" --planted {args.planted}" if args.planted else ""
        extra += f" --faults {args.faults} --time {args.time:g} --nodes {args.nodes}"
        print(f"replay one: jepsen-like sim --replay {failures[0].seed}{extra} --out DIR")
    return 1 if failures else 0
