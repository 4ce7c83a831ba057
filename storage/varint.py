"""Zigzag varints as Kafka's record format uses them (protobuf's encoding).

Encoding is on the producer's hot path, so small values come from a precomputed
table of byte strings: one dict-free tuple index instead of a loop per byte.
"""

from __future__ import annotations

# Values in [-TABLE_LIMIT, TABLE_LIMIT) cover every length and delta of ordinary
# records; larger ones take the loop.
TABLE_LIMIT = 1 << 14


class VarintError(ValueError):
    """A varint runs past the end of its buffer or past 10 bytes."""


def _encode_unsigned(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


_TABLE: tuple[bytes, ...] = tuple(
    _encode_unsigned(_zigzag(value)) for value in range(-TABLE_LIMIT, TABLE_LIMIT)
)


# The same encodings indexed by the value itself, for callers that know it is in
# [0, TABLE_LIMIT): counts, lengths and offset deltas skip the offset addition, and
# an IndexError (never a wrong answer) tells them a value is past the table.
NON_NEGATIVE_VARINTS: tuple[bytes, ...] = _TABLE[TABLE_LIMIT:]


def encode_varint(value: int) -> bytes:
    """Zigzag varint of a signed 64-bit value."""
    if -TABLE_LIMIT <= value < TABLE_LIMIT:
        return _TABLE[value + TABLE_LIMIT]
    return _encode_unsigned(_zigzag(value) & 0xFFFFFFFFFFFFFFFF)


def size_of_varint(value: int) -> int:
    return len(encode_varint(value))


def decode_varint(buffer: bytes | bytearray | memoryview, position: int) -> tuple[int, int]:
    """(value, next position) of the zigzag varint at `position`."""
    result = 0
    shift = 0
    end = len(buffer)
    while True:
        if position >= end:
            raise VarintError("varint runs past the end of the buffer")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise VarintError("varint longer than 10 bytes")
    return (result >> 1) ^ -(result & 1), position
