"""What scale_bench reads of a running server process, from /proc, and its clusters."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from collections.abc import Iterator

from broker.local_cluster import LocalCluster, NodeFailedToStart

MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` now."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / MB, 1)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of `pid` (the broker raises its own to the hard one)."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return -1


def raise_own_fd_limit() -> int:
    """This (client) process's soft descriptor limit lifted to its hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def log_tail(cluster: LocalCluster, node_id: int, chars: int = 600) -> str:
    with contextlib.suppress(OSError), open(cluster.log_path(node_id), "rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - chars))
        return log.read().decode(errors="replace")
    return ""


@contextlib.contextmanager
def one_broker(directory: str) -> Iterator[LocalCluster]:
    """1 controller + 1 broker, each its own process; every pid stopped after, and the
    data removed."""
    try:
        with LocalCluster(directory, controllers=1, brokers=1) as cluster:
            try:
                cluster.start_all()
            except NodeFailedToStart as error:
                tails = " | ".join(log_tail(cluster, n) for n in sorted(cluster.configs))
                raise NodeFailedToStart(f"{error}: {tails}") from error
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)
