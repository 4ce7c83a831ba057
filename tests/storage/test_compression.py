"""The four codecs Kafka's clients use, each bounded when inflating (issue 15 item 6;
issue 14's decompression bomb)."""

from __future__ import annotations

import struct

import cramjam
import pytest

from storage import compression
from storage.records import (
    BATCH_HEADER_BYTES,
    Compression,
    CorruptRecordError,
    RecordInput,
    build_batch,
    check_producer_batches,
    compute_crc,
    iter_records,
)

CODECS = [Compression.GZIP, Compression.SNAPPY, Compression.LZ4, Compression.ZSTD]
RECORDS = [RecordInput(timestamp=i, key=b"k%d" % (i % 3), value=b"v" * i) for i in range(200)]


@pytest.mark.parametrize("codec", CODECS)
def test_a_batch_round_trips_with_each_codec(codec: Compression) -> None:
    batch = build_batch(RECORDS, compression=codec)
    plain = build_batch(RECORDS)
    assert len(batch) < len(plain)
    got = [(r.key, r.value, r.timestamp) for r in iter_records(batch)]
    assert got == [(r.key, r.value, r.timestamp) for r in RECORDS]
    check_producer_batches(batch, inflated_bytes_max=1 << 20)


def with_section(batch: bytes, section: bytes) -> bytes:
    """`batch`'s header over another records section, lengths and CRC made right."""
    forged = bytearray(batch[:BATCH_HEADER_BYTES] + section)
    struct.pack_into(">i", forged, 8, len(forged) - 12)
    struct.pack_into(">I", forged, 17, compute_crc(forged))
    return bytes(forged)


@pytest.mark.parametrize("codec", CODECS)
def test_a_bomb_is_refused_at_the_bound_with_each_codec(codec: Compression) -> None:
    bomb = compression.compress(codec, b"\0" * (8 << 20))
    forged = with_section(build_batch(RECORDS[:1], compression=codec), bomb)
    with pytest.raises(CorruptRecordError, match="past"):
        check_producer_batches(forged, inflated_bytes_max=1 << 20)


@pytest.mark.parametrize("codec", CODECS)
def test_garbage_that_does_not_inflate_is_refused(codec: Compression) -> None:
    forged = with_section(build_batch(RECORDS[:1], compression=codec), b"\x82SNAPPY\x00garbage")
    with pytest.raises(CorruptRecordError):
        check_producer_batches(forged, inflated_bytes_max=1 << 20)


def test_raw_snappy_is_read_as_well_as_xerial_framing() -> None:
    plain = build_batch(RECORDS)
    section = bytes(plain[BATCH_HEADER_BYTES:])
    raw = bytes(cramjam.snappy.compress_raw(section))
    forged = with_section(build_batch(RECORDS, compression=Compression.SNAPPY), raw)
    assert [r.value for r in iter_records(forged)] == [r.value for r in RECORDS]
    framed = compression.compress(compression.SNAPPY, section * 3)
    assert framed.startswith(compression.XERIAL_MAGIC)  # several 32 KiB blocks
    assert compression.decompress(compression.SNAPPY, framed, 1 << 22) == section * 3
