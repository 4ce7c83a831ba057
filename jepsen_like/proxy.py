"""A TCP proxy per directed link between nodes, to cut, slow or reset the network.

Every node reaches every other node (its quorum voters and the brokers it fetches
from) through a proxy of its own for that destination, so a fault can be one-way.
A link passes traffic, drops it (a blackhole: connections open but nothing arrives,
as with a firewall dropping packets, so peers see timeouts, not errors), delays it,
or resets it (connections are closed at once). Healing a link closes the connections
that lost data while it was down: their byte streams are no longer whole.
"""

from __future__ import annotations

import logging

import attrs
import trio

from broker.cluster_plan import free_ports
from broker.config import CONTROLLER_LISTENER, REPLICATION_LISTENER, NodeConfig

log = logging.getLogger(__name__)

PASS, DROP, RESET = "pass", "drop", "reset"
CHUNK = 256 * 1024


@attrs.define
class Link:
    source: int
    destination: int
    listener: str
    port: int  # where the source connects
    target: tuple[str, int]  # the destination's real listener


class FaultProxy:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.mode = PASS
        self.delay_s = 0.0
        self._connections: set[trio.CancelScope] = set()
        self.bytes_forwarded = 0
        self.bytes_dropped = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.link.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def set(self, mode: str, delay_s: float = 0.0) -> None:
        was = self.mode
        self.mode = mode
        self.delay_s = delay_s
        if mode == RESET or (mode == PASS and was != PASS):
            for scope in list(self._connections):
                scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.mode == RESET:
            await client.aclose()
            return
        try:
            upstream = await trio.open_tcp_stream(*self.link.target)
        except OSError:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client, upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._connections.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        while True:
            data = await source.receive_some(CHUNK)
            if not data:
                done.cancel()
                return
            if self.mode == DROP:
                self.bytes_dropped += len(data)
                continue
            if self.delay_s:
                await trio.sleep(self.delay_s)
            await sink.send_all(data)
            self.bytes_forwarded += len(data)


def route_through_proxies(configs: list[NodeConfig]) -> tuple[list[NodeConfig], list[Link]]:
    """The same cluster, with every node-to-node connection going through a proxy."""
    links: list[Link] = []
    wanted = []
    for source in configs:
        for destination in configs:
            if destination.node_id == source.node_id:
                continue
            for listener in (CONTROLLER_LISTENER, REPLICATION_LISTENER):
                if listener == REPLICATION_LISTENER and not (
                    source.is_broker and destination.is_broker
                ):
                    continue
                if listener in destination.listeners:
                    wanted.append((source.node_id, destination.node_id, listener))
    ports = iter(free_ports(len(wanted)))
    by_id = {c.node_id: c for c in configs}
    for source, destination, listener in wanted:
        links.append(
            Link(
                source=source,
                destination=destination,
                listener=listener,
                port=next(ports),
                target=by_id[destination].listeners[listener],
            )
        )
    rewritten = []
    for config in configs:
        voters = dict(config.controller_quorum_voters)
        overrides = {}
        for link in links:
            if link.source != config.node_id:
                continue
            if link.listener == CONTROLLER_LISTENER:
                voters[link.destination] = ("127.0.0.1", link.port)
            else:
                overrides[link.destination] = ("127.0.0.1", link.port)
        rewritten.append(
            attrs.evolve(
                config, controller_quorum_voters=voters, broker_address_overrides=overrides
            )
        )
    return rewritten, links


class LinkFaults:
    """Partitions as sets of cut directed links; subclasses say how a link is cut."""

    def cut_links(self, pairs: set[tuple[int, int]]) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def isolate(self, node: int, others: list[int]) -> set[tuple[int, int]]:
        pairs = {(node, o) for o in others} | {(o, node) for o in others}
        self.cut_links(pairs)
        return pairs

    def split(self, side: list[int], other: list[int]) -> set[tuple[int, int]]:
        pairs = {(a, b) for a in side for b in other} | {(b, a) for a in side for b in other}
        self.cut_links(pairs)
        return pairs

    def ring(self, nodes: list[int]) -> set[tuple[int, int]]:
        pairs = ring_cuts(nodes)
        self.cut_links(pairs)
        return pairs

    def bridge(self, nodes: list[int]) -> set[tuple[int, int]]:
        pairs = bridge_cuts(nodes)
        self.cut_links(pairs)
        return pairs


class Network(LinkFaults):
    """All the proxies of a cluster, and the partitions built from them."""

    def __init__(self, links: list[Link]) -> None:
        self.proxies = [FaultProxy(link) for link in links]

    async def start(self, nursery: trio.Nursery) -> None:
        for proxy in self.proxies:
            await nursery.start(proxy.serve)

    def cut_links(self, pairs: set[tuple[int, int]]) -> None:
        """Drop traffic on each directed (source, destination) link named."""
        for proxy in self.proxies:
            if (proxy.link.source, proxy.link.destination) in pairs:
                proxy.set(DROP)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.set(PASS)


def _both_ways(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return pairs | {(b, a) for a, b in pairs}


def ring_cuts(nodes: list[int]) -> set[tuple[int, int]]:
    """Jepsen's majorities ring: nodes in a circle, each seeing only its nearest
    neighbours, so every node sees a majority (itself included) but no two nodes see the
    same one. It needs at least 4 nodes: with 3, any node's majority is a neighbour."""
    count = len(nodes)
    if count < 4:
        raise ValueError(f"a majorities ring needs at least 4 nodes, not {count}")
    others_needed = count // 2  # a majority, less the node itself
    reach = -(-others_needed // 2)  # neighbours on each side
    kept = set()
    for i, node in enumerate(nodes):
        for step in range(1, reach + 1):
            kept.add((node, nodes[(i + step) % count]))
            kept.add((node, nodes[(i - step) % count]))
    every = {(a, b) for a in nodes for b in nodes if a != b}
    return every - _both_ways(kept)


def bridge_cuts(nodes: list[int]) -> set[tuple[int, int]]:
    """Two halves that cannot see each other, and one node in the middle that sees both."""
    if len(nodes) < 3:
        raise ValueError(f"a bridge needs at least 3 nodes, not {len(nodes)}")
    middle = len(nodes) // 2
    left, right = nodes[:middle], nodes[middle + 1 :]
    return _both_ways({(a, b) for a in left for b in right})
