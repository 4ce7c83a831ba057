"""A three-voter metadata quorum on loopback: commit, kill the leader, watch it fail over.

    python -m kraft.demo [--records 5000] [--dir PATH]

Starts three voters in this process (real TCP on 127.0.0.1, real files in a temporary
directory unless --dir is given), commits records, kills the leader without warning,
measures how long until a new leader commits, restarts the killed voter and waits for
it to catch up. Prints what happens as it goes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import trio

from kraft.local_quorum import LocalQuorum


async def demo(records: int, root: str) -> None:
    async with trio.open_nursery() as nursery:
        quorum = LocalQuorum(nursery, root, cluster_id="demo")
        started = trio.current_time()
        await quorum.start_all()
        voters = ", ".join(f"{i}@{h}:{p}" for i, (h, p) in sorted(quorum.addresses.items()))
        print(f"voters: {voters}")
        print(f"data:   {root}")
        leader = await quorum.leader()
        print(
            f"leader: node {leader.config.local_id} in epoch {leader.leader().epoch} "
            f"after {1000 * (trio.current_time() - started):.0f} ms"
        )
        started = trio.current_time()
        for first in range(0, records, 500):
            count = min(500, records - first)
            await quorum.commit([f"record-{first + i}".encode() for i in range(count)])
        seconds = trio.current_time() - started
        print(
            f"commit: {records} records in {seconds:.2f} s ({records / seconds:,.0f}/s), "
            f"high-water mark {leader.high_watermark}"
        )

        old = await quorum.leader()
        old_id = old.config.local_id
        print(f"kill:   node {old_id} (leader of epoch {old.leader().epoch}), no warning")
        killed_at = trio.current_time()
        old.kill()
        new = await quorum.leader(excluding=old_id)
        elected_ms = 1000 * (trio.current_time() - killed_at)
        await quorum.commit([b"after-failover"], excluding=old_id)
        committed_ms = 1000 * (trio.current_time() - killed_at)
        print(
            f"failover: node {new.config.local_id} leads epoch {new.leader().epoch} after "
            f"{elected_ms:.0f} ms; first commit after {committed_ms:.0f} ms"
        )

        restarted = await quorum.start(old_id)
        while restarted.high_watermark < new.high_watermark:
            await trio.sleep(0.01)
        role = "follower" if restarted.leader().leader_id != old_id else "leader"
        print(
            f"rejoin: node {old_id} restarted as {role} of node "
            f"{restarted.leader().leader_id}, caught up to {restarted.high_watermark}"
        )
        quorum.kill_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--dir", default=None, help="keep the data here (default: temporary)")
    args = parser.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="pykraft-demo-")
    try:
        trio.run(demo, args.records, root)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
