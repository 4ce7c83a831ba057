"""A peer's bytes: whatever they are, decoding gives a message or KafkaCodecError, and
never allocates more than the frame holds (issue 15's fuzz acceptance, codec part)."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol.kafka import (
    APIS,
    KafkaCodecError,
    RequestHeader,
    decode_request,
    encode_request,
)
from client.protocol.kafka.codec import decode_response
from tests.client.kafka import strategies
from tests.client.kafka.test_roundtrip import BY_NAME, WANTED

# Far below any hostile length used here (2**31 elements, 2**32 bytes), far above
# what decoding these small frames needs.
ALLOCATION_BYTES_MAX = 256 * 1024

SERVED = [
    (api.api_key, version)
    for name in WANTED
    for api in [BY_NAME[name]]
    for version in range(api.versions.low, api.versions.high + 1)
]


@contextmanager
def allocation_bound(limit: int = ALLOCATION_BYTES_MAX) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"decoding allocated {peak} bytes"


def _refused(action: Callable[[], Any]) -> KafkaCodecError:
    with allocation_bound(), pytest.raises(KafkaCodecError) as caught:
        action()
    assert len(str(caught.value)) <= 200
    return caught.value


def _frame(api_key: int, version: int, message: Any = None) -> bytes:
    api = APIS[api_key]
    header = RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id="c"
    )
    return bytes(encode_request(header, message if message is not None else api.request.root()))[4:]


def _prefix(api_key: int, version: int) -> bytes:
    """Just the request header of (api_key, version)."""
    api = APIS[api_key]
    header = struct.pack(">hhih", api_key, version, 1, 1) + b"c"
    return header + (b"\x00" if api.flexible(version) else b"")


# ---------------------------------------------------------------------- truncation


@pytest.mark.parametrize(("api_key", "version"), SERVED)
def test_every_truncation_of_a_request_is_refused(api_key: int, version: int) -> None:
    whole = _frame(api_key, version)
    decode_request(whole)
    for length in range(len(whole)):
        with pytest.raises(KafkaCodecError):
            decode_request(whole[:length])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_truncation_of_a_generated_message_is_refused(data: st.DataObject) -> None:
    api_key, version = data.draw(st.sampled_from(SERVED))
    message = data.draw(strategies.message(APIS[api_key].request, version))
    whole = _frame(api_key, version, message)
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(KafkaCodecError):
        decode_request(whole[:cut])


# ---------------------------------------------------------------------- fuzz


@settings(max_examples=600, deadline=None)
@given(key_version=st.sampled_from(SERVED), body=st.binary(max_size=64))
def test_random_bodies_give_a_message_or_a_codec_error(
    key_version: tuple[int, int], body: bytes
) -> None:
    with suppress(KafkaCodecError):
        decode_request(_prefix(*key_version) + body)


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=48))
def test_random_frames_give_a_message_or_a_codec_error(frame: bytes) -> None:
    with suppress(KafkaCodecError):
        decode_request(frame)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_messages_give_a_message_or_a_codec_error(data: st.DataObject) -> None:
    api_key, version = data.draw(st.sampled_from(SERVED))
    whole = bytearray(
        _frame(api_key, version, data.draw(strategies.message(APIS[api_key].request, version)))
    )
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(8, len(whole) - 1)) if len(whole) > 8 else 0
        whole[where] = data.draw(st.integers(0, 255))
    with suppress(KafkaCodecError):
        decode_request(bytes(whole))


@settings(max_examples=200, deadline=None)
@given(key_version=st.sampled_from(SERVED), body=st.binary(max_size=64))
def test_random_response_bodies_give_a_message_or_a_codec_error(
    key_version: tuple[int, int], body: bytes
) -> None:
    api_key, version = key_version
    header = b"\x00\x00\x00\x01" + (
        b"\x00" if APIS[api_key].response_header_version(version) else b""
    )
    with suppress(KafkaCodecError):
        decode_response(header + body, api_key, version)


# ---------------------------------------------------------------------- lying lengths

METADATA, PRODUCE = 3, 0


def test_huge_classic_array_count_allocates_nothing() -> None:
    # Metadata v4: topics is a nullable array of structs; claim 2**31 - 1 of them.
    error = _refused(lambda: decode_request(_prefix(METADATA, 4) + struct.pack(">i", 0x7FFFFFFF)))
    assert "array" in str(error)


def test_huge_compact_array_count_allocates_nothing() -> None:
    # Metadata v12: topics as a compact array, count 2**32 - 2 (uvarint 0xffffffff).
    huge = b"\xff\xff\xff\xff\x0f"
    _refused(lambda: decode_request(_prefix(METADATA, 12) + huge))


def test_huge_fixed_array_allocates_nothing() -> None:
    # ElectLeaders v0: one topic whose []int32 partitions claims 2**30 - 1 entries.
    api_key = 43
    body = struct.pack(">i", 1) + struct.pack(">h", 1) + b"t" + struct.pack(">i", 0x3FFFFFFF)
    _refused(lambda: decode_request(_prefix(api_key, 0) + body))


def test_huge_bytes_length_allocates_nothing() -> None:
    # Produce v8: one topic, one partition, records claiming 2 GiB.
    body = (
        b"\xff\xff"  # null transactional id
        + struct.pack(">hi", -1, 1000)
        + struct.pack(">ih", 1, 1) + b"t"
        + struct.pack(">ii", 1, 0)
        + struct.pack(">i", 0x7FFFFFFF)
    )  # fmt: skip
    _refused(lambda: decode_request(_prefix(PRODUCE, 8) + body))


def test_huge_tagged_field_count_and_size_are_refused() -> None:
    _refused(lambda: decode_request(_prefix(METADATA, 12)[:-1] + b"\xff\xff\xff\xff\x0f"))
    # one tagged field in the header claiming 1 GiB
    _refused(lambda: decode_request(_prefix(METADATA, 12)[:-1] + b"\x01\x00\xff\xff\xff\xff\x03"))


@pytest.mark.parametrize(
    ("what", "body"),
    [
        ("negative string length", b"\xff\xfe"),  # transactional id of length -2
        ("negative array count", b"\xff\xff" + struct.pack(">hii", 1, 1000, -2)),
        (
            "negative bytes length",
            b"\xff\xff"
            + struct.pack(">hiih", 1, 1000, 1, 1)
            + b"t"
            + struct.pack(">iii", 1, 0, -7),
        ),
        ("null non-nullable array", b"\xff\xff" + struct.pack(">hii", 1, 1000, -1)),
        ("null non-nullable string", b"\xff\xff" + struct.pack(">hiih", 1, 1000, 1, -1)),
        ("not UTF-8", b"\x00\x02\xc3\x28"),
    ],
)
def test_bad_classic_lengths_are_refused(what: str, body: bytes) -> None:
    error = _refused(lambda: decode_request(_prefix(PRODUCE, 8) + body))
    expected = {
        "negative string length": "length -2",
        "negative array count": "length -2",
        "negative bytes length": "length -7",
        "null non-nullable array": "length -1",
        "null non-nullable string": "length -1",
    }
    assert expected.get(what, what.split()[-1]) in str(error)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xff\xff\xff\xff\xff", "longer than 5 bytes"),
        (b"\xff\xff\xff\xff\x7f", "exceeds 32 bits"),
        (b"\x80", "truncated unsigned varint"),
        (b"\x00" + struct.pack(">hi", 1, 1000) + b"\x00", "length -1"),  # null topic_data
    ],
)
def test_bad_varints_and_compact_nulls_are_refused(body: bytes, expected: str) -> None:
    assert expected in str(_refused(lambda: decode_request(_prefix(PRODUCE, 9) + body)))


def test_trailing_bytes_are_refused() -> None:
    whole = _frame(METADATA, 12)
    _refused(lambda: decode_request(whole + b"\x00"))


def test_short_frames_are_refused() -> None:
    for frame in (b"", b"\x00", b"\x00\x03\x00\x0c\x00\x00\x00"):
        _refused(lambda frame=frame: decode_request(frame))
