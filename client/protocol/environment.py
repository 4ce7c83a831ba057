"""A node's outside world: connections, listeners, randomness and wall-clock time.

Production code never opens a socket, makes an unseeded random generator or reads
the wall clock directly; it asks `current()`. In production that is `TcpEnvironment`:
loopback or real TCP, `random.Random()`, `time.time()`. The deterministic simulator
(jepsen_like/sim) gives each node its own environment: in-memory links with faults,
generators seeded from the run's seed, and a wall clock derived from trio's (mock)
clock, possibly skewed per node.

The environment lives in a context variable. A trio task inherits the context of
the task that started it, so everything a node starts sees that node's environment;
that is how the simulated network knows which node a connection comes from.
Monotonic time needs no seam: everything reads trio's clock, which the simulator
replaces with `trio.testing.MockClock`.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import time
from collections.abc import Iterator

import trio


class Environment:
    """The production environment: real TCP and the machine's clock."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    async def listen(
        self, host: str, port: int
    ) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], int]:
        """Listeners on (host, port) (port 0: any free one) and the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        return list(listeners), int(listeners[0].socket.getsockname()[1])

    def new_rng(self) -> random.Random:
        return random.Random()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def peer_name(self, stream: trio.abc.Stream) -> str:
        socket = getattr(stream, "socket", None)
        if socket is None:
            return "?"
        try:
            host, port = socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"


def close_now(stream: trio.abc.Stream) -> None:
    """Close without waiting (no await), as a failed connection must be dropped at once."""
    close = getattr(stream, "close_now", None)
    if close is not None:
        close()
    else:
        stream.socket.close()  # type: ignore[attr-defined]


TCP = Environment()
_current: contextvars.ContextVar[Environment] = contextvars.ContextVar(
    "pykraft_environment", default=TCP
)


def current() -> Environment:
    return _current.get()


@contextlib.contextmanager
def using(environment: Environment) -> Iterator[None]:
    """Tasks started inside this block (and their children) use `environment`."""
    token = _current.set(environment)
    try:
        yield
    finally:
        _current.reset(token)
