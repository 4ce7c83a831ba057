"""The server's gathering send: every byte of a list of buffers, in order, whatever
the kernel takes per call (partial sends, more buffers than one sendmsg carries); and
native answers encoded as parts are the bytes `encode_frame` makes."""

from __future__ import annotations

import random

import trio
import trio.testing
from hypothesis import given, settings

from client.protocol.framing import encode_frame
from client.protocol.rpc import (
    JOIN_BYTES_MAX,
    SENDMSG_BUFFERS_MAX,
    encode_frame_parts,
    send_buffers,
)
from tests.client.test_rpc import cbor_values


def _buffers(rng: random.Random) -> list[bytes | bytearray | memoryview]:
    buffers: list[bytes | bytearray | memoryview] = []
    # More buffers than one sendmsg takes, empty ones among them, and large ones that
    # fill the socket's send buffer many times over (so sends come back partial).
    for index in range(SENDMSG_BUFFERS_MAX + 300):
        size = rng.choice((0, 1, 7, 100, 5000))
        buffers.append(rng.randbytes(size))
        if index % 400 == 0:
            buffers.append(memoryview(bytearray(rng.randbytes(3 * 1024 * 1024))))
    return buffers


async def _read_all(stream: trio.abc.Stream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = await stream.receive_some(7919)  # small reads: the sender waits on room
        assert chunk, "the sender closed early"
        received += chunk
    return bytes(received)


async def test_every_byte_arrives_in_order_over_a_socket() -> None:
    buffers = _buffers(random.Random(3))
    expected = b"".join(buffers)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def serve_one() -> None:
            stream = await listeners[0].accept()
            async with stream:
                got.append(await _read_all(stream, len(expected)))

        nursery.start_soon(serve_one)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        assert isinstance(client, trio.SocketStream)  # the sendmsg path
        async with client:
            await send_buffers(client, list(buffers))
    await listeners[0].aclose()
    assert got == [expected]


async def test_every_byte_arrives_in_order_over_a_stream_without_sendmsg() -> None:
    buffers = _buffers(random.Random(4))
    expected = b"".join(buffers)
    sender, receiver = trio.testing.memory_stream_pair()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            got.append(await _read_all(receiver, len(expected)))

        nursery.start_soon(read)
        await send_buffers(sender, list(buffers))
    assert got == [expected]


@settings(max_examples=200, deadline=None)
@given(item=cbor_values)
def test_native_answers_as_parts_are_the_frame(item: object) -> None:
    parts, size = encode_frame_parts([7, item])
    assert b"".join(parts) == encode_frame([7, item])
    assert size == sum(map(len, parts))


def test_large_bytes_of_a_native_answer_are_parts_of_their_own() -> None:
    rng = random.Random(5)
    records = [rng.randbytes(JOIN_BYTES_MAX + n) for n in (0, 1000)]
    answer = {"topics": [{"partition": i, "records": r} for i, r in enumerate(records)]}
    parts, _ = encode_frame_parts([3, answer])
    assert b"".join(parts) == encode_frame([3, answer])
    assert [bytes(p) for p in parts if len(p) >= JOIN_BYTES_MAX] == records
    assert len(parts) <= 2 * len(records) + 1  # the small writes between them gathered
