"""A cluster of real `pykraft-server` processes on this machine.

Each node is its own OS process (`python -m broker.cli start --config ...`) with its
own data directory and ports chosen free at start; its output goes to
`<root>/node-N.log`. Nodes can be killed (SIGKILL), stopped (SIGTERM), paused
(SIGSTOP) and resumed, and restarted on the same directory and ports. jepsen_like
builds its faults on it. `Supervisor` is what `pykraft-server cluster` runs: it keeps
the cluster up when a node dies, says how it died, and restarts it on request
(`pykraft-server cluster restart N --root DIR`, see `request_restart`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

import attrs
import trio

from broker import meta_properties
from broker.cluster_plan import plan_cluster
from broker.config import BROKER_LISTENER, CONTROLLER_LISTENER, ConfigError, NodeConfig, load
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.rpc import RpcClient

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.2  # how soon the supervisor sees an exit or a restart request
RESTART_TIMEOUT_S = READY_TIMEOUT_S + 30.0  # `cluster restart` waits this long for an answer
SUPERVISOR_PID_FILE = "supervisor.pid"
CONTROL_DIR = "control"  # restart requests and their replies, under the cluster's root
REQUEST_NAME = re.compile(r"restart-(\d+)-(\d+)\.request")
REQUESTS_PER_POLL_MAX = 100
NODE_CONFIG_NAME = re.compile(r"node-\d+\.toml")
NODES_MAX = 1000  # node configs looked at under one root


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
        launcher: tuple[str, ...] = ("-m", "broker.cli"),
        **settings: Any,
    ) -> None:
        """`launcher`: what follows the interpreter in a node's command line, before
        `start --config ...` (the fault lab starts nodes with a planted bug this way)."""
        self.root = os.path.abspath(root)
        self.launcher = launcher
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
                    *self.launcher,
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

    def poll_ready(self, node_id: int) -> bool:
        """Whether the node has printed its ready line now; never waits for it."""
        process = self.processes[node_id]
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 0)
        return bool(readable) and b"ready" in process.stdout.readline()

    def port_taken(self, node_id: int) -> tuple[str, int] | None:
        """One of the node's listener addresses something already listens on (the node
        itself, started by hand?), or None."""
        return address_taken(self.configs[node_id])

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


def address_taken(config: NodeConfig) -> tuple[str, int] | None:
    """One of `config`'s listener addresses that something listens on, or None.
    SO_REUSEADDR as the server binds, so a connection in TIME_WAIT does not count."""
    for address in sorted(config.listeners.values()):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError:
                return address
    return None


def describe_exit(code: int) -> str:
    """How a process ended, from its Popen return code: "was killed by SIGKILL"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class SupervisorLock:
    """`<root>/supervisor.pid`, flock'ed by the supervisor of the cluster in `root`.

    The kernel drops the lock when its holder dies, SIGKILL included, so a file left
    behind never names a live supervisor (and nothing is ever sent to a reused pid).
    """

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, SUPERVISOR_PID_FILE)
        self.held = False
        self._file: IO[str] | None = None

    def __enter__(self) -> SupervisorLock:
        self._file = open(self.path, "a+", encoding="ascii")  # held until __exit__
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self
        self.held = True
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        return self

    def holder_pid(self) -> int | None:
        return supervisor_pid(os.path.dirname(self.path))

    def __exit__(self, *exc: object) -> None:
        assert self._file is not None
        if self.held:
            os.remove(self.path)  # before the lock goes, so no one reads a dead pid
        self._file.close()


def supervisor_pid(root: str) -> int | None:
    """The pid of the supervisor running the cluster in `root`, or None if none is."""
    try:
        file = open(os.path.join(root, SUPERVISOR_PID_FILE), encoding="ascii")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = file.read().strip()
            return int(text) if text.isdigit() else 0  # 0: it has not written its pid yet
        fcntl.flock(file, fcntl.LOCK_UN)
        return None


@attrs.define
class _Starting:
    """A node started but not ready yet, and the restart requests waiting for it."""

    deadline_s: float
    replies: list[str] = attrs.Factory(list)


class Supervisor:
    """Owns a LocalCluster's node processes while `pykraft-server cluster` runs.

    A node that exits is reported (which one, how it died, the command that brings it
    back) and the others go on serving. `pykraft-server cluster restart N --root DIR`
    asks for it back with a request file in `DIR/control/`; the supervisor starts it
    again on the same config, data directory and ports and answers in a reply file once
    it is ready or has failed. Files, not a socket or a signal: no path-length limit,
    nothing is sent to a stale pid, and this loop wakes every POLL_INTERVAL_S anyway.
    A node running outside the supervisor (its ports are taken) is not started twice.
    SIGINT or SIGTERM (`received`) stops every node.
    """

    def __init__(self, cluster: LocalCluster, received: list[int]) -> None:
        self.cluster = cluster
        self.received = received
        self.control_dir = os.path.join(cluster.root, CONTROL_DIR)
        self.starting: dict[int, _Starting] = {}
        self.down: set[int] = set()  # exited, reported, waiting for a restart request
        self.serving = False  # every node was ready once; until then a failure stops all

    def run(self) -> int:
        os.makedirs(self.control_dir, exist_ok=True)
        self._clear_control_dir()
        try:
            started = self._start_all()
            self.serving = started
            if started:
                self._print_cluster()
                while not self.received:
                    self._watch()
                    self._take_requests()
                    time.sleep(POLL_INTERVAL_S)
            self._stop_all()
            return 0 if started or self.received else 1
        finally:
            self._clear_control_dir()

    def _start_all(self) -> bool:
        """Every node started and ready (True), or one failed or a signal came (False)."""
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        for node_id in sorted(self.cluster.configs):
            self.cluster.start(node_id, wait=False)
            self.starting[node_id] = _Starting(deadline_s)
        while self.starting and not self.received and not self.down:
            self._watch()
            time.sleep(POLL_INTERVAL_S)
        return not self.starting and not self.received and not self.down

    def _print_cluster(self) -> None:
        cluster = self.cluster
        for node_id, config in sorted(cluster.configs.items()):
            listeners = " ".join(f"{n}={h}:{p}" for n, (h, p) in sorted(config.listeners.items()))
            _say(
                f"node {node_id} ({'+'.join(config.roles)}) pid {cluster.pid(node_id)} {listeners}"
            )
        _say(f"bootstrap servers: {cluster.bootstrap_servers()}")
        _say(
            f"data and logs under {cluster.root}; this supervisor is pid {os.getpid()}: "
            "Ctrl-C or SIGTERM stops the cluster"
        )

    def _stop_all(self) -> None:
        # Broker-only nodes first, so their controlled shutdowns find a controller;
        # then the rest together (one by one, the last would wait for a lost quorum).
        cluster = self.cluster
        brokers_only = [i for i in cluster.broker_ids if not cluster.configs[i].is_controller]
        cluster.stop_many(brokers_only)
        cluster.stop_many(sorted(cluster.configs))

    # ------------------------------------------------------------------ node states

    def _watch(self) -> None:
        """Exits reported, ready lines read, starts that took too long killed."""
        for node_id in sorted(self.cluster.configs):
            if node_id in self.down:
                continue
            if not self.cluster.is_running(node_id):
                self._went_down(node_id)
                continue
            starting = self.starting.get(node_id)
            if starting is None:
                continue
            if self.cluster.poll_ready(node_id):
                del self.starting[node_id]
                if starting.replies:  # a restart; the first start is printed as a table
                    message = f"node {node_id} restarted: pid {self.cluster.pid(node_id)}, ready"
                    _say(message)
                    self._answer(starting.replies, ok=True, message=message)
            elif time.monotonic() > starting.deadline_s:
                self.cluster.kill(node_id)
                self._went_down(node_id, f"not ready in {READY_TIMEOUT_S:.0f}s, so killed")

    def _went_down(self, node_id: int, why: str = "") -> None:
        cluster = self.cluster
        code = cluster._reap(node_id, 0)
        assert code is not None, node_id
        starting = self.starting.pop(node_id, None)
        self.down.add(node_id)
        how = why or describe_exit(code) + (" before it was ready" if starting else "")
        message = (
            f"node {node_id} (pid {cluster.pid(node_id)}) {how}; see {cluster.log_path(node_id)}"
        )
        _say(message)
        if not self.serving:
            _say(f"node {node_id} did not start; stopping the cluster")
            return
        root = shlex.quote(cluster.root)
        _say(f"  restart it, with its data: pykraft-server cluster restart {node_id} --root {root}")
        _say(
            "  (or run it yourself, outside this supervisor: pykraft-server start --config "
            f"{shlex.quote(cluster.config_path(node_id))})"
        )
        if starting is not None:
            self._answer(starting.replies, ok=False, message=message)

    # ------------------------------------------------------------------ restart requests

    def _take_requests(self) -> None:
        names = sorted(os.listdir(self.control_dir))[:REQUESTS_PER_POLL_MAX]
        for name in names:
            match = REQUEST_NAME.fullmatch(name)
            if match is None:
                continue
            path = os.path.join(self.control_dir, name)
            os.remove(path)
            self._restart(int(match[1]), path.removesuffix(".request") + ".reply")

    def _restart(self, node_id: int, reply: str) -> None:
        cluster = self.cluster
        if node_id not in cluster.configs:
            nodes = ", ".join(map(str, sorted(cluster.configs)))
            self._answer([reply], ok=False, message=f"no node {node_id}; the nodes are {nodes}")
            return
        if node_id in self.starting:
            self.starting[node_id].replies.append(reply)
            return
        if node_id not in self.down:
            message = f"node {node_id} is already running (pid {cluster.pid(node_id)})"
            self._answer([reply], ok=False, message=message)
            return
        taken = cluster.port_taken(node_id)
        if taken is not None:
            message = (
                f"node {node_id} is already running outside this supervisor "
                f"({taken[0]}:{taken[1]} is taken); stop it first to have it supervised"
            )
            self._answer([reply], ok=False, message=message)
            return
        cluster.start(node_id, wait=False)
        self.down.discard(node_id)
        self.starting[node_id] = _Starting(time.monotonic() + READY_TIMEOUT_S, [reply])
        _say(f"node {node_id} restarting (pid {cluster.pid(node_id)}) with its data")

    def _answer(self, replies: list[str], *, ok: bool, message: str) -> None:
        for reply in replies:
            with open(reply + ".tmp", "w", encoding="utf-8") as file:
                json.dump({"ok": ok, "message": message}, file)
            os.replace(reply + ".tmp", reply)  # the requester never reads half of it

    def _clear_control_dir(self) -> None:
        for name in sorted(os.listdir(self.control_dir))[:REQUESTS_PER_POLL_MAX]:
            os.remove(os.path.join(self.control_dir, name))


def request_restart(root: str, node_id: int, timeout_s: float = RESTART_TIMEOUT_S) -> int:
    """`pykraft-server cluster restart N --root DIR`: ask DIR's supervisor to restart
    node N and wait for its answer. An exit code; the answer is printed."""
    root = os.path.abspath(root)
    config_path = os.path.join(root, f"node-{node_id}.toml")
    if not os.path.exists(config_path):
        print(f"pykraft-server: no node {node_id} in {root} (no {config_path})", file=sys.stderr)
        return 2
    if supervisor_pid(root) is None:
        print(
            f"pykraft-server: no `pykraft-server cluster` runs {root}; start the node "
            f"yourself: pykraft-server start --config {shlex.quote(config_path)}",
            file=sys.stderr,
        )
        return 1
    base = os.path.join(root, CONTROL_DIR, f"restart-{node_id}-{os.getpid()}")
    with open(base + ".request.tmp", "w", encoding="utf-8") as file:
        file.write(f"{node_id}\n")
    os.replace(base + ".request.tmp", base + ".request")
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        answer = _read_answer(base + ".reply")
        if answer is None and supervisor_pid(root) is None:
            answer = _read_answer(base + ".reply") or {
                "ok": False,
                "message": f"the supervisor of {root} stopped before it answered",
            }
        if answer is not None:
            print(answer["message"], file=sys.stdout if answer["ok"] else sys.stderr)
            return 0 if answer["ok"] else 1
        time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        os.remove(base + ".request")
    print(f"pykraft-server: no answer from the supervisor in {timeout_s:.0f}s", file=sys.stderr)
    return 1


def _nodes_still_listening(root: str) -> list[int]:
    """Nodes whose `<root>/node-N.toml` ports are taken: left running by a supervisor
    that was SIGKILLed, or started by hand. A new cluster would rewrite their configs
    and start a second process on each of their data directories."""
    taken = []
    names = sorted(n for n in os.listdir(root) if NODE_CONFIG_NAME.fullmatch(n))
    for name in names[:NODES_MAX]:
        try:
            config = load(os.path.join(root, name))
        except (ConfigError, OSError):
            continue  # not a config any node can be running on
        if address_taken(config) is not None:
            taken.append(config.node_id)
    return taken


def _read_answer(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as file:
            answer: dict[str, Any] = json.load(file)
    except FileNotFoundError:
        return None
    os.remove(path)
    return answer


def _say(line: str) -> None:
    print(line, flush=True)


def run_until_stopped(root: str, *, controllers: int, brokers: int, combined: int) -> int:
    """`pykraft-server cluster`: start the nodes, then supervise them until a signal."""
    if controllers + combined == 0:
        controllers, brokers = (controllers or 3), (brokers or 3)
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Before LocalCluster rewrites the node configs: they are a running cluster's.
        with SupervisorLock(root) as lock:
            if not lock.held:
                print(
                    f"pykraft-server: a supervisor (pid {lock.holder_pid()}) already runs "
                    f"the cluster in {root}",
                    file=sys.stderr,
                )
                return 1
            leftover = _nodes_still_listening(root)
            if leftover:
                print(
                    f"pykraft-server: nodes {leftover} of an earlier cluster in {root} are "
                    "still running (their ports are taken); stop them first",
                    file=sys.stderr,
                )
                return 1
            cluster = LocalCluster(
                root, controllers=controllers, brokers=brokers, combined=combined
            )
            with cluster:
                return Supervisor(cluster, received).run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
