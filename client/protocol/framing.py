"""Frames on a stream: a 4-byte big-endian length, then one CBOR item (sans-I/O).

`FrameDecoder` takes bytes as they arrive and returns every complete item; it never
touches a socket (h11's model). The length is checked against `frame_bytes_max`
before a byte of the body is buffered, so an oversized frame costs nothing to refuse.
A frame that breaks these rules is the peer's fault: the caller closes that
connection and keeps serving the others. A frame holds exactly one item: bytes after
it would be silently dropped by `cbor2.loads`, so they are refused like any other
malformed frame.
"""

from __future__ import annotations

import io
import reprlib
import struct
from typing import Any

import cbor2

# Kafka's socket.request.max.bytes default.
FRAME_BYTES_MAX_DEFAULT = 100 * 1024 * 1024
_LENGTH = struct.Struct(">I")
# How much of a peer's value an error message or a log line may quote.
PREVIEW_CHARS_MAX = 120
# An int wider than this is described, not spelled out: printing a 1 MB bignum takes
# seconds and Python refuses ints above 4300 digits (sys.int_info.default_max_str_digits).
PREVIEW_INT_BITS_MAX = 128


class _Preview(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 40
        self.maxlist = self.maxtuple = self.maxdict = 6

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > PREVIEW_INT_BITS_MAX:
            return f"<int of {x.bit_length()} bits>"
        return repr(x)


_PREVIEW = _Preview()


def preview(value: Any) -> str:
    """A bounded, always-printable description of a peer's value (for errors and logs)."""
    text = _PREVIEW.repr(value)
    return text if len(text) <= PREVIEW_CHARS_MAX else text[: PREVIEW_CHARS_MAX - 3] + "..."


def bounded(message: str) -> str:
    """A peer-influenced message cut to one short line, fit for a log."""
    line = message.replace("\n", " ")
    return line if len(line) <= 2 * PREVIEW_CHARS_MAX else line[: 2 * PREVIEW_CHARS_MAX] + "..."


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
            items.append(_decode_one_item(bytes(buffer[position + _LENGTH.size : end])))
            position = end
        if position:
            del buffer[:position]
        return items


def _decode_one_item(body: bytes) -> Any:
    stream = io.BytesIO(body)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as error:
        raise MalformedFrame(bounded(f"frame body is not one CBOR item: {error}")) from None
    if stream.tell() != len(body):
        raise MalformedFrame(
            f"{len(body) - stream.tell()} bytes after the first CBOR item of a "
            f"{len(body)}-byte frame"
        )
    return item
