"""A three-voter metadata quorum on loopback: commit, kill the leader, watch it fail over.

    python -m kraft.demo [--records 5000] [--dir PATH]

Starts three voters in this process (real TCP on 127.0.0.1, real files in a temporary
directory unless --dir is given), commits records, kills the leader without warning,
measures how long until a new leader commits, restarts the killed voter and waits for
it to catch up. Prints what happens as it goes.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile

import trio

from kraft.raft.core import NotLeaderError, RaftConfig
from kraft.runtime import RaftNode

VOTERS = frozenset({1, 2, 3})


async def _leader(nodes: dict[int, RaftNode], excluding: int | None = None) -> RaftNode:
    while True:
        for node_id, node in nodes.items():
            if (
                node_id != excluding
                and node.running
                and node.core is not None
                and node.core.is_leader()
            ):
                return node
        await trio.sleep(0.005)


async def _commit(nodes: dict[int, RaftNode], values: list[bytes]) -> int:
    while True:
        leader = await _leader(nodes)
        try:
            offset = leader.propose(values)
            await leader.wait_committed(offset)
            return offset
        except NotLeaderError:
            await trio.sleep(0.005)


async def demo(records: int, root: str) -> None:
    addresses: dict[int, tuple[str, int]] = {}
    nodes: dict[int, RaftNode] = {}
    async with trio.open_nursery() as nursery:

        async def start(node_id: int) -> RaftNode:
            node = RaftNode(
                config=RaftConfig(local_id=node_id, voters=VOTERS, cluster_id="demo"),
                directory=f"{root}/node-{node_id}",
                voter_addresses=addresses,
                rng=random.Random(),
                port=addresses.get(node_id, ("", 0))[1],
            )
            addresses[node_id] = ("127.0.0.1", await nursery.start(node.run))
            nodes[node_id] = node
            return node

        for node_id in sorted(VOTERS):
            await start(node_id)
        print(f"voters: {', '.join(f'{i}@{h}:{p}' for i, (h, p) in sorted(addresses.items()))}")
        print(f"data:   {root}")
        started = trio.current_time()
        leader = await _leader(nodes)
        print(
            f"leader: node {leader.config.local_id} in epoch {leader.leader().epoch} "
            f"after {1000 * (trio.current_time() - started):.0f} ms"
        )
        started = trio.current_time()
        for start_index in range(0, records, 500):
            count = min(500, records - start_index)
            await _commit(nodes, [f"record-{start_index + i}".encode() for i in range(count)])
        seconds = trio.current_time() - started
        print(
            f"commit: {records} records in {seconds:.2f} s ({records / seconds:,.0f}/s), "
            f"high-water mark {leader.high_watermark}"
        )

        old = await _leader(nodes)
        old_id = old.config.local_id
        print(f"kill:   node {old_id} (leader of epoch {old.leader().epoch}), no warning")
        killed_at = trio.current_time()
        old.kill()
        new = await _leader(nodes, excluding=old_id)
        elected_ms = 1000 * (trio.current_time() - killed_at)
        await _commit(nodes, [b"after-failover"])
        committed_ms = 1000 * (trio.current_time() - killed_at)
        print(
            f"failover: node {new.config.local_id} leads epoch {new.leader().epoch} after "
            f"{elected_ms:.0f} ms; first commit after {committed_ms:.0f} ms"
        )

        restarted = await start(old_id)
        while restarted.high_watermark < new.high_watermark:
            await trio.sleep(0.01)
        role = "follower" if restarted.leader().leader_id != old_id else "leader"
        print(
            f"rejoin: node {old_id} restarted as {role} of node "
            f"{restarted.leader().leader_id}, caught up to {restarted.high_watermark}"
        )
        for node in nodes.values():
            node.kill()


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
