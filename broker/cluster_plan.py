"""The node configurations of a local cluster: ids, roles, free ports, data directories.

Shared by `broker.local_cluster` (one OS process per node), the in-process test
clusters and jepsen_like.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Any

from broker.config import (
    BROKER,
    BROKER_LISTENER,
    CONTROLLER,
    CONTROLLER_LISTENER,
    REPLICATION_LISTENER,
    NodeConfig,
)

HOST = "127.0.0.1"


_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Ports free right now on loopback, below the OS's ephemeral range.

    A port the OS hands out for bind(0) comes from the ephemeral range, which is also
    where outgoing connections get their local ports: while a node is down, a client's
    connection may take its port, and the node cannot listen again when it restarts
    (EADDRINUSE, seen in a rolling restart). Ports below the range are never taken
    that way. Held together while chosen, so that they differ; and never one this
    process chose before, since a port chosen earlier may not be bound yet (a cluster
    plan, then the proxies in front of it).
    """
    low = _ephemeral_range()[0]
    rng = random.Random()
    sockets: list[socket.socket] = []
    chosen: list[int] = []
    try:
        attempts = 0
        while len(chosen) < count and attempts < 50 * count and low > 10_000:
            attempts += 1
            port = rng.randrange(10_000, low)
            if port in chosen or port in _HANDED_OUT:
                continue
            sock = socket.socket()
            try:
                sock.bind((HOST, port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            chosen.append(port)
        while len(chosen) < count:  # no room below the range: let the OS choose
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
            chosen.append(sock.getsockname()[1])
        _HANDED_OUT.update(chosen)
        return chosen
    finally:
        for sock in sockets:
            sock.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as file:
            low, high = (int(part) for part in file.read().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535  # IANA's dynamic range: the default elsewhere


def plan_cluster(
    root: str,
    *,
    controllers: int = 0,
    brokers: int = 0,
    combined: int = 0,
    first_port: int | None = None,
    **settings: Any,
) -> list[NodeConfig]:
    """Combined nodes first (ids 1..), then controllers, then brokers.

    `settings` override NodeConfig's timeouts (e.g. broker_session_timeout_ms).
    `first_port` numbers the ports from there instead of asking the OS for free ones
    (the simulator's network has no OS behind it, and its runs must not vary).
    """
    if combined + controllers == 0:
        raise ValueError("a cluster needs at least one controller or combined node")
    both: tuple[str, ...] = (CONTROLLER, BROKER)
    roles = [both] * combined + [(CONTROLLER,)] * controllers + [(BROKER,)] * brokers
    count = 3 * len(roles)
    ports = iter(free_ports(count) if first_port is None else range(first_port, first_port + count))
    voters: dict[int, tuple[str, int]] = {}
    listeners: dict[int, dict[str, tuple[str, int]]] = {}
    for node_id, node_roles in enumerate(roles, start=1):
        listeners[node_id] = {}
        if CONTROLLER in node_roles:
            voters[node_id] = (HOST, next(ports))
            listeners[node_id][CONTROLLER_LISTENER] = voters[node_id]
        if BROKER in node_roles:
            listeners[node_id][BROKER_LISTENER] = (HOST, next(ports))
            listeners[node_id][REPLICATION_LISTENER] = (HOST, next(ports))
    return [
        NodeConfig(
            node_id=node_id,
            roles=node_roles,
            data_dir=os.path.join(root, f"node-{node_id}"),
            controller_quorum_voters=voters,
            listeners=listeners[node_id],
            **settings,
        )
        for node_id, node_roles in enumerate(roles, start=1)
    ]
