"""Kafka's framing on a stream: a 4-byte big-endian signed size, then that many bytes.

`KafkaFrameDecoder` takes bytes as they arrive and returns the body of every complete
frame (sans-I/O: it never touches a socket). The size is checked against
`frame_bytes_max` as soon as its 4 bytes are in, before a byte of the body is kept, so
a peer announcing a huge frame costs nothing; Kafka's broker does the same with
`socket.request.max.bytes` (100 MiB by default) and closes the connection. Bytes of a
frame whose size is known are buffered only up to that size plus what one receive
brought.
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
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the body of every frame now complete, in order."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        position = 0
        while len(buffer) - position >= _SIZE.size:
            (size,) = _SIZE.unpack_from(buffer, position)
            if size < 0:
                raise KafkaCodecError(f"frame size {size} is negative")
            if size > self.frame_bytes_max:
                raise FrameTooLarge(
                    f"frame of {size} bytes exceeds the limit of {self.frame_bytes_max}"
                )
            end = position + _SIZE.size + size
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[position + _SIZE.size : end]))
            position = end
        if position:
            del buffer[:position]
        return frames


def frame(body: bytes | bytearray) -> bytes:
    """One body with its size prefix (the codec's encoders already return whole frames)."""
    return _SIZE.pack(len(body)) + bytes(body)
