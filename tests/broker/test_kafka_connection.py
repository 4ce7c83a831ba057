"""The Kafka connection behind the PLAINTEXT listener's sniffing (decision 0011).

A fake API layer drives `KafkaConnections` through a real `RpcServer` on 127.0.0.1, so
the codec choice per connection is exercised too: answers in request order while
handled concurrently, acks=0 silent, handler errors as UNKNOWN_SERVER_ERROR, broken
invariants stopping the server, undecodable versions closing one connection, and a
native client still served on the same port.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from broker.kafka_connection import KafkaConnections
from client.protocol.errors import ErrorCode
from client.protocol.kafka import decode_response, encode_request, messages
from client.protocol.rpc import RpcClient, RpcServer

TIMEOUT_S = 60
Topic = messages.MetadataRequest.MetadataRequestTopic


class FakeApis:
    SERVED = {18: (0, 3), 3: (0, 12), 0: (0, 9)}

    def __init__(self) -> None:
        self.fast_done = trio.Event()
        self.appended: list[int] = []

    def serves(self, api_key: int, api_version: int) -> bool:
        low, high = self.SERVED.get(api_key, (1, 0))
        return low <= api_version <= high

    async def handle(self, header: Any, request: Any) -> Any:
        if header.request_api_key == 18:
            return messages.ApiVersionsResponse()
        if header.request_api_key == 0:
            self.appended.append(header.correlation_id)  # before any checkpoint, as DataApis
            await trio.sleep(0)
            return None if request.acks == 0 else messages.ProduceResponse()
        (topic,) = request.topics
        if topic.name == "slow":
            await self.fast_done.wait()  # only answered once the later request was handled
        elif topic.name == "fast":
            self.fast_done.set()
        elif topic.name == "boom":
            raise ValueError("a bug")
        elif topic.name == "invariant":
            raise AssertionError("broken")
        elif topic.name == "unencodable":
            Response = messages.MetadataResponse
            # cluster_authorized_operations is not in v12: the codec refuses it.
            return Response(cluster_authorized_operations=7)
        Response = messages.MetadataResponse
        return Response(topics=(Response.MetadataResponseTopic(name=topic.name),))

    def error_response(self, header: Any, request: Any, code: int, message: str) -> Any:
        Response = messages.MetadataResponse
        return Response(
            topics=tuple(
                Response.MetadataResponseTopic(name=t.name, error_code=code) for t in request.topics
            )
        )

    def api_versions_fallback(self) -> Any:
        return messages.ApiVersionsResponse(error_code=ErrorCode.UNSUPPORTED_VERSION)


async def native_echo(api_key: int, version: int, body: Any) -> Any:
    return {"echo": body}


def metadata(name: str, correlation_id: int) -> bytes:
    header = messages.RequestHeader(
        request_api_key=3, request_api_version=12, correlation_id=correlation_id, client_id="t"
    )
    return bytes(encode_request(header, messages.MetadataRequest(topics=(Topic(name=name),))))


def produce(acks: int, correlation_id: int) -> bytes:
    header = messages.RequestHeader(
        request_api_key=0, request_api_version=9, correlation_id=correlation_id, client_id="t"
    )
    return bytes(encode_request(header, messages.ProduceRequest(acks=acks, timeout_ms=1000)))


class Reader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def frame(self) -> bytes | None:
        while True:
            if len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) >= 4 + size:
                    body, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
                    return body
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data

    async def metadata(self) -> tuple[int, Any]:
        body = await self.frame()
        assert body is not None
        header, response = decode_response(body, 3, 12)
        return header.correlation_id, response.topics[0]


async def start(nursery: trio.Nursery, apis: FakeApis) -> tuple[int, KafkaConnections]:
    connections = KafkaConnections(apis, name="test")
    server = RpcServer(native_echo, name="test", other_protocol=connections.serve)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return port, connections


async def test_answers_in_request_order_while_handled_concurrently() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            port, connections = await start(nursery, FakeApis())
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            reader = Reader(stream)
            # "slow" is answered only after "fast" was handled: pipelined, in order.
            await stream.send_all(
                metadata("slow", 1) + produce(0, 2) + metadata("fast", 3) + metadata("boom", 4)
            )
            assert await reader.metadata() == (
                1,
                messages.MetadataResponse.MetadataResponseTopic(name="slow"),
            )
            # The acks=0 produce (2) sends nothing; the line moves on to 3.
            correlation_id, topic = await reader.metadata()
            assert (correlation_id, topic.name) == (3, "fast")
            correlation_id, topic = await reader.metadata()
            assert (correlation_id, topic.error_code) == (4, ErrorCode.UNKNOWN_SERVER_ERROR)
            assert connections.statistics()["handler_errors"] == 1
            # A native client on the same listener keeps its codec.
            client = RpcClient("127.0.0.1", port, client_id="native", rng=random.Random(1))
            assert await client.request(3, 0, {"x": 1}, timeout_s=TIMEOUT_S) == {"echo": {"x": 1}}
            await client.aclose()
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_an_undecodable_version_closes_only_that_connection() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            port, connections = await start(nursery, FakeApis())
            good = await trio.open_tcp_stream("127.0.0.1", port)
            bad = await trio.open_tcp_stream("127.0.0.1", port)
            # Produce v2: advertised (as Kafka 4 does) but not decodable: closed.
            frame = bytearray(produce(1, 9))
            frame[6:8] = (2).to_bytes(2, "big")
            await bad.send_all(bytes(frame))
            assert await Reader(bad).frame() is None
            await good.send_all(metadata("fine", 5))
            assert (await Reader(good).metadata())[0] == 5
            assert connections.statistics()["malformed_requests"] == 1
            await good.aclose()
            nursery.cancel_scope.cancel()


async def test_a_broken_invariant_in_a_handler_stops_the_server() -> None:
    with trio.fail_after(TIMEOUT_S), pytest.RaisesGroup(AssertionError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            port, _ = await start(nursery, FakeApis())
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(metadata("invariant", 1))
            await trio.sleep_forever()


async def test_pipelined_produce_requests_append_in_the_order_sent() -> None:
    """trio starts tasks in no fixed order; a connection's Produces must not be reordered."""
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            apis = FakeApis()
            port, _ = await start(nursery, apis)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"".join(produce(1, i) for i in range(200)))
            reader = Reader(stream)
            for _ in range(200):
                assert await reader.frame() is not None
            assert apis.appended == list(range(200))
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_an_answer_that_does_not_encode_is_an_error_answer_not_a_dead_node() -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            port, connections = await start(nursery, FakeApis())
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            reader = Reader(stream)
            await stream.send_all(metadata("unencodable", 1) + metadata("fine", 2))
            correlation_id, topic = await reader.metadata()
            assert (correlation_id, topic.error_code) == (1, ErrorCode.UNKNOWN_SERVER_ERROR)
            correlation_id, topic = await reader.metadata()
            assert (correlation_id, topic.name, topic.error_code) == (2, "fine", 0)
            assert connections.statistics()["handler_errors"] == 1
            await stream.aclose()
            nursery.cancel_scope.cancel()


IDLE_MS = 1_000


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(autojump_clock: Any) -> None:
    """connections_max_idle_ms on trio's virtual clock: requests every 0.9 s keep a
    connection open for many idle periods, as does a request held for five of them;
    once silent, it is closed one idle period after its last answer."""
    apis = FakeApis()
    connections = KafkaConnections(apis, connections_max_idle_ms=IDLE_MS, name="test")
    client, server = trio.testing.memory_stream_pair()
    reader = Reader(client)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connections.serve, server, metadata("first", 0))
            assert (await reader.metadata())[0] == 0
            for correlation_id in range(1, 21):
                await trio.sleep(0.9 * IDLE_MS / 1000)
                await client.send_all(metadata("busy", correlation_id))
                assert (await reader.metadata())[0] == correlation_id
            # Held for five idle periods: in flight, so not idle.
            await client.send_all(metadata("slow", 21))
            await trio.sleep(5 * IDLE_MS / 1000)
            apis.fast_done.set()
            assert (await reader.metadata())[0] == 21
            assert connections.statistics()["idle_closed"] == 0
            answered_at = trio.current_time()
            assert await reader.frame() is None  # closed by the broker
            silent_for = trio.current_time() - answered_at
            assert IDLE_MS / 1000 <= silent_for <= 1.1 * IDLE_MS / 1000, silent_for
            assert connections.statistics()["idle_closed"] == 1


async def test_a_peer_that_stops_reading_is_closed_after_the_idle_time(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsent answers are no activity: a peer that takes none for the idle time loses its
    connection, whether the reader waits for its next bytes or for room in the backlog."""
    # lockstep: a send completes only as the peer receives, and this one never does.
    monkeypatch.setattr("client.protocol.rpc.RESPONSE_BYTES_UNSENT_MAX", 200)
    for pipelined in (1, 50):
        connections = KafkaConnections(FakeApis(), connections_max_idle_ms=IDLE_MS, name="test")
        client, server = trio.testing.lockstep_stream_pair()
        started = trio.current_time()
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                requests = b"".join(metadata("unread", i) for i in range(1, pipelined))
                nursery.start_soon(client.send_all, requests)  # blocks once the node stops
                await connections.serve(server, metadata("unread", 0))
                nursery.cancel_scope.cancel()
        closed_after = trio.current_time() - started
        assert connections.statistics()["idle_closed"] == 1, pipelined
        assert IDLE_MS / 1000 <= closed_after <= 1.1 * IDLE_MS / 1000, (pipelined, closed_after)


async def test_a_request_read_before_its_peer_hung_up_runs_to_its_end() -> None:
    """Kafka handles what it has read; the answer goes nowhere (decision 0026). "slow"
    waits for "fast", which is handled only after the peer has closed."""
    apis = FakeApis()
    finished: list[str] = []
    handle = apis.handle

    async def recording(header: Any, request: Any) -> Any:
        response = await handle(header, request)
        finished.append(request.topics[0].name)
        return response

    apis.handle = recording  # type: ignore[method-assign]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            port, _ = await start(nursery, apis)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(metadata("slow", 1))
            await stream.aclose()
            await trio.sleep(0.2)  # the listener has read the end of the stream
            assert finished == []
            apis.fast_done.set()
            while finished != ["slow"]:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
