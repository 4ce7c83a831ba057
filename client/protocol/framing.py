"""Frames on a stream: a 4-byte big-endian length, then one CBOR item (sans-I/O).

`FrameDecoder` takes bytes as they arrive and returns every complete item; it never
touches a socket (h11's model). The length is checked against `frame_bytes_max`
before a byte of the body is buffered, so an oversized frame costs nothing to refuse.
A frame that breaks these rules is the peer's fault: the caller closes that
connection and keeps serving the others.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

# Kafka's socket.request.max.bytes default.
FRAME_BYTES_MAX_DEFAULT = 100 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class FrameError(Exception):
    """The peer broke the framing rules; close the connection."""


class FrameTooLarge(FrameError):
    pass


class MalformedFrame(FrameError):
    pass


def encode_frame(item: Any) -> bytes:
    body = cbor2.dumps(item)
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add received bytes; return the items of every frame now complete."""
        self._buffer += data
        items = []
        position = 0
        buffer = self._buffer
        while len(buffer) - position >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, position)
            if length > self.frame_bytes_max:
                raise FrameTooLarge(
                    f"frame of {length} bytes exceeds the limit of {self.frame_bytes_max}"
                )
            end = position + _LENGTH.size + length
            if len(buffer) < end:
                break
            body = bytes(buffer[position + _LENGTH.size : end])
            try:
                items.append(cbor2.loads(body))
            except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as error:
                raise MalformedFrame(f"frame body is not one CBOR item: {error}") from None
            position = end
        if position:
            del buffer[:position]
        return items
