"""Request/response over framed TCP with trio: one server, one client per peer.

Request frame: `[api_key, api_version, correlation_id, client_id, body]`;
response frame: `[correlation_id, body]`. Errors travel in the body as
`{"error_code": n, "error_message": "..."}`; only a frame that breaks the protocol
(bad length, bad CBOR, wrong shape) closes its connection, and only that one.

The server handles the requests of one connection concurrently (pipelining) but
writes their responses in request order, every response that is ready in one
gathering `sendmsg` (a trio send costs ~10x a plain socket send on this machine). An
answer may be a list of buffers (a Kafka Fetch answer: its encoded fields, then the
records as the log read them): they go out as they are, never joined into a copy.
The client multiplexes concurrent requests on one connection by correlation id,
times each out on its own, and reconnects with jittered exponential backoff.
"""

from __future__ import annotations

import logging
import math
import random
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import cbor2
import trio

from client.protocol import environment
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.framing import (
    FRAME_BYTES_MAX_DEFAULT,
    FrameDecoder,
    FrameError,
    bounded,
    encode_frame,
    preview,
)
from client.protocol.reconnect import ReconnectBackoff

log = logging.getLogger(__name__)

RECEIVE_CHUNK_BYTES = 256 * 1024
# Kafka's max.in.flight.requests.per.connection is 5 for clients; a server accepts more.
MAX_IN_FLIGHT_PER_CONNECTION = 100
# Answers computed but not yet taken by a peer, per connection: past this, no new
# request of that connection is read (a client that pipelines fetches and never
# reads their answers must not hold the broker's memory).
RESPONSE_BYTES_UNSENT_MAX = 64 * 1024 * 1024

# Linux's IOV_MAX: the most buffers one sendmsg takes.
SENDMSG_BUFFERS_MAX = 1024
# Below this, buffers sent to a stream without sendmsg are joined (one send each costs
# more than copying them); above it each goes alone, uncopied.
JOIN_BYTES_MAX = 64 * 1024

# The native frame's size prefix (client.protocol.framing's).
_FRAME_SIZE = struct.Struct(">I")

Buffer: TypeAlias = bytes | bytearray | memoryview
# One answer on the wire: one buffer, or several sent back to back.
Frame: TypeAlias = Buffer | list[Buffer]

Handler = Callable[[int, int, Any], Awaitable[Any]]
# Another protocol served on the same listener (decision 0011): it gets the connection
# and the bytes already read from it, and owns the connection from then on.
OtherProtocol = Callable[[trio.abc.Stream, bytes], Awaitable[None]]
# A native request is one CBOR array of 5 items: after the 4-byte size its first byte
# is 0x85. A Kafka request starts with an int16 api key, whose high byte is 0x00.
NATIVE_REQUEST_FIRST_BYTE = 0x85
SNIFF_BYTES = 5

# Kafka's request header types: api_key and api_version are int16, correlation_id int32.
# A value outside them is a broken or hostile peer: refuse the frame, never act on (or
# try to print) a bignum.
HEADER_RANGES = {
    "api_key": (-(2**15), 2**15 - 1),
    "api_version": (-(2**15), 2**15 - 1),
    "correlation_id": (-(2**31), 2**31 - 1),
}


class ConnectionLost(KafkaError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NETWORK_EXCEPTION, message)


def error_body(code: int, message: str = "") -> dict[str, Any]:
    return {"error_code": int(code), "error_message": message}


class _Slot:
    """One request's place in line: its answer (server side: the encoded frame)."""

    __slots__ = ("correlation_id", "done", "frame", "lost", "response")

    def __init__(self, correlation_id: int) -> None:
        self.correlation_id = correlation_id
        self.done = trio.Event()
        self.frame: Frame = b""
        self.response: Any = None
        self.lost = False


class _Backlog:
    """Bytes of answers a connection's peer has not taken yet."""

    def __init__(self) -> None:
        self.unsent_bytes = 0
        self._drained = trio.Event()

    def add(self, size: int) -> None:
        self.unsent_bytes += size

    def sent(self, size: int) -> None:
        self.unsent_bytes -= size
        if self.unsent_bytes < RESPONSE_BYTES_UNSENT_MAX:
            self._drained.set()
            self._drained = trio.Event()

    async def wait_room(self) -> None:
        while self.unsent_bytes >= RESPONSE_BYTES_UNSENT_MAX:
            await self._drained.wait()


class RpcServer:
    def __init__(
        self,
        handler: Handler,
        *,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        name: str = "rpc",
        other_protocol: OtherProtocol | None = None,
    ) -> None:
        self.handler = handler
        # Connections whose first frame is not a native request go there, if given.
        self.other_protocol = other_protocol
        self.frame_bytes_max = frame_bytes_max
        self.name = name
        self.connections = 0
        self.requests = 0
        self.malformed_frames = 0

    def statistics(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "malformed_frames": self.malformed_frames,
        }

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners, bound = await environment.current().listen(host, port)
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(self._serve_connection, listeners, handler_nursery=nursery)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        first = b""
        if self.other_protocol is not None:
            try:
                first = await _receive_at_least(stream, SNIFF_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await trio.aclose_forcefully(stream)
                return
            if len(first) >= SNIFF_BYTES and first[4] != NATIVE_REQUEST_FIRST_BYTE:
                # The codec is chosen once, from the first request; it never switches.
                await self.other_protocol(stream, first)
                return
        self.connections += 1
        peer = _peer_name(stream)
        decoder = FrameDecoder(self.frame_bytes_max)
        # Slots in request order; its capacity is the per-connection in-flight limit.
        send_slot, receive_slot = trio.open_memory_channel[_Slot](MAX_IN_FLIGHT_PER_CONNECTION)
        backlog = _Backlog()
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(self._write_in_order, stream, receive_slot, backlog)
                while True:
                    data = first or await stream.receive_some(RECEIVE_CHUNK_BYTES)
                    first = b""  # the sniffed bytes, fed once
                    if not data:
                        break
                    try:
                        requests = [_parse_request(frame) for frame in decoder.feed(data)]
                    except FrameError as error:
                        self.malformed_frames += 1
                        log.warning(
                            "%s: closing connection from %s: %s",
                            self.name,
                            peer,
                            bounded(str(error)),
                        )
                        break
                    for api_key, version, correlation_id, body in requests:
                        await backlog.wait_room()
                        slot = _Slot(correlation_id)
                        await send_slot.send(slot)
                        self.requests += 1
                        nursery.start_soon(self._answer, slot, api_key, version, body, backlog)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # The peer went away (a reset arrives wrapped in the nursery's exception
            # group); nothing to answer, and no reason for the server to stop.
            pass

    async def _answer(
        self, slot: _Slot, api_key: int, version: int, body: Any, backlog: _Backlog
    ) -> None:
        try:
            response = await self.handler(api_key, version, body)
        except KafkaError as error:
            response = error_body(error.code, error.message)
        except AssertionError:
            # A broken invariant: this node's state is unknown now, so it stops (the
            # error leaves through the server's nursery) rather than serve from it.
            log.critical("%s: invariant broken in the handler for api %d", self.name, api_key)
            raise
        except Exception as error:  # a bug in one handler must not take the server down
            log.exception("%s: handler for api %d failed", self.name, api_key)
            response = error_body(
                ErrorCode.UNKNOWN_SERVER_ERROR, f"{type(error).__name__}: {error}"
            )
        slot.frame, size = encode_frame_parts([slot.correlation_id, response])
        backlog.add(size)
        slot.done.set()

    @staticmethod
    async def _write_in_order(
        stream: trio.abc.Stream, slots: trio.MemoryReceiveChannel[_Slot], backlog: _Backlog
    ) -> None:
        chunks: list[Buffer] = []

        async def send() -> None:
            size = sum(map(len, chunks))
            await send_buffers(stream, chunks)
            chunks.clear()
            backlog.sent(size)

        async for slot in slots:
            if not slot.done.is_set():
                # Send what is ready before waiting on the next answer in line.
                if chunks:
                    await send()
                await slot.done.wait()
            frame, slot.frame = slot.frame, b""
            if type(frame) is list:
                chunks.extend(frame)
            else:
                chunks.append(frame)  # type: ignore[arg-type]
            if slots.statistics().current_buffer_used == 0:
                await send()


class _FrameParts:
    """The file cbor2 encodes a frame into: small writes gathered into one buffer,
    large ones (a follower's Fetch records) kept as the buffers they come in. cbor2
    writes into a BytesIO ~20x slower than this for an answer of a few MiB."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[Buffer] = [bytearray(_FRAME_SIZE.size)]  # the size, once known
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        if not isinstance(data, bytes):
            data = bytes(data)  # a buffer the encoder may reuse: the parts keep their own
        size = len(data)
        last = self.parts[-1]
        if size < JOIN_BYTES_MAX and type(last) is bytearray:
            last += data
        elif size < JOIN_BYTES_MAX:
            self.parts.append(bytearray(data))
        elif size:
            self.parts.append(data)
        self.size += size
        return size


def encode_frame_parts(item: Any) -> tuple[list[Buffer], int]:
    """`encode_frame(item)` as buffers to send back to back, and their total size."""
    out = _FrameParts()
    cbor2.dump(item, out)  # type: ignore[arg-type]  # writable() and write() are all it uses
    first = out.parts[0]
    assert isinstance(first, bytearray)
    _FRAME_SIZE.pack_into(first, 0, out.size)
    return out.parts, _FRAME_SIZE.size + out.size


async def send_buffers(stream: trio.abc.Stream, buffers: list[Buffer]) -> None:
    """Every byte of `buffers`, in order, with no copy on a socket (gathering sendmsg)."""
    sock = getattr(stream, "socket", None)
    if not isinstance(stream, trio.SocketStream) or not hasattr(sock, "sendmsg"):
        for run in _joined_runs(buffers):
            await stream.send_all(run)
        return
    assert sock is not None
    pending: list[Buffer] = [b for b in buffers if len(b)]
    while pending:
        sent = await sock.sendmsg(pending[:SENDMSG_BUFFERS_MAX])
        done = 0
        while done < len(pending) and sent >= len(pending[done]):
            sent -= len(pending[done])
            done += 1
        del pending[:done]
        if sent:
            pending[0] = memoryview(pending[0])[sent:]


def _joined_runs(buffers: list[Buffer]) -> list[Buffer]:
    """Small neighbours joined into one buffer each; a large buffer kept as it is."""
    runs: list[Buffer] = []
    small: list[Buffer] = []
    for buffer in buffers:
        if len(buffer) > JOIN_BYTES_MAX:
            if small:
                runs.append(b"".join(small))
                small = []
            runs.append(buffer)
        else:
            small.append(buffer)
    if small:
        runs.append(small[0] if len(small) == 1 else b"".join(small))
    return runs


def _parse_request(frame: Any) -> tuple[int, int, int, Any]:
    if not isinstance(frame, list) or len(frame) != 5:
        raise FrameError(
            "a request must be [api_key, api_version, correlation_id, client_id, body]"
        )
    api_key, version, correlation_id, client_id, body = frame
    for name, value in (
        ("api_key", api_key),
        ("api_version", version),
        ("correlation_id", correlation_id),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise FrameError(f"{name} must be an integer, got {type(value).__name__}")
        low, high = HEADER_RANGES[name]
        if not low <= value <= high:
            raise FrameError(f"{name} {preview(value)} is outside [{low}, {high}]")
    if client_id is not None and not isinstance(client_id, str):
        raise FrameError("client_id must be a string or null")
    return api_key, version, correlation_id, body


async def _receive_at_least(stream: trio.abc.Stream, count: int) -> bytes:
    """At least `count` bytes, or fewer if the peer closed first (each receive adds one)."""
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(RECEIVE_CHUNK_BYTES)
        if not chunk:
            break
        data += chunk
    return data


def _peer_name(stream: trio.abc.Stream) -> str:
    return environment.current().peer_name(stream)


class RpcClient:
    """One connection to one server, shared by every concurrent caller."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        rng: random.Random,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.rng = rng
        self.frame_bytes_max = frame_bytes_max
        self._stream: trio.abc.Stream | None = None
        self._waiting: dict[int, _Slot] = {}
        self._next_correlation_id = 0
        self._connect_lock = trio.Lock()
        self._send_lock = trio.Lock()
        self._backoff = ReconnectBackoff(rng)
        self._reader_scope: trio.CancelScope | None = None
        self._closed = False

    async def request(self, api_key: int, api_version: int, body: Any, *, timeout_s: float) -> Any:
        """Send one request and wait for its answer; KafkaError on timeout or lost connection."""
        with trio.move_on_after(timeout_s) as scope:
            stream = await self._connected()
            correlation_id = self._next_correlation_id
            self._next_correlation_id += 1
            slot = _Slot(correlation_id)
            self._waiting[correlation_id] = slot
            try:
                frame = encode_frame([api_key, api_version, correlation_id, self.client_id, body])
                # One frame at a time on the stream. An uncontended lock is taken
                # without `acquire`'s own yield to the scheduler (a third of a
                # request's task switches); `send_all` is the checkpoint. A held lock,
                # or one with waiters, is waited for in turn as before.
                try:
                    self._send_lock.acquire_nowait()
                except trio.WouldBlock:
                    await self._send_lock.acquire()
                try:
                    await stream.send_all(frame)
                finally:
                    self._send_lock.release()
                await slot.done.wait()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                self._disconnect(f"send failed: {error}")
                raise ConnectionLost(f"{self.host}:{self.port}: {error}") from None
            finally:
                self._waiting.pop(correlation_id, None)
            if slot.lost:
                raise ConnectionLost(f"{self.host}:{self.port}: connection closed")
            return slot.response
        assert scope.cancelled_caught
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"{self.host}:{self.port} after {timeout_s}s")

    async def _connected(self) -> trio.abc.Stream:
        if self._stream is not None:
            # Connected: no lock to wait for (only a connect attempt holds it, and
            # then there is no stream yet). The send that follows is the checkpoint.
            return self._stream
        async with self._connect_lock:
            if self._stream is not None:
                return self._stream
            if self._closed:
                raise ConnectionLost("client is closed")
            await self._backoff.wait()
            try:
                stream = await environment.current().connect(self.host, self.port)
            except OSError as error:
                self._backoff.failed()
                raise ConnectionLost(f"{self.host}:{self.port}: {error}") from None
            self._backoff.succeeded()
            self._stream = stream
            trio.lowlevel.spawn_system_task(self._read, stream)
            return stream

    async def _read(self, stream: trio.abc.Stream) -> None:
        decoder = FrameDecoder(self.frame_bytes_max)
        reason = "connection closed"
        try:
            while True:
                data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                if not data:
                    break
                for frame in decoder.feed(data):
                    if (
                        not isinstance(frame, list)
                        or len(frame) != 2
                        or not isinstance(frame[0], int)
                    ):
                        raise FrameError("a response must be [correlation_id, body]")
                    slot = self._waiting.pop(frame[0], None)
                    if slot is not None:  # else: its caller timed out and left
                        slot.response = frame[1]
                        slot.done.set()
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            reason = str(error)
        if self._stream is stream:
            self._disconnect(reason)

    def _disconnect(self, reason: str) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                environment.close_now(stream)
        waiting, self._waiting = self._waiting, {}
        for slot in waiting.values():
            slot.lost = True
            slot.done.set()
        log.debug("rpc client %s:%s disconnected: %s", self.host, self.port, reason)

    async def aclose(self) -> None:
        self._closed = True
        self._disconnect("closed by the client")


def timeout_seconds(milliseconds: int) -> float:
    return math.inf if milliseconds < 0 else milliseconds / 1000
