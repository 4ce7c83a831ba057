"""What a leader refuses from a producer (Kafka's LogValidator), with a valid CRC each
time: the broker must not store what it cannot read back (issue 14, findings 3 and 6)."""

from __future__ import annotations

import gzip
import struct

import pytest

from storage.records import (
    BATCH_HEADER_BYTES,
    Compression,
    ControlBatchError,
    CorruptRecordError,
    InvalidRecordError,
    RecordInput,
    UnsupportedCompressionError,
    build_batch,
    check_producer_batches,
    compute_crc,
)

LIMIT = 32 * 1024 * 1024
ATTRIBUTES, LAST_OFFSET_DELTA, RECORD_COUNT, CRC = 21, 23, 57, 17


def three(compression: Compression = Compression.NONE) -> bytearray:
    records = [RecordInput(timestamp=1, key=None, value=b"v%d" % i) for i in range(3)]
    return bytearray(build_batch(records, compression=compression))


def recrc(batch: bytearray) -> bytes:
    struct.pack_into(">I", batch, CRC, compute_crc(batch))
    return bytes(batch)


def with_field(batch: bytearray, position: int, fmt: str, value: int) -> bytes:
    struct.pack_into(fmt, batch, position, value)
    return recrc(batch)


def test_a_good_batch_passes() -> None:
    check_producer_batches(bytes(three()), inflated_bytes_max=LIMIT)
    check_producer_batches(bytes(three(Compression.GZIP)), inflated_bytes_max=LIMIT)


@pytest.mark.parametrize("delta", [0, 1, 3, 2**31 - 1])
def test_a_last_offset_delta_that_disagrees_with_the_count_is_refused(delta: int) -> None:
    # 2**31 - 1 forced a new segment per request and exhausted file handles.
    with pytest.raises(InvalidRecordError, match=r"(?i)last ?offset ?delta"):
        check_producer_batches(
            with_field(three(), LAST_OFFSET_DELTA, ">i", delta), inflated_bytes_max=LIMIT
        )


def test_more_records_than_the_bytes_can_hold_is_refused() -> None:
    batch = three()
    struct.pack_into(">i", batch, LAST_OFFSET_DELTA, 999)
    with pytest.raises(InvalidRecordError, match="records in"):
        check_producer_batches(
            with_field(batch, RECORD_COUNT, ">i", 1000), inflated_bytes_max=LIMIT
        )


def test_a_control_batch_from_a_producer_is_refused() -> None:
    batch = three()
    attributes = struct.unpack_from(">h", batch, ATTRIBUTES)[0] | 0x20
    with pytest.raises(ControlBatchError):
        check_producer_batches(
            with_field(batch, ATTRIBUTES, ">h", attributes), inflated_bytes_max=LIMIT
        )


@pytest.mark.parametrize("codec", [2, 3, 4])
def test_a_section_that_is_not_what_its_codec_claims_is_refused(codec: int) -> None:
    with pytest.raises(CorruptRecordError):
        check_producer_batches(
            with_field(three(), ATTRIBUTES, ">h", codec), inflated_bytes_max=LIMIT
        )


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_codecs_no_one_defined_are_refused(codec: int) -> None:
    with pytest.raises(UnsupportedCompressionError):
        check_producer_batches(
            with_field(three(), ATTRIBUTES, ">h", codec), inflated_bytes_max=LIMIT
        )


def test_a_gzip_bomb_is_refused_at_the_bound() -> None:
    batch = three(Compression.GZIP)
    bomb = gzip.compress(b"\x00" * (LIMIT + 1))
    forged = bytearray(batch[:BATCH_HEADER_BYTES] + bomb)
    struct.pack_into(">i", forged, 8, len(forged) - 12)  # batchLength
    with pytest.raises(CorruptRecordError, match="inflate past"):
        check_producer_batches(recrc(forged), inflated_bytes_max=LIMIT)


def test_garbage_records_in_a_gzip_batch_are_refused() -> None:
    batch = three(Compression.GZIP)
    garbage = gzip.compress(b"\x07garbage-that-is-no-record")
    forged = bytearray(batch[:BATCH_HEADER_BYTES] + garbage)
    struct.pack_into(">i", forged, 8, len(forged) - 12)
    with pytest.raises(CorruptRecordError):
        check_producer_batches(recrc(forged), inflated_bytes_max=LIMIT)
