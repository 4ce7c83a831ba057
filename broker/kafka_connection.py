"""One connection speaking Kafka's binary protocol on the client listener (decision 0011).

The PLAINTEXT listener's `RpcServer` sniffs the first request of each connection and
hands a Kafka one here, with the bytes it already read (`serve(stream, first)`). From
then on this module owns the connection:

- framing by `KafkaFrameDecoder`: the 4-byte size is checked against
  `socket_request_max_bytes` (Kafka's default, 100 MiB) before a body byte is kept;
- requests are decoded at once, handled concurrently (a long-polling Fetch does not
  hold a Metadata behind it in the handler) but started in request order, so a
  connection's Produce requests append in the order sent, and answered strictly in
  request order, as Kafka's channel muting guarantees (clients close on a
  correlation-id mismatch);
- an acks=0 Produce takes its place in line and sends nothing;
- a request read before its peer closed the connection is still carried out, as
  Kafka's are (its answer goes nowhere): the connection waits for the answers in
  flight, up to `ANSWERS_AFTER_CLOSE_S`, before it cancels what is left. A client
  that timed out and hung up does not decide, by the timing of its FIN, whether the
  request it sent takes effect (decision 0026);
- a connection with no request in flight that has neither received a byte nor had an
  answer taken by its peer for `connections_max_idle_ms` (Kafka's
  connections.max.idle.ms, 10 min) is closed: a peer that sends nothing, or stops
  reading its answers, holds its connection and its backlog that long at most;
- answers a peer has not taken are bounded per connection by the native server's
  `_Backlog` (past `RESPONSE_BYTES_UNSENT_MAX` no new request is read), and written by
  the native server's in-order writer: one gathering send for every answer that is
  ready, a Fetch answer's records as their own buffers (never copied into the frame);
- a peer's bad bytes (`KafkaCodecError`), an API or version not served, or a Produce
  v0-2 (advertised, as Kafka 4 does for librdkafka's sake, but not decodable) close this
  connection only; an ApiVersions of a version not served is answered with
  UNSUPPORTED_VERSION in a v0 body carrying our ranges, which clients fall back on;
- an `AssertionError` in a handler stops the node (the error leaves through the
  listener's nursery, as in `RpcServer`); any other exception becomes an
  UNKNOWN_SERVER_ERROR answer built by the handler for that request.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from client.protocol import environment
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import (
    API_VERSIONS_KEY,
    SOCKET_REQUEST_MAX_BYTES_DEFAULT,
    KafkaCodecError,
    KafkaEncodeError,
    KafkaFrameDecoder,
    ResponseHeader,
    UnsupportedApi,
    decode_request,
    encode_response,
)
from client.protocol.kafka import codec as kafka_codec
from client.protocol.kafka.codec import encode_response_parts
from client.protocol.rpc import (
    MAX_IN_FLIGHT_PER_CONNECTION,
    RECEIVE_CHUNK_BYTES,
    Frame,
    RpcServer,
    _Backlog,
    _Slot,
)

log = logging.getLogger(__name__)

PRODUCE_KEY = 0
FETCH_KEY = 1
CONNECTIONS_MAX_IDLE_MS_DEFAULT = 600_000  # Kafka's connections.max.idle.ms
# After the peer's end: how long the requests it sent before it may still run (a
# Produce's replication wait is bounded by its own timeout, 30 s by default).
ANSWERS_AFTER_CLOSE_S = 35.0


def decode_request_lenient(frame: bytes | memoryview) -> tuple[Any, Any, int]:
    """(header, request, bytes left after the body), as Kafka's broker reads a request.

    Kafka's parser stops at the end of the body and ignores what follows it, and
    librdkafka 2.x sends bytes after some bodies (3 after a Metadata v12 body asking
    for every topic), so a broker that refuses them (as the codec's `decode_request`
    does) loses librdkafka's clients. The body itself is decoded as strictly as ever.
    """
    try:
        header, request = decode_request(frame)
        return header, request, 0
    except UnsupportedApi:
        raise
    except KafkaCodecError:
        if len(frame) < kafka_codec._REQUEST_HEADER_FIXED.size:
            raise
        # Decoded again below, so that bytes after the body are counted, not refused.
    buf = memoryview(frame)
    api_key, api_version, correlation_id = kafka_codec._REQUEST_HEADER_FIXED.unpack_from(buf, 0)
    api = kafka_codec._api(api_key, api_version, correlation_id)
    try:
        header, pos = kafka_codec.REQUEST_HEADER.decoder(api.request_header_version(api_version))(
            buf, 0
        )
        request, pos = api.request.decoder(api_version)(buf, pos)
    except kafka_codec._DECODE_FAILURES as error:
        raise KafkaCodecError(f"{api.name} v{api_version} request: {error}") from None
    return header, request, len(buf) - pos


class KafkaApiHandler(Protocol):
    """What a connection needs from the API layer (`broker.kafka_apis.KafkaApis`)."""

    def serves(self, api_key: int, api_version: int) -> bool: ...

    async def handle(self, header: Any, request: Any) -> Any | None:
        """The response body; None when none is due (acks=0 Produce)."""

    def error_response(self, header: Any, request: Any, code: int, message: str) -> Any:
        """A response to `request` with `code` in every place an error code goes."""

    def api_versions_fallback(self) -> Any:
        """ApiVersions v0 body: UNSUPPORTED_VERSION and the ranges served."""


def _frame(header: Any, key: int, version: int, response: Any) -> Frame:
    if key == FETCH_KEY:
        # The records as the log read them, each its own buffer on the wire: a Fetch
        # answer's bytes are copied by no one but the kernel.
        return encode_response_parts(header, key, version, response)
    return encode_response(header, key, version, response)


def _size(frame: Frame) -> int:
    return sum(map(len, frame)) if type(frame) is list else len(frame)


class _Turns:
    """Handlers of one connection start in request order.

    trio does not run newly started tasks in the order they were started, and two
    Produce requests pipelined on one connection for one partition must be appended
    in the order sent (Kafka's channel muting gives that; librdkafka pipelines up to
    max.in.flight requests per broker). Each handler waits until the previous one
    has started, and starts with no checkpoint before its first await, so its
    synchronous part (the appends) runs before the next handler's; after that,
    handlers wait (acks=all, long-polling fetches) concurrently.
    """

    def __init__(self) -> None:
        self._last = trio.Event()
        self._last.set()

    def take(self) -> tuple[trio.Event, trio.Event]:
        """(the previous handler's start, this handler's) for the next request."""
        previous, self._last = self._last, trio.Event()
        return previous, self._last


class _Activity:
    """A connection's requests not yet answered, and when it last moved."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last = trio.current_time()
        self._none_in_flight: trio.Event | None = None

    def touch(self) -> None:
        self.last = trio.current_time()

    def answered(self) -> None:
        self.in_flight -= 1
        self.touch()
        if self.in_flight == 0 and self._none_in_flight is not None:
            self._none_in_flight.set()

    async def wait_none_in_flight(self) -> None:
        if self.in_flight:
            self._none_in_flight = trio.Event()
            await self._none_in_flight.wait()


class _TakenBacklog(_Backlog):
    """The native server's backlog, counting each answer its peer takes as activity."""

    def __init__(self, activity: _Activity) -> None:
        super().__init__()
        self.activity = activity

    def sent(self, size: int) -> None:
        super().sent(size)
        self.activity.touch()


class KafkaConnections:
    def __init__(
        self,
        apis: KafkaApiHandler,
        *,
        frame_bytes_max: int = SOCKET_REQUEST_MAX_BYTES_DEFAULT,
        connections_max_idle_ms: int = CONNECTIONS_MAX_IDLE_MS_DEFAULT,
        name: str = "kafka",
    ) -> None:
        assert connections_max_idle_ms > 0
        self.apis = apis
        self.frame_bytes_max = frame_bytes_max
        self.idle_s = connections_max_idle_ms / 1000
        self.name = name
        self.connections = 0
        self.requests = 0
        self.malformed_requests = 0
        self.handler_errors = 0
        self.requests_with_trailing_bytes = 0
        self.idle_closed = 0

    def statistics(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "malformed_requests": self.malformed_requests,
            "handler_errors": self.handler_errors,
            "requests_with_trailing_bytes": self.requests_with_trailing_bytes,
            "idle_closed": self.idle_closed,
        }

    async def serve(self, stream: trio.abc.Stream, first: bytes) -> None:
        """Serve one connection whose first bytes (`first`) were already read."""
        self.connections += 1
        peer = environment.current().peer_name(stream)
        decoder = KafkaFrameDecoder(self.frame_bytes_max)
        send_slot, receive_slot = trio.open_memory_channel[_Slot](MAX_IN_FLIGHT_PER_CONNECTION)
        activity = _Activity()
        backlog = _TakenBacklog(activity)
        turns = _Turns()
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(_write_or_discard, stream, receive_slot, backlog)
                data: bytes | bytearray | None = first
                while data:
                    try:
                        frames = decoder.feed(data)
                        for frame in frames:
                            if not await self._room(backlog, activity):
                                data = None
                                break
                            slot = self._start(nursery, frame, backlog, turns, activity)
                            await send_slot.send(slot)
                    except KafkaCodecError as error:
                        self.malformed_requests += 1
                        log.warning("%s: closing connection from %s: %s", self.name, peer, error)
                        break
                    if data is not None:
                        data = await self._receive(stream, activity)
                    if data is None:
                        self.idle_closed += 1
                        log.info("%s: closing idle connection from %s", self.name, peer)
                if data == b"":  # the peer's end: what it asked for is still done
                    with trio.move_on_after(ANSWERS_AFTER_CLOSE_S):
                        await activity.wait_none_in_flight()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away; nothing to answer

    async def _receive(
        self, stream: trio.abc.Stream, activity: _Activity
    ) -> bytes | bytearray | None:
        """The peer's next bytes (empty at its end); None once the connection has been
        idle, with nothing in flight, for `connections_max_idle_ms`."""
        while True:
            # Cancelling a socket's receive loses no byte: the next one gets it.
            with trio.move_on_at(activity.last + self.idle_s):
                data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                activity.touch()
                return data
            if activity.in_flight:
                activity.touch()  # a long poll is not idleness
            elif trio.current_time() >= activity.last + self.idle_s:
                return None

    async def _room(self, backlog: _Backlog, activity: _Activity) -> bool:
        """Wait until the unsent answers leave room for one more; False once the peer
        has taken no answer byte, with nothing in flight, for the idle time."""
        while True:
            with trio.move_on_at(activity.last + self.idle_s):
                await backlog.wait_room()
                return True
            if activity.in_flight:
                activity.touch()
            elif trio.current_time() >= activity.last + self.idle_s:
                return False

    def _start(
        self,
        nursery: trio.Nursery,
        frame: memoryview,
        backlog: _Backlog,
        turns: _Turns,
        activity: _Activity,
    ) -> _Slot:
        """Decode one request and start answering it; its slot in the line of answers."""
        try:
            header, request, trailing = decode_request_lenient(frame)
        except UnsupportedApi as error:
            if error.api_key != API_VERSIONS_KEY:
                raise  # Produce v0-2 among them: Kafka 4 closes too
            return self._ready(error.correlation_id, API_VERSIONS_KEY, 0, self._fallback(), backlog)
        key, version = header.request_api_key, header.request_api_version
        if not self.apis.serves(key, version):
            if key == API_VERSIONS_KEY:
                return self._ready(header.correlation_id, key, 0, self._fallback(), backlog)
            raise KafkaCodecError(f"api {key} v{version} is not served here")
        self.requests += 1
        if trailing:
            self.requests_with_trailing_bytes += 1
        slot = _Slot(header.correlation_id)
        previous, mine = turns.take()
        activity.in_flight += 1
        nursery.start_soon(self._answer, slot, header, request, backlog, (previous, mine), activity)
        return slot

    def _fallback(self) -> Any:
        return self.apis.api_versions_fallback()

    @staticmethod
    def _ready(
        correlation_id: int, key: int, version: int, response: Any, backlog: _Backlog
    ) -> _Slot:
        slot = _Slot(correlation_id)
        slot.frame = _frame(ResponseHeader(correlation_id=correlation_id), key, version, response)
        backlog.add(_size(slot.frame))
        slot.done.set()
        return slot

    async def _answer(
        self,
        slot: _Slot,
        header: Any,
        request: Any,
        backlog: _Backlog,
        turn: tuple[trio.Event, trio.Event],
        activity: _Activity,
    ) -> None:
        key, version = header.request_api_key, header.request_api_version
        previous, mine = turn
        if not previous.is_set():
            await previous.wait()
        # No checkpoint from here to the handler's first await: a Produce appends its
        # batches before the next request of this connection is even looked at.
        mine.set()
        try:
            response = await self.apis.handle(header, request)
        except KafkaError as error:  # a user error concerning the whole request
            response = self.apis.error_response(header, request, error.code, error.message)
        except AssertionError:
            # A broken invariant: this node's state is unknown, so it stops.
            log.critical("%s: invariant broken in the handler for api %d", self.name, key)
            raise
        except Exception as error:  # a bug in one handler must not take the server down
            self.handler_errors += 1
            log.exception("%s: handler for api %d v%d failed", self.name, key, version)
            response = self.apis.error_response(
                header, request, ErrorCode.UNKNOWN_SERVER_ERROR, f"{type(error).__name__}"
            )
        if response is not None:
            reply = ResponseHeader(correlation_id=header.correlation_id)
            try:
                slot.frame = _frame(reply, key, version, response)
            except KafkaEncodeError:  # the handler built what this version cannot carry
                self.handler_errors += 1
                log.exception("%s: answer to api %d v%d does not encode", self.name, key, version)
                failed = self.apis.error_response(
                    header, request, ErrorCode.UNKNOWN_SERVER_ERROR, "the answer did not encode"
                )
                slot.frame = _frame(reply, key, version, failed)
            backlog.add(_size(slot.frame))
        activity.answered()
        slot.done.set()  # an empty frame: nothing is sent (acks=0), the line moves on


async def _write_or_discard(
    stream: trio.abc.Stream, slots: trio.MemoryReceiveChannel[_Slot], backlog: _Backlog
) -> None:
    """The answers, in order; once the peer is gone, the rest are dropped as they come
    (the requests still run to their end)."""
    try:
        await RpcServer._write_in_order(stream, slots, backlog)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        async for _ in slots:
            pass
