"""Framing and the trio RPC layer over real loopback sockets."""

from __future__ import annotations

import random
import socket
import struct

import cbor2
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.framing import FrameDecoder, FrameTooLarge, MalformedFrame, encode_frame
from client.protocol.rpc import ConnectionLost, RpcClient, RpcServer

ECHO, SLOW, BOOM = 1, 2, 3


async def handler(api_key: int, version: int, body):
    if api_key == ECHO:
        return {"echo": body}
    if api_key == SLOW:
        await trio.sleep(body)
        return {"slept": body}
    if api_key == BOOM:
        raise RuntimeError("handler bug")
    raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"api {api_key} v{version}")


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.binary(max_size=64)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(items=st.lists(cbor_values, max_size=5), cut=st.integers(1, 7))
def test_decoder_returns_every_frame_however_the_bytes_arrive(items, cut: int) -> None:
    stream = b"".join(encode_frame(item) for item in items)
    decoder = FrameDecoder()
    got = []
    for start in range(0, len(stream), cut):
        got += decoder.feed(stream[start : start + cut])
    assert got == items and decoder.buffered_bytes == 0


def test_oversized_and_malformed_frames_are_refused() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder(frame_bytes_max=100).feed(struct.pack(">I", 101))  # no body needed
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(struct.pack(">I", 2) + b"\xff\xff")


@pytest.fixture
async def server(nursery):
    rpc = RpcServer(handler, frame_bytes_max=1 << 16)
    port = await nursery.start(rpc.serve)
    return rpc, port


def client(port: int) -> RpcClient:
    return RpcClient("127.0.0.1", port, client_id="test", rng=random.Random(1))


async def test_pipelined_requests_come_back_matched_and_in_order(server) -> None:
    rpc, port = server
    peer = client(port)
    results = {}
    with trio.fail_after(10):

        async def one(n: int) -> None:
            results[n] = await peer.request(ECHO, 0, n, timeout_s=5)

        async with trio.open_nursery() as nursery:
            for n in range(1000):
                nursery.start_soon(one, n)
    assert results == {n: {"echo": n} for n in range(1000)}
    assert rpc.statistics()["connections"] == 1 and rpc.statistics()["requests"] == 1000
    await peer.aclose()


async def test_responses_keep_request_order_on_the_wire(server) -> None:
    _, port = server
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            encode_frame([SLOW, 0, 1, None, 0.2]) + encode_frame([SLOW, 0, 2, None, 0.0])
        )
        decoder, answers = FrameDecoder(), []
        while len(answers) < 2:
            answers += decoder.feed(await stream.receive_some(4096))
    assert [answer[0] for answer in answers] == [1, 2]


async def test_a_malformed_frame_closes_only_its_connection(server) -> None:
    rpc, port = server
    good = client(port)
    with trio.fail_after(10):
        assert await good.request(ECHO, 0, "before", timeout_s=5) == {"echo": "before"}
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(struct.pack(">I", 3) + b"\xff\xff\xff")
        assert await bad.receive_some(10) == b""  # closed by the server
        wrong_shape = await trio.open_tcp_stream("127.0.0.1", port)
        await wrong_shape.send_all(encode_frame({"not": "a list"}))
        assert await wrong_shape.receive_some(10) == b""
        oversized = await trio.open_tcp_stream("127.0.0.1", port)
        await oversized.send_all(struct.pack(">I", 1 << 20))
        assert await oversized.receive_some(10) == b""
        assert await good.request(ECHO, 0, "after", timeout_s=5) == {"echo": "after"}
    assert rpc.statistics()["malformed_frames"] == 3


async def test_handler_errors_become_error_codes(server) -> None:
    _, port = server
    peer = client(port)
    with trio.fail_after(10):
        boom = await peer.request(BOOM, 0, None, timeout_s=5)
        assert (
            boom["error_code"] == ErrorCode.UNKNOWN_SERVER_ERROR
            and "handler bug" in boom["error_message"]
        )
        unknown = await peer.request(99, 7, None, timeout_s=5)
        assert unknown["error_code"] == ErrorCode.UNSUPPORTED_VERSION
        assert await peer.request(ECHO, 0, 1, timeout_s=5) == {"echo": 1}


async def test_timeouts_and_a_late_answer_is_dropped(server) -> None:
    _, port = server
    peer = client(port)
    with trio.fail_after(10):
        with pytest.raises(KafkaError) as raised:
            await peer.request(SLOW, 0, 0.5, timeout_s=0.05)
        assert raised.value.code == ErrorCode.REQUEST_TIMED_OUT
        await trio.sleep(0.6)  # its answer arrives now and must not confuse the next one
        assert await peer.request(ECHO, 0, "next", timeout_s=5) == {"echo": "next"}


async def test_client_reconnects_after_the_server_restarts(nursery) -> None:
    rpc = RpcServer(handler)
    lives: list[trio.CancelScope] = []

    async def run_server(port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            lives.append(scope)
            await rpc.serve(port=port, task_status=task_status)

    port = await nursery.start(run_server, 0)
    peer = client(port)
    with trio.fail_after(10):
        assert await peer.request(ECHO, 0, 1, timeout_s=5) == {"echo": 1}
        lives[-1].cancel()
        await trio.sleep(0.05)
        with pytest.raises(ConnectionLost):
            await peer.request(ECHO, 0, 2, timeout_s=5)
        await nursery.start(run_server, port)
        for _ in range(100):
            try:
                assert await peer.request(ECHO, 0, 3, timeout_s=5) == {"echo": 3}
                break
            except ConnectionLost:
                await trio.sleep(0.05)  # reconnect backoff
        else:
            raise AssertionError("never reconnected")


async def test_a_peer_resetting_its_connection_does_not_stop_the_server(server) -> None:
    rpc, port = server
    good = client(port)
    with trio.fail_after(10):
        for _ in range(3):
            peer = await trio.open_tcp_stream("127.0.0.1", port)
            await peer.send_all(encode_frame([SLOW, 0, 1, "resetter", 0.05]))
            # Close with a reset (linger 0) while the server still owes an answer.
            peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.socket.close()
            await trio.sleep(0.1)
        assert await good.request(ECHO, 0, "still here", timeout_s=5) == {"echo": "still here"}
    assert rpc.statistics()["requests"] >= 4


# Issue 14, finding 9: the frame and its header are checked whole before anything acts on them.


def test_two_cbor_items_in_one_frame_are_refused() -> None:
    body = cbor2.dumps([ECHO, 0, 1, None, "first"]) + cbor2.dumps("second")
    with pytest.raises(MalformedFrame, match="after the first CBOR item"):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def frame_of_items(*items) -> bytes:
    body = b"".join(cbor2.dumps(item) for item in items)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "frame",
    [
        frame_of_items([ECHO, 0, 1, None, "x"], [ECHO, 0, 2, None, "smuggled"]),
        encode_frame([1 << 8_000_000, 0, 1, None, None]),  # a 1 MB bignum api key
        encode_frame([2**15, 0, 1, None, None]),
        encode_frame([-(2**15) - 1, 0, 1, None, None]),
        encode_frame([ECHO, 2**15, 1, None, None]),
        encode_frame([ECHO, 0, 2**31, None, None]),
        encode_frame([ECHO, 0, -(2**31) - 1, None, None]),
        encode_frame([ECHO, 0, 1 << 8_000_000, None, None]),
    ],
    ids=[
        "two-items",
        "bignum-api-key",
        "api-key",
        "neg-api-key",
        "version",
        "corr",
        "neg-corr",
        "bignum-corr",
    ],
)
async def test_a_bad_header_closes_the_connection_and_logs_one_bounded_line(
    nursery, caplog, frame: bytes
) -> None:
    rpc = RpcServer(handler)  # the default frame limit: room for a 1 MB bignum
    port = await nursery.start(rpc.serve)
    with trio.fail_after(10):
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(frame)
        assert await bad.receive_some(10) == b""  # closed, nothing answered
        good = client(port)
        assert await good.request(ECHO, 0, "after", timeout_s=5) == {"echo": "after"}
        await good.aclose()
    assert rpc.statistics()["malformed_frames"] == 1
    lines = [record.getMessage() for record in caplog.records]  # each one formats
    assert lines and all(len(line) < 500 and "\n" not in line for line in lines)


async def test_a_header_at_the_edges_of_its_ranges_is_answered(nursery) -> None:
    rpc = RpcServer(handler)
    port = await nursery.start(rpc.serve)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(encode_frame([2**15 - 1, -(2**15), 2**31 - 1, None, None]))
        decoder, answers = FrameDecoder(), []
        while not answers:
            answers += decoder.feed(await stream.receive_some(4096))
    assert answers[0][0] == 2**31 - 1
    assert answers[0][1]["error_code"] == ErrorCode.UNSUPPORTED_VERSION
