"""A cluster of real `pykraft-server` processes on this machine.

Each node is its own OS process (`python -m broker.cli start --config ...`) with its
own data directory and ports chosen free at start; its output goes to
`<root>/node-N.log`. Nodes can be killed (SIGKILL), stopped (SIGTERM), paused
(SIGSTOP) and resumed, and restarted on the same directory and ports. This is what
`pykraft-server cluster` runs and what jepsen_like builds its faults on.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from typing import Any

import trio

from broker import meta_properties
from broker.cluster_plan import plan_cluster
from broker.config import BROKER_LISTENER, CONTROLLER_LISTENER, NodeConfig
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.rpc import RpcClient

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class NodeFailedToStart(RuntimeError):
    pass


class LocalCluster:
    def __init__(
        self,
        root: str,
        *,
        controllers: int = 0,
        brokers: int = 0,
        combined: int = 0,
        cluster_id: str | None = None,
        configs: list[NodeConfig] | None = None,
        **settings: Any,
    ) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.cluster_id = cluster_id or meta_properties.new_cluster_id()
        planned = configs or plan_cluster(
            self.root, controllers=controllers, brokers=brokers, combined=combined, **settings
        )
        self.configs = {config.node_id: config for config in planned}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        for node_id, config in self.configs.items():
            with open(self.config_path(node_id), "w", encoding="utf-8") as file:
                file.write(config.to_toml())
            if not os.path.exists(os.path.join(config.data_dir, meta_properties.FILE_NAME)):
                meta_properties.format_directory(
                    config.data_dir, cluster_id=self.cluster_id, node_id=node_id
                )

    def config_path(self, node_id: int) -> str:
        return os.path.join(self.root, f"node-{node_id}.toml")

    def log_path(self, node_id: int) -> str:
        return os.path.join(self.root, f"node-{node_id}.log")

    @property
    def controller_ids(self) -> list[int]:
        return sorted(i for i, c in self.configs.items() if c.is_controller)

    @property
    def broker_ids(self) -> list[int]:
        return sorted(i for i, c in self.configs.items() if c.is_broker)

    def bootstrap_servers(self) -> str:
        return ",".join(
            "{}:{}".format(*self.configs[i].listeners[BROKER_LISTENER]) for i in self.broker_ids
        )

    def address(self, node_id: int, listener: str) -> tuple[str, int]:
        return self.configs[node_id].listeners[listener]

    async def request(
        self, node_id: int, api_key: int, body: Any, *, listener: str = "", timeout_s: float = 10
    ) -> Any:
        """One request to a node's broker listener (or its CONTROLLER one if it has none)."""
        config = self.configs[node_id]
        name = listener or (BROKER_LISTENER if config.is_broker else CONTROLLER_LISTENER)
        host, port = config.listeners[name]
        client = RpcClient(host, port, client_id="local-cluster", rng=random.Random())
        try:
            return await client.request(api_key, API_VERSION, body, timeout_s=timeout_s)
        finally:
            await client.aclose()

    async def wait_images_agree(self, node_ids: list[int] | None = None) -> str:
        """Until the nodes (default: all running) report one image; its digest."""
        while True:
            ids = node_ids or [i for i in sorted(self.configs) if self.is_running(i)]
            views = set()
            for node_id in ids:
                answer = await self.request(node_id, ApiKey.DESCRIBE_IMAGE, {})
                views.add((answer["next_offset"], answer["digest"]))
            if len(views) == 1:
                return views.pop()[1]
            await trio.sleep(0.05)

    # ------------------------------------------------------------------ processes

    def start(self, node_id: int, *, wait: bool = True) -> None:
        if self.is_running(node_id):
            raise RuntimeError(f"node {node_id} is already running")
        log = open(self.log_path(node_id), "ab")  # noqa: SIM115 - the child owns it
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "broker.cli",
                    "start",
                    "--config",
                    self.config_path(node_id),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the supervisor only
            )
        finally:
            log.close()
        self.processes[node_id] = process
        if wait:
            self.wait_ready(node_id)

    def wait_ready(self, node_id: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until the node prints its ready line (its listeners are bound)."""
        process = self.processes[node_id]
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        # The first line a node writes is this one, once it is unfenced (brokers).
        line = process.stdout.readline() if readable else b""
        if b"ready" not in line:
            self.kill(node_id)
            raise NodeFailedToStart(
                f"node {node_id} not ready in {timeout_s}s; see {self.log_path(node_id)}"
            )

    def start_all(self) -> None:
        for node_id in sorted(self.configs):
            self.start(node_id, wait=False)
        for node_id in sorted(self.configs):
            self.wait_ready(node_id)

    def is_running(self, node_id: int) -> bool:
        process = self.processes.get(node_id)
        return process is not None and process.poll() is None

    def pid(self, node_id: int) -> int:
        return self.processes[node_id].pid

    def kill(self, node_id: int) -> None:
        """SIGKILL: no flush, no resignation, no controlled shutdown."""
        self._signal(node_id, signal.SIGKILL)
        self._reap(node_id, STOP_TIMEOUT_S)

    def stop(self, node_id: int, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; SIGKILL if it has not stopped in time. Its exit code."""
        self._signal(node_id, signal.SIGTERM)
        return self._reap(node_id, timeout_s)

    def stop_many(self, node_ids: list[int], timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to all of them at once, then wait for each."""
        for node_id in node_ids:
            self._signal(node_id, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node_id in node_ids:
            self._reap(node_id, max(0.0, deadline - time.monotonic()))

    def pause(self, node_id: int) -> None:
        self._signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self._signal(node_id, signal.SIGCONT)

    def _signal(self, node_id: int, signum: signal.Signals) -> None:
        if self.is_running(node_id):
            os.kill(self.processes[node_id].pid, signum)

    def _reap(self, node_id: int, timeout_s: float) -> int | None:
        process = self.processes.get(node_id)
        if process is None:
            return None
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGCONT)  # a paused process cannot die of SIGTERM
            process.kill()
            code = process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return code

    def close(self) -> None:
        """Stop every node still running, at once."""
        for node_id in list(self.processes):
            if self.is_running(node_id):
                self._signal(node_id, signal.SIGCONT)
                self.kill(node_id)
            else:
                self._reap(node_id, 0)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_until_stopped(root: str, *, controllers: int, brokers: int, combined: int) -> int:
    """`pykraft-server cluster`: start, print the addresses, stop every node on a signal."""
    if controllers + combined == 0:
        controllers, brokers = (controllers or 3), (brokers or 3)
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = LocalCluster(root, controllers=controllers, brokers=brokers, combined=combined)
    try:
        cluster.start_all()
        for node_id, config in sorted(cluster.configs.items()):
            listeners = " ".join(f"{n}={h}:{p}" for n, (h, p) in sorted(config.listeners.items()))
            print(
                f"node {node_id} ({'+'.join(config.roles)}) pid {cluster.pid(node_id)} {listeners}"
            )
        print(f"bootstrap servers: {cluster.bootstrap_servers()}")
        print(f"data and logs under {cluster.root}; Ctrl-C stops the cluster", flush=True)
        while not received:
            if not all(cluster.is_running(node_id) for node_id in cluster.configs):
                dead = [i for i in cluster.configs if not cluster.is_running(i)]
                print(f"nodes {dead} exited; see their logs", file=sys.stderr)
                break
            time.sleep(0.2)
        # Broker-only nodes first, so their controlled shutdowns find a controller;
        # then the rest together (one by one, the last would wait for a lost quorum).
        brokers_only = [i for i in cluster.broker_ids if not cluster.configs[i].is_controller]
        cluster.stop_many(brokers_only)
        cluster.stop_many(sorted(cluster.configs))
        return 0
    finally:
        cluster.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
