"""The record-batch codecs Kafka's clients use: gzip, snappy, lz4 and zstd.

A batch's records section is compressed as a whole (attributes bits 0-2 name the codec).
Inflation is always bounded: a small batch must not cost gigabytes (a "compression
bomb"), so each codec writes into at most `limit` bytes and fails past them.

- gzip: zlib with the gzip wrapper.
- snappy: Kafka's Java client writes xerial's framing (a magic header, then blocks
  each prefixed by its length); librdkafka and others may send raw snappy. Both are read;
  xerial framing is written, as the Java client does.
- lz4: the LZ4 frame format (Kafka's KafkaLZ4BlockOutputStream, magic v1 and later).
- zstd: a zstd frame.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import cramjam

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODECS = (NONE, GZIP, SNAPPY, LZ4, ZSTD)
XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = struct.Struct(">8sii")  # magic, version, compatible version
_BLOCK_LENGTH = struct.Struct(">i")
XERIAL_BLOCK_BYTES = 32 * 1024  # what xerial's SnappyOutputStream writes per block


class CompressionError(ValueError):
    """The bytes do not inflate with their codec, or inflate past the limit."""


def compress(codec: int, data: bytes | bytearray | memoryview) -> bytes:
    if codec == GZIP:
        return gzip.compress(bytes(data), mtime=0)
    if codec == SNAPPY:
        return _xerial_compress(bytes(data))
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(bytes(data)))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(bytes(data)))
    raise CompressionError(f"codec {codec} does not compress")


def decompress(codec: int, data: bytes | bytearray | memoryview, limit: int) -> bytes:
    """The inflated records section; CompressionError if bad or larger than `limit`."""
    try:
        if codec == GZIP:
            return _gunzip(data, limit)
        if codec == SNAPPY:
            raw = bytes(data)
            if raw.startswith(XERIAL_MAGIC):
                return _xerial_decompress(raw, limit)
            return _snappy_block(raw, limit)
        if codec in (LZ4, ZSTD):
            return _bounded(cramjam.lz4 if codec == LZ4 else cramjam.zstd, bytes(data), limit)
    except cramjam.DecompressionError as error:
        raise CompressionError(f"records section does not inflate: {error}") from None
    raise CompressionError(f"codec {codec} does not decompress")


def _gunzip(data: bytes | bytearray | memoryview, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as error:
        raise CompressionError(f"gzip records section does not inflate: {error}") from None
    if inflater.unconsumed_tail:
        raise CompressionError(f"gzip records inflate past {limit} bytes")
    return out


def _bounded(codec: object, data: bytes, limit: int) -> bytes:
    # One byte more than allowed: filling it means the limit was passed.
    out = bytearray(limit + 1)
    try:
        written = codec.decompress_into(data, out)  # type: ignore[attr-defined]
    except cramjam.DecompressionError as error:
        if "whole buffer" in str(error):
            raise CompressionError(f"records inflate past {limit} bytes") from None
        raise
    if written > limit:
        raise CompressionError(f"records inflate past {limit} bytes")
    return bytes(out[:written])


def _snappy_block(block: bytes, limit: int) -> bytes:
    length = cramjam.snappy.decompress_raw_len(block)
    if length > limit:
        raise CompressionError(f"snappy records inflate past {limit} bytes")
    return bytes(cramjam.snappy.decompress_raw(block))


def _xerial_decompress(data: bytes, limit: int) -> bytes:
    if len(data) < _XERIAL_HEADER.size:
        raise CompressionError("xerial snappy header is truncated")
    position = _XERIAL_HEADER.size
    out = bytearray()
    while position < len(data):
        if position + _BLOCK_LENGTH.size > len(data):
            raise CompressionError("xerial snappy block length is truncated")
        (length,) = _BLOCK_LENGTH.unpack_from(data, position)
        position += _BLOCK_LENGTH.size
        if length < 0 or position + length > len(data):
            raise CompressionError(f"xerial snappy block of {length} bytes runs past the batch")
        out += _snappy_block(data[position : position + length], limit - len(out))
        position += length
    return bytes(out)


def _xerial_compress(data: bytes) -> bytes:
    parts = [_XERIAL_HEADER.pack(XERIAL_MAGIC, 1, 1)]
    for start in range(0, len(data), XERIAL_BLOCK_BYTES):
        block = bytes(cramjam.snappy.compress_raw(data[start : start + XERIAL_BLOCK_BYTES]))
        parts += [_BLOCK_LENGTH.pack(len(block)), block]
    return b"".join(parts)
