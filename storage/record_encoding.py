"""The bytes of one v2 record, as a batch holds it (the layout is in storage.records).

`BatchBuilder.append` encodes an ordinary record inline from the tables here; this
module's `encode_record` is the general encoder it falls back to (headers, negative
timestamp deltas, fields past the tables), and the reference for the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from storage.varint import NON_NEGATIVE_VARINTS, encode_varint

NULL_FIELD = encode_varint(-1)  # a null key, value or header value
NO_HEADERS = encode_varint(0)
# A record's attributes byte (always 0 in v2) and its timestamp delta, as one piece.
ATTRIBUTES_AND_DELTA: tuple[bytes, ...] = tuple(b"\x00" + varint for varint in NON_NEGATIVE_VARINTS)


def encode_headers(headers: Iterable[tuple[str, bytes | None]]) -> bytes:
    parts = []
    for name, value in headers:
        encoded_name = name.encode("utf-8")
        parts.append(encode_varint(len(encoded_name)))
        parts.append(encoded_name)
        parts.append(NULL_FIELD if value is None else encode_varint(len(value)) + value)
    return encode_varint(len(parts) // 3) + b"".join(parts)


def encode_record(
    timestamp_delta: int,
    offset_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
) -> bytes:
    """Length varint, attributes, timestamp and offset deltas, key, value, headers."""
    body = bytearray(1)  # attributes: unused in v2
    body += encode_varint(timestamp_delta)
    body += encode_varint(offset_delta)
    body += NULL_FIELD if key is None else encode_varint(len(key)) + key
    body += NULL_FIELD if value is None else encode_varint(len(value)) + value
    body += encode_headers(headers)
    return encode_varint(len(body)) + body
