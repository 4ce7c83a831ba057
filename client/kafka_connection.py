"""One Kafka-protocol connection from this client to one broker, shared by every caller.

On connect it asks ApiVersions (v3, naming the client's software, KIP-511); a broker
that does not know v3 answers UNSUPPORTED_VERSION with a v0 body carrying its ranges,
and the handshake is asked again at the highest version both sides have. From then on
each request goes at the highest version both the broker and this client build
(`CLIENT_VERSIONS`), or fails with UNSUPPORTED_VERSION when the ranges do not meet.

Requests are pipelined: Kafka answers those of one connection in the order sent, so
the answer in front of the line must carry the correlation id of the oldest request
waiting; anything else means the stream is lost and the connection is closed. An
acks=0 Produce gets no answer and is not waited for. A request that times out closes
its connection too, as Kafka's client does: the answers behind it would only wait
behind a broker that stopped answering. An error that concerns the whole request (the
top-level `error_code` of the APIs that have one) is raised here, once, as a
KafkaError; per-topic and per-partition errors are the caller's to read.
"""

from __future__ import annotations

import collections
import logging
import random
import struct
from typing import Any

import trio

from client.protocol import environment
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import (
    API_VERSIONS_KEY,
    APIS,
    KafkaCodecError,
    KafkaFrameDecoder,
    decode_response,
    encode_request,
)
from client.protocol.kafka import messages as kafka
from client.protocol.reconnect import ReconnectBackoff
from client.protocol.rpc import RECEIVE_CHUNK_BYTES, ConnectionLost

log = logging.getLogger(__name__)

SOFTWARE_NAME = "pykraft"
SOFTWARE_VERSION = "0.1.0"
# The versions this client builds and reads, per api key (decision 0016). Each range is
# one whose request fields the client fills in right for every version in it.
CLIENT_VERSIONS: dict[int, tuple[int, int]] = {
    0: (3, 9),  # Produce: v3 is the first with RecordBatch v2; v10+ are KIP-890's
    1: (4, 12),  # Fetch: by topic name (v13+ take topic ids)
    2: (1, 7),  # ListOffsets
    3: (4, 12),  # Metadata: by topic name, null asks for all; v4+ can refuse auto-creation
    8: (2, 8),  # OffsetCommit: generation and member from v1; group_instance_id from v7
    9: (1, 7),  # OffsetFetch: one group (v8 batches groups); null topics for all from v2
    10: (0, 4),  # FindCoordinator: one key up to v3, batched keys from v4
    11: (1, 7),  # JoinGroup: rebalance timeout from v1; MEMBER_ID_REQUIRED from v4 (KIP-394)
    12: (0, 4),  # Heartbeat
    13: (0, 4),  # LeaveGroup: one member up to v2, batched members from v3
    14: (0, 5),  # SyncGroup: protocol type and name from v5
    15: (0, 5),  # DescribeGroups
    16: (0, 4),  # ListGroups: states filter from v4
    18: (0, 3),  # ApiVersions
    19: (2, 7),  # CreateTopics
    20: (1, 6),  # DeleteTopics
    22: (0, 4),  # InitProducerId: naming the current id and epoch bumps it from v3 (KIP-360)
    24: (0, 3),  # AddPartitionsToTxn: one transaction per request up to v3
    25: (0, 3),  # AddOffsetsToTxn
    26: (0, 5),  # EndTxn: v5 bumps the epoch at every end (KIP-890 part 2, decision 0023)
    28: (0, 3),  # TxnOffsetCommit: generation and member from v3 (KIP-447)
    32: (1, 4),  # DescribeConfigs
    37: (0, 3),  # CreatePartitions
    43: (0, 2),  # ElectLeaders
    42: (0, 2),  # DeleteGroups
    44: (0, 1),  # IncrementalAlterConfigs
    55: (0, 1),  # DescribeQuorum
    60: (0, 1),  # DescribeCluster
    61: (0, 0),  # DescribeProducers
    65: (0, 0),  # DescribeTransactions
    66: (0, 1),  # ListTransactions: duration filter from v1
}
PRODUCE_KEY = 0
API_VERSIONS_ASKED = 3
# A response larger than this closes the connection before its body is buffered: a
# Fetch answers at most fetch_max_bytes (50 MiB by default) plus one batch.
RESPONSE_BYTES_MAX = 128 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
_CORRELATION_ID = struct.Struct(">i")
_REQUEST_CLASSES = {api.request.root: key for key, api in APIS.items()}
assert all(
    APIS[key].versions.low <= low and high <= APIS[key].versions.high
    for key, (low, high) in CLIENT_VERSIONS.items()
), "a version this client builds that the codec has no definition of"


class _Pending:
    """One request waiting for its answer, in the order sent."""

    __slots__ = ("api_key", "correlation_id", "done", "error", "response", "version")

    def __init__(self, correlation_id: int, api_key: int, version: int) -> None:
        self.correlation_id = correlation_id
        self.api_key = api_key
        self.version = version
        self.done = trio.Event()
        self.response: Any = None
        self.error: KafkaError | None = None


def api_key_of(request: Any) -> int:
    key = _REQUEST_CLASSES.get(type(request))
    if key is None:
        raise TypeError(f"{type(request).__name__} is not a Kafka request message")
    return key


class KafkaConnection:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        rng: random.Random,
        response_bytes_max: int = RESPONSE_BYTES_MAX,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.response_bytes_max = response_bytes_max
        # The broker's (min, max) per api key, from the last handshake.
        self.broker_versions: dict[int, tuple[int, int]] = {}
        self._stream: trio.abc.Stream | None = None
        # Set once the handshake on `_stream` has answered: until then `broker_versions`
        # may be empty (a first connection) and other callers wait on the lock.
        self._ready = False
        self._pending: collections.deque[_Pending] = collections.deque()
        self._next_correlation_id = 0
        self._connect_lock = trio.Lock()
        self._send_lock = trio.Lock()
        self._backoff = ReconnectBackoff(rng)
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ versions

    def version_for(self, api_key: int) -> int:
        """The version a request of `api_key` goes at on this (connected) connection."""
        ours = CLIENT_VERSIONS.get(api_key)
        theirs = self.broker_versions.get(api_key)
        name = APIS[api_key].name if api_key in APIS else str(api_key)
        if ours is None:
            raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"this client does not build {name}")
        if theirs is None:
            raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"{self.address} does not serve {name}")
        version = min(ours[1], theirs[1])
        if version < max(ours[0], theirs[0]):
            raise KafkaError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"{name}: {self.address} serves v{theirs[0]}-{theirs[1]}, "
                f"this client builds v{ours[0]}-{ours[1]}",
            )
        return version

    async def negotiated(self, api_key: int, *, timeout_s: float) -> int:
        """Connect (and shake hands) if need be; the version `api_key` would go at."""
        with trio.move_on_after(timeout_s):
            await self._connected()
            return self.version_for(api_key)
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"{self.address}: connect timed out")

    # ------------------------------------------------------------------ requests

    async def request(self, request: Any, *, version: int | None = None, timeout_s: float) -> Any:
        """Send one request, wait for its answer (None for an acks=0 Produce).

        KafkaError on a whole-request error, a timeout (REQUEST_TIMED_OUT) or a lost
        connection (NETWORK_EXCEPTION)."""
        api_key = api_key_of(request)
        with trio.move_on_after(timeout_s) as scope:
            stream = await self._connected()
            if version is None:
                version = self.version_for(api_key)
            return await self._exchange(stream, api_key, version, request)
        assert scope.cancelled_caught
        self._disconnect(f"a request timed out after {timeout_s}s")
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"{self.address} after {timeout_s}s")

    async def _exchange(
        self, stream: trio.abc.Stream, api_key: int, version: int, request: Any
    ) -> Any:
        correlation_id = self._next_correlation_id
        self._next_correlation_id = (correlation_id + 1) & 0x7FFFFFFF
        header = kafka.RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=correlation_id,
            client_id=self.client_id,
        )
        frame = encode_request(header, request)
        answered = not (api_key == PRODUCE_KEY and request.acks == 0)
        pending = _Pending(correlation_id, api_key, version)
        try:
            # The uncontended lock is taken without a yield; `send_all` is the checkpoint.
            try:
                self._send_lock.acquire_nowait()
            except trio.WouldBlock:
                await self._send_lock.acquire()
            try:
                if self._stream is not stream:
                    raise ConnectionLost(f"{self.address}: connection closed")
                if answered:
                    # In line before the bytes leave: the answer may come at once.
                    self._pending.append(pending)
                sent = False
                try:
                    await stream.send_all(frame)
                    sent = True
                finally:
                    if not sent and self._stream is stream:
                        # Cancelled mid-frame: the stream's framing is lost with it.
                        self._disconnect("a send was interrupted")
            finally:
                self._send_lock.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self._disconnect(f"send failed: {error}")
            raise ConnectionLost(f"{self.address}: {error}") from None
        if not answered:
            return None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        response = pending.response
        code = getattr(response, "error_code", ErrorCode.NONE)
        if code != ErrorCode.NONE:
            message = getattr(response, "error_message", None) or ""
            refused = KafkaError(
                code, f"{APIS[api_key].name} to {self.address}: {message}".rstrip()
            )
            # Some answers carry what the caller needs beside the error (JoinGroup's
            # MEMBER_ID_REQUIRED names the member id to join with, KIP-394).
            refused.response = response  # type: ignore[attr-defined]
            raise refused
        return response

    # ------------------------------------------------------------------ connecting

    async def _connected(self) -> trio.abc.Stream:
        if self._stream is not None and self._ready:
            return self._stream
        async with self._connect_lock:
            if self._stream is not None and self._ready:
                return self._stream
            if self._closed:
                raise ConnectionLost("client is closed")
            await self._backoff.wait()
            try:
                stream = await environment.current().connect(self.host, self.port)
            except OSError as error:
                self._backoff.failed()
                raise ConnectionLost(f"{self.address}: {error}") from None
            self._stream = stream
            trio.lowlevel.spawn_system_task(self._read, stream)
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    self.broker_versions = await self._handshake(stream)
            except trio.TooSlowError:
                self._backoff.failed()
                self._disconnect("no ApiVersions answer")
                raise ConnectionLost(f"{self.address}: no ApiVersions answer") from None
            except BaseException as error:  # a caller's cancellation too: no half-open state
                self._backoff.failed()
                self._disconnect(f"ApiVersions failed: {error!r}")
                raise
            self._backoff.succeeded()
            self._ready = True
            return stream

    async def _handshake(self, stream: trio.abc.Stream) -> dict[int, tuple[int, int]]:
        version = API_VERSIONS_ASKED
        for _ in range(2):
            request = kafka.ApiVersionsRequest(
                client_software_name=SOFTWARE_NAME if version >= 3 else "",
                client_software_version=SOFTWARE_VERSION if version >= 3 else "",
            )
            try:
                response = await self._exchange(stream, API_VERSIONS_KEY, version, request)
            except KafkaError as error:
                response = getattr(error, "response", None)
                if response is None:
                    raise
                # The v0 body names the broker's range of ApiVersions: ask again in it.
                theirs = {k.api_key: k.max_version for k in response.api_keys}
                version = min(API_VERSIONS_ASKED, theirs.get(API_VERSIONS_KEY, 0))
                continue
            return {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
        raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"{self.address}: no ApiVersions agreed")

    # ------------------------------------------------------------------ reading

    async def _read(self, stream: trio.abc.Stream) -> None:
        decoder = KafkaFrameDecoder(self.response_bytes_max)
        reason = "connection closed by the broker"
        try:
            while True:
                data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                if not data:
                    break
                for frame in decoder.feed(data):
                    self._answer(frame)
        except (KafkaCodecError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            reason = str(e)
        if self._stream is stream:
            self._disconnect(reason)

    def _answer(self, frame: bytes | memoryview) -> None:
        if len(frame) < _CORRELATION_ID.size:
            raise KafkaCodecError(f"a response of {len(frame)} bytes has no header")
        (correlation_id,) = _CORRELATION_ID.unpack_from(frame, 0)
        if not self._pending or self._pending[0].correlation_id != correlation_id:
            expected = self._pending[0].correlation_id if self._pending else None
            raise KafkaCodecError(
                f"response to correlation id {correlation_id}, expected {expected}"
            )
        pending = self._pending.popleft()
        _, response = decode_response(frame, pending.api_key, pending.version)
        if (
            pending.api_key == API_VERSIONS_KEY
            and response.error_code == ErrorCode.UNSUPPORTED_VERSION
        ):
            error = KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"ApiVersions v{pending.version}")
            error.response = response  # type: ignore[attr-defined]
            pending.error = error
        pending.response = response
        pending.done.set()

    def _disconnect(self, reason: str) -> None:
        stream, self._stream = self._stream, None
        self._ready = False
        if stream is not None:
            with trio.CancelScope(shield=True):
                environment.close_now(stream)
        pending, self._pending = self._pending, collections.deque()
        for waiting in pending:
            waiting.error = ConnectionLost(f"{self.address}: {reason}")
            waiting.done.set()
        if stream is not None:
            log.debug("kafka connection %s closed: %s", self.address, reason)

    async def aclose(self) -> None:
        self._closed = True
        self._disconnect("closed by the client")
