"""RecordBatch v2 against golden bytes from a real Kafka client, round trips, bad input."""

from __future__ import annotations

import json
import pathlib
import struct

import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch

from storage.records import (
    BATCH_HEADER_BYTES,
    BatchBuilder,
    Compression,
    ControlRecordType,
    CorruptRecordError,
    InvalidRecordError,
    Record,
    RecordInput,
    UnsupportedCompressionError,
    build_batch,
    build_control_batch,
    compute_crc,
    iter_batches,
    iter_records,
    parse_control_record_key,
    patch_base_offset,
    patch_partition_leader_epoch,
    read_header,
    validate_batch,
)
from storage.varint import VarintError, decode_varint, encode_varint

GOLDEN = json.loads(
    (pathlib.Path(__file__).parent.parent / "data" / "record_batches.json").read_text()
)


def _unhex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def golden_records(case: dict) -> list[Record]:
    return [
        Record(
            offset=r["offset"],
            timestamp=r["timestamp"],
            key=_unhex(r["key"]),
            value=_unhex(r["value"]),
            headers=tuple((name, _unhex(value)) for name, value in r["headers"]),
        )
        for r in case["records"]
    ]


@pytest.mark.parametrize("case", GOLDEN["batches"], ids=lambda case: case["name"])
def test_golden_batches_decode_exactly(case: dict) -> None:
    data = bytes.fromhex(case["hex"])
    header = validate_batch(data)
    assert header.base_offset == case["base_offset"]
    assert header.size_bytes == len(data)
    assert header.producer_id == case["producer_id"]
    assert header.producer_epoch == case["producer_epoch"]
    assert header.base_sequence == case["base_sequence"]
    assert header.is_transactional == case["transactional"]
    assert Compression(header.compression).name.lower() == case["compression"]
    assert list(iter_records(data)) == golden_records(case)


@pytest.mark.parametrize(
    "case", [c for c in GOLDEN["batches"] if c["compression"] == "none"], ids=lambda c: c["name"]
)
def test_golden_uncompressed_batches_reencode_byte_for_byte(case: dict) -> None:
    records = [
        RecordInput(timestamp=r.timestamp, key=r.key, value=r.value, headers=r.headers)
        for r in golden_records(case)
    ]
    golden_epoch = read_header(bytes.fromhex(case["hex"])).partition_leader_epoch
    rebuilt = build_batch(
        records,
        base_offset=case["base_offset"],
        partition_leader_epoch=golden_epoch,
        producer_id=case["producer_id"],
        producer_epoch=case["producer_epoch"],
        base_sequence=case["base_sequence"],
        is_transactional=case["transactional"],
    )
    assert rebuilt.hex() == case["hex"]


headers_strategy = st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3
).map(tuple)
record_strategy = st.builds(
    RecordInput,
    timestamp=st.integers(0, 2**41),
    key=st.none() | st.binary(max_size=50),
    value=st.none() | st.binary(max_size=300),
    headers=headers_strategy,
)


@given(
    records=st.lists(record_strategy, min_size=1, max_size=20),
    compression=st.sampled_from([Compression.NONE, Compression.GZIP]),
    base_offset=st.integers(0, 2**40),
)
def test_round_trip(records: list[RecordInput], compression: Compression, base_offset: int) -> None:
    data = build_batch(records, base_offset=base_offset, compression=compression)
    header = validate_batch(data)
    assert header.record_count == len(records)
    assert header.max_timestamp == max(r.timestamp for r in records)
    decoded = list(iter_records(data))
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in decoded] == [
        (base_offset + i, r.timestamp, r.key, r.value, r.headers) for i, r in enumerate(records)
    ]


@given(st.integers(-(2**63), 2**63 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + b"tail", 0) == (value, len(encoded))


def test_patching_offset_and_epoch_keeps_the_crc_valid() -> None:
    data = bytearray(
        build_batch([RecordInput(timestamp=5, value=b"a"), RecordInput(timestamp=6, value=b"b")])
    )
    patch_base_offset(data, 0, 1234)
    patch_partition_leader_epoch(data, 0, 17)
    header = validate_batch(data)
    assert (header.base_offset, header.partition_leader_epoch, header.last_offset) == (
        1234,
        17,
        1235,
    )
    assert [r.offset for r in iter_records(data)] == [1234, 1235]


def test_iter_batches_walks_headers_and_refuses_a_partial_tail() -> None:
    one = build_batch([RecordInput(value=b"x")])
    two = build_batch([RecordInput(value=b"y"), RecordInput(value=b"z")], base_offset=1)
    assert [(pos, h.record_count) for pos, h in iter_batches(one + two)] == [(0, 1), (len(one), 2)]
    with pytest.raises(InvalidRecordError, match=r"partial batch|bytes"):
        list(iter_batches(one + two[:-1]))


def _with_attributes(data: bytes, attributes: int) -> bytes:
    patched = bytearray(data)
    patched[21:23] = attributes.to_bytes(2, "big")
    patched[17:21] = compute_crc(patched).to_bytes(4, "big")
    return bytes(patched)


@pytest.mark.parametrize("position", [21, 30, 60, BATCH_HEADER_BYTES + 2, -1])
def test_a_flipped_bit_after_the_crc_field_is_detected(position: int) -> None:
    data = bytearray(build_batch([RecordInput(timestamp=1, key=b"k", value=b"value")]))
    data[position] ^= 0x10
    with pytest.raises(CorruptRecordError, match="CRC32C"):
        validate_batch(data)


def test_bad_sizes_magic_and_codecs_are_refused_with_reasons() -> None:
    good = build_batch([RecordInput(timestamp=1, value=b"value")])
    wrong_magic = bytearray(good)
    wrong_magic[16] = 1
    with pytest.raises(InvalidRecordError, match="magic 1"):
        validate_batch(wrong_magic)
    tiny_length = bytearray(good)
    tiny_length[8:12] = (10).to_bytes(4, "big")
    with pytest.raises(InvalidRecordError, match="below the minimum"):
        validate_batch(tiny_length)
    with pytest.raises(InvalidRecordError, match="only"):
        validate_batch(good[:-1])
    with pytest.raises(InvalidRecordError, match="needs 61 bytes"):
        read_header(good[:30])
    for codec in (5, 6, 7):
        with pytest.raises(UnsupportedCompressionError, match="unknown"):
            list(iter_records(_with_attributes(good, codec)))
    for codec, name in [(2, "snappy"), (3, "lz4"), (4, "zstd")]:  # not what they claim
        with pytest.raises(CorruptRecordError, match=name):
            list(iter_records(_with_attributes(good, codec)))


def test_record_count_mismatch_is_corrupt() -> None:
    good = bytearray(build_batch([RecordInput(value=b"a"), RecordInput(value=b"b")]))
    fewer = bytearray(good)
    fewer[57:61] = (1).to_bytes(4, "big")  # recordCount is inside the CRC: fix it up
    fewer[17:21] = compute_crc(fewer).to_bytes(4, "big")
    with pytest.raises(CorruptRecordError, match="bytes follow"):
        list(iter_records(fewer))
    more = bytearray(good)
    more[57:61] = (3).to_bytes(4, "big")
    more[23:27] = (2).to_bytes(4, "big")
    more[17:21] = compute_crc(more).to_bytes(4, "big")
    with pytest.raises(CorruptRecordError):
        list(iter_records(more))


def test_control_batches() -> None:
    marker = build_control_batch(
        ControlRecordType.COMMIT,
        b"\x00\x00\x00\x00\x00\x05",
        timestamp=9,
        producer_id=77,
        producer_epoch=1,
        is_transactional=True,
    )
    header = validate_batch(marker)
    assert header.is_control and header.is_transactional and header.producer_id == 77
    (record,) = iter_records(marker)
    assert parse_control_record_key(record.key) == ControlRecordType.COMMIT
    with pytest.raises(CorruptRecordError):
        parse_control_record_key(b"\x00")


def test_varint_errors() -> None:
    with pytest.raises(VarintError):
        decode_varint(b"\x80\x80", 0)
    with pytest.raises(VarintError):
        decode_varint(b"\xff" * 11, 0)


# ------------------------------------------------- the fast encoder against a model


def _model_varint(value: int) -> bytes:
    """Zigzag varint straight from the definition (no tables)."""
    unsigned = ((value << 1) ^ (value >> 63)) & (2**64 - 1)
    out = bytearray()
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


def _model_field(data: bytes | None) -> bytes:
    return _model_varint(-1) if data is None else _model_varint(len(data)) + data


def model_batch(records: list[RecordInput], *, base_offset: int = 0) -> bytes:
    """An uncompressed producer batch as Kafka's DefaultRecordBatch lays it out."""
    base_timestamp = records[0].timestamp
    body = bytearray()
    for delta, record in enumerate(records):
        fields = b"\x00" + _model_varint(record.timestamp - base_timestamp)
        fields += _model_varint(delta) + _model_field(record.key) + _model_field(record.value)
        fields += _model_varint(len(record.headers))
        for name, value in record.headers:
            fields += _model_field(name.encode("utf-8")) + _model_field(value)
        body += _model_varint(len(fields)) + fields
    max_timestamp = max([-1] + [r.timestamp for r in records])
    after_crc = struct.pack(
        ">hiqqqhii", 0, len(records) - 1, base_timestamp, max_timestamp, -1, -1, -1, len(records)
    )
    after_crc += body
    prefix = struct.pack(">qiib", base_offset, len(after_crc) + 9, -1, 2)
    return prefix + struct.pack(">I", crc32c(after_crc)) + after_crc


# Timestamps before the first (negative deltas), deltas and fields past the encoder's
# 16 KiB tables, empty and null keys and values, headers: every branch of `append`.
edge_record_strategy = st.builds(
    RecordInput,
    timestamp=st.integers(-100, 100) | st.integers(-(2**20), 2**20) | st.integers(0, 2**41),
    key=st.none() | st.binary(max_size=20) | st.binary(min_size=16_380, max_size=16_400),
    value=st.none() | st.binary(max_size=200) | st.binary(min_size=16_370, max_size=16_400),
    headers=st.just(()) | headers_strategy,
)


@given(records=st.lists(edge_record_strategy, min_size=1, max_size=12))
def test_the_builder_writes_the_models_bytes(records: list[RecordInput]) -> None:
    assert build_batch(records).hex() == model_batch(records).hex()


def test_offset_deltas_past_the_table_keep_the_models_bytes() -> None:
    records = [RecordInput(timestamp=1_000 + i % 7, key=None, value=b"") for i in range(16_500)]
    assert build_batch(records) == model_batch(records)


def test_append_returns_the_size_so_far() -> None:
    builder = BatchBuilder()
    sizes = [builder.append(5, b"k", b"v" * n) for n in (1, 100, 20_000)]
    assert sizes[-1] == builder.size_bytes and sizes == sorted(sizes)
    assert sizes[0] == BATCH_HEADER_BYTES + 1 + 8  # length, then 8 bytes of fields


@given(records=st.lists(record_strategy, min_size=1, max_size=10))
def test_kafka_python_reads_our_batches(records: list[RecordInput]) -> None:
    decoded = DefaultRecordBatch(bytearray(build_batch(records, base_offset=42)))
    assert decoded.validate_crc()
    assert [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in decoded] == [
        (42 + i, r.timestamp, r.key, r.value, r.headers) for i, r in enumerate(records)
    ]
