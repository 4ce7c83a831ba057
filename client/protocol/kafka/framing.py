"""Kafka's framing on a stream: a 4-byte big-endian signed size, then that many bytes.

`KafkaFrameDecoder` takes bytes as they arrive and returns the body of every complete
frame (sans-I/O: it never touches a socket). The size is checked against
`frame_bytes_max` as soon as its 4 bytes are in, before a byte of the body is kept, so
a peer announcing a huge frame costs nothing; Kafka's broker does the same with
`socket.request.max.bytes` (100 MiB by default) and closes the connection.

Bodies are `memoryview`s, never copies of their own: a frame that arrived whole inside
one received chunk is a view of that chunk, and one spread over several receives is
gathered once, into one buffer that grows as its bytes arrive (not allocated at its
announced size: a peer pays with the bytes it sends for the memory it holds). The
decoders read views and copy out only the records they keep.
"""

from __future__ import annotations

import struct

from client.protocol.kafka.errors import FrameTooLarge, KafkaCodecError

# Kafka's socket.request.max.bytes default (the broker's request size limit).
SOCKET_REQUEST_MAX_BYTES_DEFAULT = 100 * 1024 * 1024
_SIZE = struct.Struct(">i")


class KafkaFrameDecoder:
    def __init__(self, frame_bytes_max: int = SOCKET_REQUEST_MAX_BYTES_DEFAULT) -> None:
        assert frame_bytes_max > 0
        self.frame_bytes_max = frame_bytes_max
        self._prefix = bytearray()  # a size prefix not yet whole
        # The body of a frame begun in an earlier feed (what is in), and its size.
        self._body: bytearray | None = None
        self._size = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._prefix) + (0 if self._body is None else len(self._body))

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Add received bytes; return the body of every frame now complete, in order."""
        if not isinstance(data, bytes):
            data = bytes(data)  # the caller may reuse its buffer: the views need their own
        view = memoryview(data)
        frames: list[memoryview] = []
        position = 0
        if self._body is not None or self._prefix:
            position = self._continue(view, frames)
        end_of_data = len(view)
        while end_of_data - position >= _SIZE.size:
            size = self._checked(_SIZE.unpack_from(view, position)[0])
            start = position + _SIZE.size
            if start + size > end_of_data:
                self._begin(size, view[start:])
                return frames
            frames.append(view[start : start + size])
            position = start + size
        if position < end_of_data:
            self._prefix += view[position:]
        return frames

    def _continue(self, view: memoryview, frames: list[memoryview]) -> int:
        """Complete what earlier feeds began; the position in `view` after it."""
        position = 0
        if self._body is None:
            taken = min(_SIZE.size - len(self._prefix), len(view))
            self._prefix += view[:taken]
            position = taken
            if len(self._prefix) < _SIZE.size:
                return position
            size = self._checked(_SIZE.unpack_from(self._prefix, 0)[0])
            self._prefix.clear()
            self._body, self._size = bytearray(), size
        body = self._body
        taken = min(self._size - len(body), len(view) - position)
        body += view[position : position + taken]
        position += taken
        if len(body) == self._size:
            frames.append(memoryview(body))
            self._body = None
        return position

    def _begin(self, size: int, head: memoryview) -> None:
        self._body, self._size = bytearray(head), size

    def _checked(self, size: int) -> int:
        if size < 0:
            raise KafkaCodecError(f"frame size {size} is negative")
        if size > self.frame_bytes_max:
            raise FrameTooLarge(
                f"frame of {size} bytes exceeds the limit of {self.frame_bytes_max}"
            )
        return size


def frame(body: bytes | bytearray) -> bytes:
    """One body with its size prefix (the codec's encoders already return whole frames)."""
    return _SIZE.pack(len(body)) + bytes(body)
