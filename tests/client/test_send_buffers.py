"""The server's gathering send: every byte of a list of buffers, in order, whatever
the kernel takes per call (partial sends, more buffers than one sendmsg carries)."""

from __future__ import annotations

import random

import trio
import trio.testing

from client.protocol.rpc import SENDMSG_BUFFERS_MAX, send_buffers


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
