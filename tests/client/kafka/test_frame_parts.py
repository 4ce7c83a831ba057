"""Fetch answers as parts (records uncopied) and frames decoded as views, not copies."""

from __future__ import annotations

import random
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol.kafka import (
    APIS,
    KafkaFrameDecoder,
    ResponseHeader,
    decode_response,
    encode_response,
    response_class,
)
from client.protocol.kafka.codec import encode_response_parts
from client.protocol.kafka.framing import frame
from client.protocol.kafka.wire import PART_BYTES_MIN

FETCH = 1
Fetch = response_class(FETCH)


def _fetch(version: int, records: list[bytes | None]) -> object:
    partitions = tuple(
        Fetch.PartitionData(partition_index=i, high_watermark=1000 + i, records=r)
        for i, r in enumerate(records)
    )
    if version >= 13:
        topic = Fetch.FetchableTopicResponse(topic_id=uuid.UUID(int=5), partitions=partitions)
    else:
        topic = Fetch.FetchableTopicResponse(topic="events", partitions=partitions)
    return Fetch(throttle_time_ms=3, responses=(topic,))


@pytest.mark.parametrize("version", range(APIS[FETCH].versions.low, APIS[FETCH].versions.high + 1))
def test_fetch_parts_are_the_frame_byte_for_byte_with_large_records_uncopied(
    version: int,
) -> None:
    rng = random.Random(version)
    records = [rng.randbytes(size) for size in (0, 100, PART_BYTES_MIN - 1, PART_BYTES_MIN, 70_000)]
    response = _fetch(version, [*records, None])
    header = ResponseHeader(correlation_id=41)
    parts = encode_response_parts(header, FETCH, version, response)
    assert b"".join(parts) == encode_response(header, FETCH, version, response)
    large = [r for r in records if len(r) >= PART_BYTES_MIN]
    # The large records are the very buffers the answer was built from, in order.
    assert [p for p in parts if any(p is r for r in large)] == large
    assert not any(p is r for p in parts for r in records if len(r) < PART_BYTES_MIN)
    _, decoded = decode_response(b"".join(parts)[4:], FETCH, version)
    assert [p.records for p in decoded.responses[0].partitions] == [*records, None]


def test_an_answer_without_large_fields_is_one_part() -> None:
    header = ResponseHeader(correlation_id=2)
    parts = encode_response_parts(header, FETCH, 12, _fetch(12, [b"x" * 10]))
    assert len(parts) == 1
    assert parts[0] == encode_response(header, FETCH, 12, _fetch(12, [b"x" * 10]))


def test_a_frame_arriving_whole_is_a_view_of_the_received_bytes() -> None:
    data = frame(b"first") + frame(b"second")
    frames = KafkaFrameDecoder().feed(data)
    assert frames == [b"first", b"second"]
    assert all(f.obj is data for f in frames)  # no copy of either body


def test_a_peer_holds_only_the_bytes_it_sent_of_an_announced_frame() -> None:
    decoder = KafkaFrameDecoder()
    assert decoder.feed(struct.pack(">i", 90 * 1024 * 1024) + b"0123456789") == []
    assert decoder.buffered_bytes == 10
    assert decoder.feed(b"ab") == []
    assert decoder.buffered_bytes == 12


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=30),
    mutable=st.booleans(),
)
def test_frames_cut_anywhere_come_out_whole(
    bodies: list[bytes], cuts: list[int], mutable: bool
) -> None:
    stream = b"".join(frame(b) for b in bodies)
    decoder = KafkaFrameDecoder()
    got: list[bytes] = []
    position, turn = 0, 0
    while position < len(stream):
        size = cuts[turn % len(cuts)]
        chunk = bytearray(stream[position : position + size])
        got.extend(bytes(f) for f in decoder.feed(chunk if mutable else bytes(chunk)))
        if mutable:
            chunk[:] = b"\xee" * len(chunk)  # the caller reuses its buffer: frames keep theirs
        position, turn = position + size, turn + 1
    assert got == bodies
    assert decoder.buffered_bytes == 0
