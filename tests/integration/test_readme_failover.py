"""The README's "A 3-node cluster, and a failover to watch", typed as a user would.

Only the real commands: `pykraft-server cluster --nodes 3` as a process (its output
read for the pids and bootstrap servers it prints) and one `pykraft` process per step.
SIGKILL a partition leader; the survivors keep serving with new leaders; the dead node
comes back through the command the supervisor prints and rejoins every ISR; SIGINT to
the supervisor stops every node. Kafka's default timeouts (a 9 s session), as the
README has them; deadlines are wide because they bound waiting, not speed.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import pytest

NODES = 3
TOPIC = "orders"
PARTITIONS = 3
LINES_BEFORE = 60
LINES_AFTER = 60
STARTUP_TIMEOUT_S = 90.0
FAILOVER_TIMEOUT_S = 60.0  # the broker session timeout is 9 s
REJOIN_TIMEOUT_S = 90.0
COMMAND_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0

NODE_LINE = re.compile(r"^node (\d+) \(controller\+broker\) pid (\d+) ")
BOOTSTRAP_LINE = re.compile(r"^bootstrap servers: (\S+)$")
PARTITION_LINE = re.compile(
    r"Partition: (\d+)\tLeader: (-?\d+)\tLeaderEpoch: (\d+)\tReplicas: ([\d,]*)\tIsr: ([\d,]*)"
)


@attrs.frozen(kw_only=True)
class PartitionView:
    leader: int
    leader_epoch: int
    isr: tuple[int, ...]


class Supervisor:
    """`pykraft-server cluster` as a child process; its output lines read by a thread."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "cluster", "--nodes", str(NODES), "--root", root],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r}: {self.seen}")
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    raise AssertionError(f"the supervisor exited: {self.seen}") from None
                continue
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match


@contextmanager
def supervised(root: str) -> Iterator[Supervisor]:
    supervisor = Supervisor(root)
    node_pids: set[int] = set()
    try:
        yield supervisor
    finally:
        if supervisor.process.poll() is None:
            supervisor.process.send_signal(signal.SIGINT)
            try:
                supervisor.process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                supervisor.process.kill()
                supervisor.process.wait()
        # Whatever the test saw the supervisor start must not outlive it.
        for line in supervisor.seen:
            for pid in re.findall(r"\bpid (\d+)", line):
                node_pids.add(int(pid))
        for pid in node_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pykraft(bootstrap: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "--bootstrap", bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def describe(bootstrap: str) -> dict[int, PartitionView] | None:
    """`pykraft topic describe orders`, parsed; None if it failed."""
    done = pykraft(bootstrap, "topic", "describe", TOPIC)
    if done.returncode != 0:
        return None
    views = {}
    for match in PARTITION_LINE.finditer(done.stdout):
        isr = tuple(int(i) for i in match[5].split(",") if i)
        views[int(match[1])] = PartitionView(
            leader=int(match[2]), leader_epoch=int(match[3]), isr=isr
        )
    return views if len(views) == PARTITIONS else None


def wait_describe(bootstrap: str, timeout_s: float, until: object) -> dict[int, PartitionView]:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = describe(bootstrap)
        if last is not None and until(last):  # type: ignore[operator]
            return last
        time.sleep(0.5)
    raise AssertionError(f"topic describe never got there in {timeout_s}s: {last}")


def produce(bootstrap: str, lines: list[str]) -> None:
    done = pykraft(
        bootstrap, "produce", TOPIC, "--acks", "all", stdin="".join(f"{v}\n" for v in lines)
    )
    assert done.returncode == 0, done.stderr
    assert f"produced {len(lines)} records" in done.stderr


def consume_all(bootstrap: str, count: int) -> list[str]:
    done = pykraft(
        bootstrap,
        "consume",
        TOPIC,
        "--from-beginning",
        "--max-messages",
        str(count),
        "--timeout-ms",
        "15000",
        "--format",
        "{value}",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.lab  # a CI step of its own: the default suite's budget
def test_readme_failover_walk_through(tmp_path) -> None:
    root = str(tmp_path / "demo")
    with supervised(root) as supervisor:
        pids = {}
        for _ in range(NODES):
            match = supervisor.wait_line(NODE_LINE, STARTUP_TIMEOUT_S)
            pids[int(match[1])] = int(match[2])
        bootstrap = supervisor.wait_line(BOOTSTRAP_LINE, STARTUP_TIMEOUT_S)[1]
        assert sorted(pids) == [1, 2, 3]

        created = pykraft(
            bootstrap, "topic", "create", TOPIC, "--partitions", str(PARTITIONS),
            "--replication-factor", "3",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        before = wait_describe(
            bootstrap,
            FAILOVER_TIMEOUT_S,
            lambda v: all(p.leader > 0 and len(p.isr) == NODES for p in v.values()),
        )
        acknowledged = [f"before-{i}" for i in range(LINES_BEFORE)]
        produce(bootstrap, acknowledged)

        victim = before[0].leader
        os.kill(pids[victim], signal.SIGKILL)  # kill -9 <pid of a leader>
        died = supervisor.wait_line(
            re.compile(rf"^node {victim} \(pid {pids[victim]}\) was killed by SIGKILL"), 30
        )
        assert died
        restart_line = supervisor.wait_line(re.compile(r"pykraft-server cluster restart .*$"), 5)
        after = wait_describe(
            bootstrap,
            FAILOVER_TIMEOUT_S,
            lambda v: all(p.leader > 0 and p.leader != victim for p in v.values()),
        )
        for partition, view in before.items():
            if view.leader == victim:
                assert after[partition].leader_epoch > view.leader_epoch
        for node, pid in pids.items():
            assert node == victim or alive(pid), f"node {node} died with the victim"

        more = [f"after-{i}" for i in range(LINES_AFTER)]
        produce(bootstrap, more)
        acknowledged += more
        read = consume_all(bootstrap, len(acknowledged))
        assert sorted(set(read)) == sorted(acknowledged)

        # The command the supervisor printed, run as printed (but with this Python).
        command = shlex.split(restart_line[0])
        assert command[:3] == ["pykraft-server", "cluster", "restart"], command
        restarted = subprocess.run(
            [sys.executable, "-m", "broker.cli", *command[1:]],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S + 30,
        )
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        new_pid = int(
            supervisor.wait_line(re.compile(rf"^node {victim} restarted: pid (\d+)"), 30)[1]
        )
        assert new_pid != pids[victim] and alive(new_pid)
        pids[victim] = new_pid
        wait_describe(
            bootstrap,
            REJOIN_TIMEOUT_S,
            lambda v: all(sorted(p.isr) == [1, 2, 3] for p in v.values()),
        )
        # Started twice, the node is refused: the supervisor owns it again.
        again = subprocess.run(
            [sys.executable, "-m", "broker.cli", *command[1:]],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        assert again.returncode != 0
        assert "already running" in again.stdout + again.stderr
        assert sorted(set(consume_all(bootstrap, len(acknowledged)))) == sorted(acknowledged)

        supervisor.process.send_signal(signal.SIGINT)
        assert supervisor.process.wait(EXIT_TIMEOUT_S) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids.values() if alive(pid)]
