"""The cluster a run drives, as real OS processes: `broker.local_cluster` made async.

Nemeses, workloads and the observer speak to a cluster through a small interface that
both this class and the simulator's `jepsen_like.sim.cluster.SimCluster` offer:
`configs`, `controller_ids`, `broker_ids`, `bootstrap_servers()`, `is_running`,
`request`, `wait_images_agree`, `kill`, `pause`, `resume`, `damage_segment`, and the
awaitable `start`, `stop` and `start_all`.
"""

from __future__ import annotations

import os
import random
from typing import Any

import trio

from broker.config import NodeConfig
from broker.local_cluster import LocalCluster


class ProcessCluster:
    def __init__(
        self, root: str, configs: list[NodeConfig], *, planted_bug: str | None = None
    ) -> None:
        launcher = ("-m", "broker.cli")
        if planted_bug is not None:
            launcher = ("-m", "jepsen_like.planted_node", planted_bug)
        self.local = LocalCluster(root, configs=configs, launcher=launcher)
        self.configs = self.local.configs

    def __enter__(self) -> ProcessCluster:
        self.local.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.local.__exit__(*exc)

    @property
    def controller_ids(self) -> list[int]:
        return self.local.controller_ids

    @property
    def broker_ids(self) -> list[int]:
        return self.local.broker_ids

    def bootstrap_servers(self) -> str:
        return self.local.bootstrap_servers()

    def is_running(self, node: int) -> bool:
        return self.local.is_running(node)

    async def request(
        self, node: int, api_key: int, body: Any, *, listener: str = "", timeout_s: float = 10
    ) -> Any:
        return await self.local.request(node, api_key, body, listener=listener, timeout_s=timeout_s)

    async def wait_images_agree(self) -> str:
        return await self.local.wait_images_agree()

    async def start_all(self) -> None:
        await trio.to_thread.run_sync(self.local.start_all)

    async def start(self, node: int) -> None:
        await trio.to_thread.run_sync(self.local.start, node)

    async def stop(self, node: int) -> None:
        await trio.to_thread.run_sync(self.local.stop, node)

    def kill(self, node: int) -> None:
        self.local.kill(node)

    def pause(self, node: int) -> None:
        self.local.pause(node)

    def resume(self, node: int) -> None:
        self.local.resume(node)

    def damage_segment(self, node: int, rng: random.Random, topic: str) -> dict[str, Any] | None:
        """Cut the tail of, or flip a byte near the end of, the newest segment of one of
        the node's partitions of `topic` (the node is down). What was done, or None."""
        data_dir = self.configs[node].data_dir
        partitions = sorted(d for d in os.listdir(data_dir) if d.startswith(f"{topic}-"))
        if not partitions:
            return None
        directory = os.path.join(data_dir, rng.choice(partitions))
        segments = sorted(f for f in os.listdir(directory) if f.endswith(".log"))
        if not segments:
            return None
        path = os.path.join(directory, segments[-1])
        size = os.path.getsize(path)
        if size < 100:
            return None
        with open(path, "r+b") as file:
            if rng.random() < 0.5:
                file.truncate(size - rng.randrange(1, 60))
                what = "truncated"
            else:
                position = size - rng.randrange(1, 60)
                file.seek(position)
                byte = file.read(1)
                file.seek(position)
                file.write(bytes([byte[0] ^ 0xFF]))
                what = "flipped a byte of"
        return {"node": node, "file": path, "what": what}
