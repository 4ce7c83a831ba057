"""An in-memory network of byte streams with per-link faults, for the simulator.

Each node (and each simulated client) talks through a `SimEnvironment`, which names
the node a connection comes from. A connection is two one-way pipes. A write is
delivered after the link's latency (drawn from the network's seeded generator),
never before an earlier write on the same pipe, as TCP keeps order. Faults, per
directed link or per node:

- cut (a blackhole): writes are dropped and new connections hang, then time out;
  when the link heals, connections that lost data are reset, since their byte
  streams are no longer whole (what the real fault proxy does too);
- pause: nothing is delivered to or from the node until it resumes; then all of it
  arrives at once, late (a zombie's stale messages);
- crash: every connection of the node is reset and its listeners vanish;
- stall: the connections open now between two nodes stop moving, both ways, until
  released; then what was written arrives, late (a middlebox that held a TCP
  connection's packets). Connections made meanwhile are not touched, so a client that
  timed out asks again on a new one while its first request is still on its way;
  a trap stalls a connection at its next request of one Kafka api (an EndTxn).

Only trio's clock is read, so under `MockClock` the network is as deterministic as
the scheduler.
"""

from __future__ import annotations

import errno
import math
import random
from collections import deque

import trio

from client.protocol.environment import Environment
from jepsen_like.proxy import LinkFaults

CONNECT_TIMEOUT_S = 3.0
EPOCH_MS = 1_767_225_600_000  # 2026-01-01: the simulated wall clock starts here


class _Pipe:
    """One direction of a connection."""

    def __init__(self, source: int, destination: int) -> None:
        self.source = source
        self.destination = destination
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: end of stream
        self.last_at = 0.0
        self.broken = False
        self.lost_data = False
        self.stalled = False
        self.lot = trio.lowlevel.ParkingLot()
        self.reverse: _Pipe | None = None
        # The receiver's wait, while it waits: a write moves its deadline up to the
        # write's delivery time rather than waking it early to wait again.
        self.waiting: trio.CancelScope | None = None

    def break_connection(self) -> None:
        self.broken = True
        if self.reverse is not None:
            self.reverse.broken = True

    def wake(self) -> None:
        self.lot.unpark_all()


class SimStream(trio.abc.Stream):
    def __init__(self, network: SimNetwork, outgoing: _Pipe, incoming: _Pipe) -> None:
        self.network = network
        self.outgoing = outgoing
        self.incoming = incoming
        self.closed = False
        self._eof = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("stream closed")
        if self.outgoing.broken:
            raise trio.BrokenResourceError("connection reset by peer")
        self.network.transmit(self.outgoing, bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        pipe = self.incoming
        waited = False  # a wait is this call's checkpoint; no second one is needed
        while True:
            if self.closed:
                raise trio.ClosedResourceError("stream closed")
            if pipe.broken:
                raise trio.BrokenResourceError("connection reset by peer")
            if self._eof:
                if not waited:
                    await trio.lowlevel.checkpoint()
                return b""
            wake_at = math.inf
            if pipe.queue and not self.network.holds(pipe):
                at, data = pipe.queue[0]
                if at <= trio.current_time():
                    pipe.queue.popleft()
                    if data is None:
                        self._eof = True
                        continue
                    if max_bytes is not None and len(data) > max_bytes:
                        pipe.queue.appendleft((at, data[max_bytes:]))
                        data = data[:max_bytes]
                    if not waited:
                        await trio.lowlevel.checkpoint()
                    return data
                wake_at = at
            if pipe.waiting is not None:
                raise trio.BusyResourceError("another task is receiving on this stream")
            with trio.move_on_at(wake_at) as pipe.waiting:
                try:
                    await pipe.lot.park()
                finally:
                    pipe.waiting = None
            waited = True

    def close_now(self) -> None:
        if not self.closed:
            self.closed = True
            self.network.transmit(self.outgoing, None)
            self.incoming.wake()

    async def aclose(self) -> None:
        self.close_now()
        await trio.lowlevel.checkpoint()


class SimListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, network: SimNetwork, address: tuple[str, int], node: int) -> None:
        self.network = network
        self.address = address
        self.node = node
        self.send, self.receive = trio.open_memory_channel[SimStream](math.inf)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self.receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    def close_now(self) -> None:
        self.network.unlisten(self)
        self.send.close()

    async def aclose(self) -> None:
        self.close_now()
        await trio.lowlevel.checkpoint()


class SimNetwork(LinkFaults):
    def __init__(
        self, rng: random.Random, *, latency_s: tuple[float, float] = (0.0002, 0.002)
    ) -> None:
        self.rng = rng
        self.latency_s = latency_s
        self.listeners: dict[tuple[str, int], SimListener] = {}
        self.cut: set[tuple[int, int]] = set()
        self.paused: set[int] = set()
        self.extra_delay_s: dict[tuple[int, int], float] = {}
        self.pipes: list[_Pipe] = []  # live ones, in creation order (determinism)
        # (source, destination) -> a Kafka api key: the next request of that api on the
        # link stalls its connection (`stall_at_request`).
        self.traps: dict[tuple[int, int], int] = {}
        self.connections = 0
        self.bytes_delivered = 0
        self.bytes_dropped = 0

    def environment(self, node: int, rng: random.Random) -> SimEnvironment:
        return SimEnvironment(self, node, rng)

    # --------------------------------------------------------------- delivery

    def holds(self, pipe: _Pipe) -> bool:
        return pipe.stalled or pipe.source in self.paused or pipe.destination in self.paused

    def delay(self, source: int, destination: int) -> float:
        low, high = self.latency_s
        return self.rng.uniform(low, high) + self.extra_delay_s.get((source, destination), 0.0)

    def transmit(self, pipe: _Pipe, data: bytes | None) -> None:
        if pipe.broken:
            return
        if (pipe.source, pipe.destination) in self.cut:
            pipe.lost_data = True
            self.bytes_dropped += len(data or b"")
            return
        if self.traps and data is not None:
            self._spring_trap(pipe, data)
        at = max(pipe.last_at, trio.current_time() + self.delay(pipe.source, pipe.destination))
        pipe.last_at = at
        pipe.queue.append((at, data))
        self.bytes_delivered += len(data or b"")
        if pipe.waiting is not None and not self.holds(pipe):
            pipe.waiting.deadline = min(pipe.waiting.deadline, at)

    # ------------------------------------------------------------ connections

    async def connect(self, source: int, host: str, port: int) -> SimStream:
        listener = self.listeners.get((host, port))
        destination = listener.node if listener is not None else -1
        if (source, destination) in self.cut or (destination, source) in self.cut:
            await trio.sleep(CONNECT_TIMEOUT_S)  # the SYN vanishes
            raise OSError(errno.ETIMEDOUT, f"connect to {host}:{port} timed out")
        await trio.sleep(self.delay(source, max(destination, 0)))
        listener = self.listeners.get((host, port))  # it may have gone meanwhile
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{host}:{port} refused")
        outgoing, incoming = _Pipe(source, listener.node), _Pipe(listener.node, source)
        outgoing.reverse, incoming.reverse = incoming, outgoing
        self.pipes += [outgoing, incoming]
        self.connections += 1
        listener.send.send_nowait(SimStream(self, incoming, outgoing))
        await trio.sleep(self.delay(listener.node, source))
        return SimStream(self, outgoing, incoming)

    def listen(self, node: int, host: str, port: int) -> SimListener:
        if (host, port) in self.listeners:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is in use")
        listener = SimListener(self, (host, port), node)
        self.listeners[(host, port)] = listener
        return listener

    def unlisten(self, listener: SimListener) -> None:
        if self.listeners.get(listener.address) is listener:
            del self.listeners[listener.address]

    # ----------------------------------------------------------------- faults

    def cut_links(self, pairs: set[tuple[int, int]]) -> None:
        self.cut |= pairs

    def heal(self) -> None:
        self.cut.clear()
        for pipe in self.pipes:
            if pipe.lost_data:
                pipe.break_connection()
        self._wake_all()

    def pause(self, node: int) -> None:
        self.paused.add(node)

    def resume(self, node: int) -> None:
        self.paused.discard(node)
        self._wake_all()

    def stall(self, one: int, other: int) -> int:
        """Stall the connections open now between `one` and `other`; how many."""
        stalled = [p for p in self.pipes if {p.source, p.destination} == {one, other}]
        for pipe in stalled:
            pipe.stalled = True
        return len(stalled) // 2

    def stall_at_request(self, source: int, destination: int, api_key: int) -> None:
        """The next Kafka request with `api_key` from `source` to `destination` stalls
        its connection, from that request on (until `release_stalls`): a request held
        in the network exactly when it matters, e.g. an EndTxn."""
        self.traps[(source, destination)] = api_key

    def _spring_trap(self, pipe: _Pipe, data: bytes) -> None:
        wanted = self.traps.get((pipe.source, pipe.destination))
        # A client writes each request frame whole: 4 bytes of size, then the api key.
        if wanted is not None and len(data) >= 6 and int.from_bytes(data[4:6], "big") == wanted:
            pipe.stalled = True
            if pipe.reverse is not None:
                pipe.reverse.stalled = True
            del self.traps[(pipe.source, pipe.destination)]

    def release_stalls(self) -> None:
        self.traps.clear()
        for pipe in self.pipes:
            pipe.stalled = False
        self._wake_all()

    def crash(self, node: int) -> None:
        """The node's process is gone: its connections reset, its ports closed."""
        for pipe in self.pipes:
            if node in (pipe.source, pipe.destination):
                pipe.break_connection()
        for listener in [li for li in self.listeners.values() if li.node == node]:
            listener.close_now()
        self.paused.discard(node)
        self._wake_all()

    def _wake_all(self) -> None:
        for pipe in self.pipes:
            pipe.wake()
        # A broken pipe's receiver has been woken to see it; nothing more will come.
        self.pipes = [p for p in self.pipes if not p.broken]


class SimEnvironment(Environment):
    """One node's view of the simulated world."""

    def __init__(self, network: SimNetwork, node: int, rng: random.Random) -> None:
        self.network = network
        self.node = node
        self.rng = rng
        self.clock_skew_ms = 0

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await self.network.connect(self.node, host, port)

    async def listen(
        self, host: str, port: int
    ) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], int]:
        return [self.network.listen(self.node, host, port)], port

    def new_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def wall_ms(self) -> int:
        return EPOCH_MS + int(trio.current_time() * 1000) + self.clock_skew_ms

    def peer_name(self, stream: trio.abc.Stream) -> str:
        if isinstance(stream, SimStream):
            return f"node-{stream.incoming.source}"
        return "?"
