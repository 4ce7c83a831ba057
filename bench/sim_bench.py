"""The simulator's speed: simulated seconds per wall second per job, seeds per minute.

    python bench/sim_bench.py [--seeds 6] [--time 10] [--jobs 1] [--rate 100] [--faults kill,...]

Runs seeds `first..first+seeds-1` of `jepsen-like sim` with its defaults (3 combined
nodes, the mixed fault schedule, `--time` simulated seconds of workload), each in its
own trio run, `--jobs` at a time (a fork pool, as `jepsen-like sim` does). Prints one
JSON line:
- sim_s_per_wall_s_per_job: the seeds' simulated seconds (cluster start, workload,
  heal, final read) over their own wall seconds, averaged over seeds: what one core
  does, whatever the pool size; sim_s_per_cpu_s: the same over the seeds' CPU
  seconds, which other processes on a busy machine disturb less;
- seeds_per_minute: seeds finished per wall minute with `--jobs` workers;
- the parameters, and whether every seed passed (a bench that fails proves nothing).
The figure is noisy on a shared machine: compare before and after in one session.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen_like.sim.runner import SIM_FAULTS, SimConfig, SimResult, simulate


def _timed(config: SimConfig) -> tuple[SimResult, float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    result = simulate(config)
    return result, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--time", type=float, default=10.0, help="simulated s of workload")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--faults", default=",".join(SIM_FAULTS))
    parser.add_argument("--planted", default=None)
    parser.add_argument("--rate", type=float, default=100.0, help="sends per simulated s")
    args = parser.parse_args()
    faults = tuple(f for f in args.faults.split(",") if f)
    configs = [
        SimConfig(
            seed=seed, time_s=args.time, faults=faults, planted_bug=args.planted, rate=args.rate
        )
        for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        timed = pool.map(_timed, configs, chunksize=1)
    wall_s = time.perf_counter() - started
    simulated_s = sum(result.simulated_s for result, _, _ in timed)
    per_seed = [result.simulated_s / seconds for result, seconds, _ in timed]
    per_cpu_s = simulated_s / sum(cpu_s for _, _, cpu_s in timed)
    print(
        json.dumps(
            {
                "bench": "sim",
                "sim_s_per_wall_s_per_job": round(sum(per_seed) / len(per_seed), 2),
                "sim_s_per_wall_s_per_job_min": round(min(per_seed), 2),
                "sim_s_per_cpu_s": round(per_cpu_s, 2),
                "seeds_per_minute": round(60 * len(configs) / wall_s, 1),
                "simulated_s": round(simulated_s, 1),
                "wall_s": round(wall_s, 2),
                "ops_per_seed": round(sum(r.ops for r, _, _ in timed) / len(timed)),
                "all_valid": all(result.valid for result, _, _ in timed),
                "seeds": args.seeds,
                "first_seed": args.first_seed,
                "time_s": args.time,
                "rate": args.rate,
                "jobs": args.jobs,
                "faults": list(faults),
                "planted": args.planted,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
