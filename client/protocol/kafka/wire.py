"""Kafka's primitive encodings, the pieces the generated codecs call.

Classic encodings (Kafka's protocol guide): big-endian fixed-width integers, strings
with an int16 length, bytes and arrays with an int32 length, -1 for null. Flexible
ones (KIP-482): compact strings, bytes and arrays whose length is an unsigned varint
holding length + 1 (0 for null), and tagged fields.

Every reader takes a buffer (a `memoryview` of one frame) and a position and returns
the value and the next position. A length is checked against the bytes left before
anything is sliced or allocated, so a hostile length costs nothing (Kafka refuses a
collection larger than the bytes remaining in the same way).
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

from client.protocol.kafka.errors import KafkaCodecError, KafkaEncodeError

# Kafka's strings are at most Short.MAX_VALUE bytes of UTF-8, classic or compact.
STRING_BYTES_MAX = 0x7FFF
# An unsigned varint of a 32-bit value takes at most 5 bytes (ByteUtils.readUnsignedVarint).
UVARINT_BYTES_MAX = 5
UINT32_MAX = 0xFFFFFFFF

INT8 = struct.Struct(">b")
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")
UUID_BYTES = 16

_UVARINT_SMALL = tuple(bytes((n,)) for n in range(0x80))


def read_uvarint(buf: memoryview, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:
        return buf[pos], pos + 1
    value = 0
    shift = 0
    for index in range(UVARINT_BYTES_MAX):
        if pos + index >= len(buf):
            raise KafkaCodecError(f"truncated unsigned varint at byte {pos}")
        byte = buf[pos + index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > UINT32_MAX:
                raise KafkaCodecError(f"unsigned varint at byte {pos} exceeds 32 bits")
            return value, pos + index + 1
        shift += 7
    raise KafkaCodecError(f"unsigned varint at byte {pos} is longer than {UVARINT_BYTES_MAX} bytes")


def uvarint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _UVARINT_SMALL[value]
    if value < 0 or value > UINT32_MAX:
        raise KafkaEncodeError(f"{value} does not fit an unsigned varint")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _need(buf: memoryview, pos: int, length: int, what: str) -> None:
    if length > len(buf) - pos:
        raise KafkaCodecError(f"{what} of {length} bytes at byte {pos}, only {len(buf) - pos} left")


def _text(buf: memoryview, pos: int, length: int) -> str:
    if length > STRING_BYTES_MAX:
        raise KafkaCodecError(f"string of {length} bytes at byte {pos} exceeds {STRING_BYTES_MAX}")
    if length > len(buf) - pos:
        raise KafkaCodecError(f"string of {length} bytes at byte {pos}, only {len(buf) - pos} left")
    try:
        return str(buf[pos : pos + length], "utf-8")
    except UnicodeDecodeError:
        raise KafkaCodecError(f"string at byte {pos} is not UTF-8") from None


# ------------------------------------------------------------------ strings, bytes


def read_string(buf: memoryview, pos: int) -> tuple[str, int]:
    (length,) = INT16.unpack_from(buf, pos)
    if length < 0:
        raise KafkaCodecError(f"non-nullable string at byte {pos} has length {length}")
    return _text(buf, pos + 2, length), pos + 2 + length


def read_nullable_string(buf: memoryview, pos: int) -> tuple[str | None, int]:
    (length,) = INT16.unpack_from(buf, pos)
    if length == -1:
        return None, pos + 2
    if length < 0:
        raise KafkaCodecError(f"string at byte {pos} has length {length}")
    return _text(buf, pos + 2, length), pos + 2 + length


def read_compact_string(buf: memoryview, pos: int) -> tuple[str, int]:
    length, start = read_uvarint(buf, pos)
    if length == 0:
        raise KafkaCodecError(f"non-nullable compact string at byte {pos} is null")
    return _text(buf, start, length - 1), start + length - 1


def read_compact_nullable_string(buf: memoryview, pos: int) -> tuple[str | None, int]:
    length, start = read_uvarint(buf, pos)
    if length == 0:
        return None, start
    return _text(buf, start, length - 1), start + length - 1


def _blob(buf: memoryview, pos: int, length: int) -> bytes:
    if length > len(buf) - pos:
        raise KafkaCodecError(f"bytes of {length} at byte {pos}, only {len(buf) - pos} left")
    return bytes(buf[pos : pos + length])


def read_bytes(buf: memoryview, pos: int) -> tuple[bytes, int]:
    (length,) = INT32.unpack_from(buf, pos)
    if length < 0:
        raise KafkaCodecError(f"non-nullable bytes at byte {pos} have length {length}")
    return _blob(buf, pos + 4, length), pos + 4 + length


def read_nullable_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    (length,) = INT32.unpack_from(buf, pos)
    if length == -1:
        return None, pos + 4
    if length < 0:
        raise KafkaCodecError(f"bytes at byte {pos} have length {length}")
    return _blob(buf, pos + 4, length), pos + 4 + length


def read_compact_bytes(buf: memoryview, pos: int) -> tuple[bytes, int]:
    length, start = read_uvarint(buf, pos)
    if length == 0:
        raise KafkaCodecError(f"non-nullable compact bytes at byte {pos} are null")
    return _blob(buf, start, length - 1), start + length - 1


def read_compact_nullable_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    length, start = read_uvarint(buf, pos)
    if length == 0:
        return None, start
    return _blob(buf, start, length - 1), start + length - 1


def read_uuid(buf: memoryview, pos: int) -> tuple[uuid.UUID, int]:
    _need(buf, pos, UUID_BYTES, "uuid")
    return uuid.UUID(bytes=bytes(buf[pos : pos + UUID_BYTES])), pos + UUID_BYTES


# ------------------------------------------------------------------ array lengths
# Each returns the element count, or -1 for a null array; `element_bytes_min` is the
# smallest encoding of one element, so the count is checked against the bytes left.


def read_array_length(
    buf: memoryview, pos: int, element_bytes_min: int, nullable: bool
) -> tuple[int, int]:
    (count,) = INT32.unpack_from(buf, pos)
    return _count(buf, pos, pos + 4, count, element_bytes_min, nullable)


def read_compact_array_length(
    buf: memoryview, pos: int, element_bytes_min: int, nullable: bool
) -> tuple[int, int]:
    count, start = read_uvarint(buf, pos)
    return _count(buf, pos, start, count - 1, element_bytes_min, nullable)


def _count(
    buf: memoryview, pos: int, start: int, count: int, element_bytes_min: int, nullable: bool
) -> tuple[int, int]:
    if count < 0:
        if count == -1 and nullable:
            return -1, start
        raise KafkaCodecError(f"array at byte {pos} has length {count}")
    if count > len(buf) - start or count * element_bytes_min > len(buf) - start:
        raise KafkaCodecError(
            f"array of {count} elements at byte {pos}, only {len(buf) - start} bytes left"
        )
    return count, start


def read_fixed_array(
    buf: memoryview, pos: int, count: int, code: str, size: int
) -> tuple[tuple[Any, ...], int]:
    return struct.unpack_from(f">{count}{code}", buf, pos), pos + count * size


# ------------------------------------------------------------------ tagged fields


def skip_tagged_field(buf: memoryview, pos: int) -> tuple[int, int, int]:
    """Read a tag and its size; return (tag, start of its data, end of its data)."""
    tag, pos = read_uvarint(buf, pos)
    size, start = read_uvarint(buf, pos)
    _need(buf, start, size, "tagged field")
    return tag, start, start + size


def check_consumed(end: int, expected: int, what: str) -> None:
    if end != expected:
        raise KafkaCodecError(f"{what} used {end} bytes of its {expected}")


# ------------------------------------------------------------------ writers


def _utf8(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise KafkaEncodeError(f"{where}: expected a str, got {type(value).__name__}")
    data = value.encode("utf-8")
    if len(data) > STRING_BYTES_MAX:
        raise KafkaEncodeError(f"{where}: string of {len(data)} bytes exceeds {STRING_BYTES_MAX}")
    return data


def write_string(out: bytearray, value: Any, nullable: bool, where: str) -> None:
    if value is None and nullable:
        out += b"\xff\xff"
        return
    data = _utf8(value, where)
    out += INT16.pack(len(data))
    out += data


def write_compact_string(out: bytearray, value: Any, nullable: bool, where: str) -> None:
    if value is None and nullable:
        out += b"\x00"
        return
    data = _utf8(value, where)
    out += uvarint(len(data) + 1)
    out += data


def _blob_value(value: Any, where: str) -> Any:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise KafkaEncodeError(f"{where}: expected bytes, got {type(value).__name__}")
    return value


class FrameParts(bytearray):
    """An encode buffer that leaves large bytes fields out of itself.

    Writers append to it as to any bytearray; a bytes or records field of at least
    `PART_BYTES_MIN` is not copied in: what was encoded before it becomes one part,
    the field's own buffer the next, and encoding goes on in the emptied buffer. The
    parts, sent back to back, are the bytes a plain bytearray would hold.
    """

    __slots__ = ("parts",)

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.parts: list[bytes | bytearray | memoryview] = []

    def add_part(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(bytearray(self))
        self.clear()
        self.parts.append(data)

    def finish(self) -> list[bytes | bytearray | memoryview]:
        """Every part, what is left in the buffer last; the buffer is empty after."""
        parts = self.parts
        if self or not parts:
            parts.append(bytearray(self))
            self.clear()
        self.parts = []
        return parts


# Smaller bytes fields are copied into a FrameParts too: a part costs more than that.
PART_BYTES_MIN = 8 * 1024


def write_bytes(out: bytearray, value: Any, nullable: bool, where: str) -> None:
    if value is None and nullable:
        out += b"\xff\xff\xff\xff"
        return
    data = _blob_value(value, where)
    out += INT32.pack(len(data))
    if len(data) >= PART_BYTES_MIN and type(out) is FrameParts:
        out.add_part(data)
    else:
        out += data


def write_compact_bytes(out: bytearray, value: Any, nullable: bool, where: str) -> None:
    if value is None and nullable:
        out += b"\x00"
        return
    data = _blob_value(value, where)
    out += uvarint(len(data) + 1)
    if len(data) >= PART_BYTES_MIN and type(out) is FrameParts:
        out.add_part(data)
    else:
        out += data


def write_uuid(out: bytearray, value: Any, where: str) -> None:
    if not isinstance(value, uuid.UUID):
        raise KafkaEncodeError(f"{where}: expected a uuid.UUID, got {type(value).__name__}")
    out += value.bytes


def write_array_length(
    out: bytearray, value: Any, nullable: bool, compact: bool, where: str
) -> None:
    if value is None:
        if not nullable:
            raise KafkaEncodeError(f"{where}: null array in a version where it is not nullable")
        out += b"\x00" if compact else b"\xff\xff\xff\xff"
        return
    out += uvarint(len(value) + 1) if compact else INT32.pack(len(value))


def write_fixed_array(out: bytearray, value: Any, code: str) -> None:
    out += struct.pack(f">{len(value)}{code}", *value)
