"""Metadata quorum: election time after a leader dies, commit throughput, fsyncs per commit.

    python bench/raft_bench.py [--trials 20] [--records 200000]

Three voters run in one trio process over real TCP on loopback, with real files in a
temporary directory and Kafka's default quorum timeouts. Prints one JSON line:
- election_ms_p50 / _p99: from killing the leader (no resignation, like SIGKILL) to
  a new leader whose first proposal is committed;
- commit_records_per_s: 100-byte records proposed in batches of 1,000, with up to
  8 batches awaiting commit at once;
- fsyncs_per_commit: fdatasync calls on all three nodes per committed batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kraft.local_quorum import LocalQuorum
from kraft.raft.core import RaftConfig
from storage.fs import OsFile, OsFileSystem

VOTERS = frozenset({1, 2, 3})
RECORD = b"r" * 100
BATCH_RECORDS = 1_000
WINDOW_BATCHES = 8


class CountedFile(OsFile):
    __slots__ = ()
    syncs = 0  # every fdatasync of the run (data, indexes, checkpoints)

    def sync(self) -> None:
        CountedFile.syncs += 1
        super().sync()


class CountingFileSystem(OsFileSystem):
    """Real files whose fdatasync calls are counted."""

    @property
    def syncs(self) -> int:
        return CountedFile.syncs

    def open(self, path: str, *, create: bool = True) -> OsFile:
        handle = super().open(path, create=create)
        handle.__class__ = CountedFile
        return handle


async def election_trials(quorum: LocalQuorum, trials: int) -> list[float]:
    elapsed = []
    for _ in range(trials):
        await quorum.commit([b"probe"])
        leader = await quorum.leader()
        leader_id = leader.config.local_id
        started = trio.current_time()
        leader.kill()
        await quorum.commit([b"probe"], excluding=leader_id)
        elapsed.append((trio.current_time() - started) * 1000)
        await trio.sleep(0.05)  # let the killed node's tasks finish
        restarted = await quorum.start(leader_id)
        target = await quorum.leader(excluding=leader_id)
        while restarted.log.log_end_offset < target.log.log_end_offset:
            await trio.sleep(0.01)
    return elapsed


async def throughput(
    quorum: LocalQuorum, fs: CountingFileSystem, records: int
) -> tuple[float, float]:
    leader = await quorum.leader()
    batch = [RECORD] * BATCH_RECORDS
    batches = max(1, records // BATCH_RECORDS)
    syncs_before = fs.syncs
    started = trio.current_time()
    window = trio.Semaphore(WINDOW_BATCHES)

    async def commit(offset: int) -> None:
        await leader.wait_committed(offset)
        window.release()

    async with trio.open_nursery() as nursery:
        for _ in range(batches):
            await window.acquire()
            nursery.start_soon(commit, leader.propose(batch))
    seconds = trio.current_time() - started
    return batches * BATCH_RECORDS / seconds, (fs.syncs - syncs_before) / batches


async def main_async(trials: int, records: int) -> dict[str, float]:
    root = tempfile.mkdtemp(prefix="raft-bench-")
    try:
        async with trio.open_nursery() as nursery:
            fs = CountingFileSystem()
            quorum = LocalQuorum(nursery, root, voters=VOTERS, cluster_id="bench", fs=fs, seed=7919)
            await quorum.start_all()
            await quorum.commit([b"probe"])
            records_per_s, fsyncs = await throughput(quorum, fs, records)
            elections = await election_trials(quorum, trials)
            quorum.kill_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ordered = sorted(elections)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "trials": trials,
        "election_ms_p50": round(statistics.median(ordered), 1),
        "election_ms_p99": round(ordered[p99_index], 1),
        "election_ms_max": round(ordered[-1], 1),
        "commit_records_per_s": round(records_per_s),
        "fsyncs_per_commit": round(fsyncs, 2),
        "election_timeout_ms": RaftConfig(
            local_id=1, voters=VOTERS, cluster_id="x"
        ).election_timeout_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    print(json.dumps(trio.run(main_async, args.trials, args.records)))


if __name__ == "__main__":
    main()
