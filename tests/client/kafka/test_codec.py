"""Headers, the small API, encode-side refusals, framing, and the hot shapes against kio."""

from __future__ import annotations

import datetime
import io
import struct
import uuid

import pytest

from client.protocol.errors import ErrorCode
from client.protocol.kafka import (
    APIS,
    FrameTooLarge,
    KafkaCodecError,
    KafkaEncodeError,
    KafkaFrameDecoder,
    RequestHeader,
    ResponseHeader,
    UnsupportedApi,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    messages,
    request_class,
    response_class,
)
from client.protocol.kafka.codec import decode_body, encode_body
from client.protocol.kafka.framing import frame

PRODUCE, FETCH, METADATA, API_VERSIONS = 0, 1, 3, 18
BATCH = bytes(range(256)) * 64  # 16 KiB standing in for a record batch


def _header(api_key: int, version: int, correlation_id: int = 7) -> object:
    return RequestHeader(
        request_api_key=api_key,
        request_api_version=version,
        correlation_id=correlation_id,
        client_id="client-1",
    )


def _produce(version: int = 9) -> object:
    cls = request_class(PRODUCE)
    return cls(
        acks=-1,
        timeout_ms=30_000,
        topic_data=(
            cls.TopicProduceData(
                name="events", partition_data=(cls.PartitionProduceData(index=3, records=BATCH),)
            ),
        ),
    )


# ---------------------------------------------------------------------- headers


def test_request_header_v2_for_flexible_versions_v1_before() -> None:
    flexible = bytes(encode_request(_header(PRODUCE, 9), _produce()))
    classic = bytes(encode_request(_header(PRODUCE, 8), _produce()))
    prefix = struct.pack(">hhih", 0, 9, 7, 8) + b"client-1"
    assert flexible[4:].startswith(prefix + b"\x00")  # v2: an empty tagged-field section
    classic_prefix = struct.pack(">hhih", 0, 8, 7, 8) + b"client-1"
    assert classic[4:].startswith(classic_prefix)
    # v1 has no tagged fields: the body (a null transactional_id, -1) follows at once
    assert classic[4 + len(classic_prefix) : 4 + len(classic_prefix) + 2] == b"\xff\xff"


def test_null_client_id_round_trips() -> None:
    header = RequestHeader(
        request_api_key=METADATA, request_api_version=12, correlation_id=1, client_id=None
    )
    frame_bytes = encode_request(header, request_class(METADATA)())
    got_header, _ = decode_request(bytes(frame_bytes[4:]))
    assert got_header.client_id is None


def test_response_header_v1_when_flexible_and_always_v0_for_api_versions() -> None:
    metadata = bytes(
        encode_response(ResponseHeader(correlation_id=5), METADATA, 12, response_class(METADATA)())
    )
    assert metadata[4:9] == struct.pack(">i", 5) + b"\x00"  # v1: tagged fields after the id
    response = response_class(API_VERSIONS)(
        error_code=0,
        api_keys=(
            response_class(API_VERSIONS).ApiVersion(api_key=0, min_version=0, max_version=9),
        ),
    )
    v3 = bytes(encode_response(ResponseHeader(correlation_id=5), API_VERSIONS, 3, response))
    assert v3[4:8] == struct.pack(">i", 5)
    assert v3[8:10] == b"\x00\x00"  # the body's error_code right after a v0 header
    assert decode_response(v3[4:], API_VERSIONS, 3) == (ResponseHeader(correlation_id=5), response)


def test_api_versions_fallback_to_v0_as_kafka_clients_do() -> None:
    cls = response_class(API_VERSIONS)
    refusal = cls(
        error_code=ErrorCode.UNSUPPORTED_VERSION,
        api_keys=(cls.ApiVersion(api_key=18, min_version=0, max_version=3),),
    )
    v0 = bytes(encode_response(ResponseHeader(correlation_id=9), API_VERSIONS, 0, refusal))
    header, body = decode_response(v0[4:], API_VERSIONS, 3)
    assert header.correlation_id == 9 and body == refusal


def test_requests_and_responses_round_trip_with_headers() -> None:
    request = _produce()
    frame_bytes = encode_request(_header(PRODUCE, 9), request)
    assert struct.unpack(">i", frame_bytes[:4])[0] == len(frame_bytes) - 4
    header, body = decode_request(bytes(frame_bytes[4:]))
    assert header == _header(PRODUCE, 9) and body == request
    # the records are the very bytes sent, carried not re-encoded
    assert body.topic_data[0].partition_data[0].records == BATCH
    assert bytes(frame_bytes).endswith(BATCH + b"\x00\x00\x00")


def test_one_class_per_message_across_versions() -> None:
    fetch = request_class(FETCH)
    topic_id = uuid.UUID(int=42)
    v13 = fetch(topics=(fetch.FetchTopic(topic_id=topic_id, partitions=()),))
    assert decode_body(APIS[FETCH].request, 13, encode_body(APIS[FETCH].request, 13, v13)) == v13
    assert messages.FetchRequest is fetch
    assert messages.FetchRequest.FetchTopic is fetch.FetchTopic
    assert "ProduceResponse" in messages.names()


def test_defaults_are_kafkas() -> None:
    fetch = request_class(FETCH)()
    assert fetch.replica_id == -1 and fetch.max_bytes == 0x7FFFFFFF and fetch.session_epoch == -1
    assert fetch.cluster_id is None and fetch.rack_id == ""
    assert request_class(PRODUCE).PartitionProduceData().records is None


def test_the_table_names_what_the_codec_handles() -> None:
    assert APIS[PRODUCE].versions.low == 3 and APIS[PRODUCE].versions.high >= 9
    assert APIS[FETCH].versions.low == 4 and APIS[FETCH].versions.high >= 12
    assert 0 in APIS[API_VERSIONS].versions and 3 in APIS[API_VERSIONS].versions
    init_producer_id = APIS[22]
    assert init_producer_id.request.spec.latest_version_unstable
    # the definition's last version is unstable: the table leaves it out
    assert init_producer_id.versions.high == init_producer_id.request.spec.valid_versions.high - 1
    assert "broker" in APIS[PRODUCE].listeners


# ---------------------------------------------------------------------- encode refusals


def test_encoding_a_field_the_version_lacks_is_refused() -> None:
    fetch = request_class(FETCH)
    with pytest.raises(KafkaEncodeError, match="is not in this version"):
        encode_body(
            APIS[FETCH].request,
            12,
            fetch(rack_id="", isolation_level=0, replica_state=fetch.ReplicaState(replica_id=3)),
        )


def test_ignorable_fields_are_dropped_silently() -> None:
    fetch = request_class(FETCH)
    # topic_id is ignorable in Fetch v12 (names are used there)
    message = fetch(topics=(fetch.FetchTopic(topic="t", topic_id=uuid.UUID(int=1)),))
    decoded = decode_body(APIS[FETCH].request, 12, encode_body(APIS[FETCH].request, 12, message))
    assert decoded.topics[0].topic == "t" and decoded.topics[0].topic_id == uuid.UUID(int=0)


@pytest.mark.parametrize(
    "message",
    [
        request_class(PRODUCE)(acks=1 << 20),  # int16 overflow
        request_class(PRODUCE)(topic_data=None),  # not nullable
        request_class(PRODUCE)(topic_data=(request_class(PRODUCE).TopicProduceData(name=None),)),
        request_class(PRODUCE)(
            topic_data=(request_class(PRODUCE).TopicProduceData(name="x" * 40_000),)
        ),
    ],
)
def test_values_a_version_cannot_carry_are_refused(message: object) -> None:
    with pytest.raises(KafkaEncodeError):
        encode_body(APIS[PRODUCE].request, 9, message)


def test_wrong_message_class_is_refused() -> None:
    with pytest.raises(KafkaEncodeError):
        encode_request(_header(PRODUCE, 9), request_class(FETCH)())


# ---------------------------------------------------------------------- framing


def test_frames_split_anywhere_come_out_whole() -> None:
    frames = [bytes(encode_request(_header(PRODUCE, 9, i), _produce())) for i in range(3)]
    stream = b"".join(frames)
    decoder = KafkaFrameDecoder()
    got = []
    for start in range(0, len(stream), 997):
        got.extend(decoder.feed(stream[start : start + 997]))
    assert got == [f[4:] for f in frames]
    assert decoder.buffered_bytes == 0
    assert [decode_request(f)[0].correlation_id for f in got] == [0, 1, 2]


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    decoder = KafkaFrameDecoder(frame_bytes_max=1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">i", 1025))
    assert issubclass(FrameTooLarge, KafkaCodecError)


def test_negative_frame_size_is_refused() -> None:
    with pytest.raises(KafkaCodecError):
        KafkaFrameDecoder().feed(struct.pack(">i", -1) + b"abcd")


def test_frame_helper() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert KafkaFrameDecoder().feed(frame(b"")) == [b""]


# ---------------------------------------------------------------------- unknown apis


def test_unknown_api_key_and_version_keep_the_correlation_id() -> None:
    with pytest.raises(UnsupportedApi) as unknown:
        decode_request(struct.pack(">hhi", 9999, 0, 77) + b"\xff\xff")
    assert (unknown.value.api_key, unknown.value.correlation_id) == (9999, 77)
    with pytest.raises(UnsupportedApi) as too_new:
        decode_request(struct.pack(">hhi", API_VERSIONS, 99, 78) + b"\x00")
    assert (too_new.value.api_version, too_new.value.correlation_id) == (99, 78)
    with pytest.raises(UnsupportedApi):
        decode_request(struct.pack(">hhi", PRODUCE, 2, 79))  # removed in Kafka 4 (KIP-896)


# ---------------------------------------------------------------------- kio agrees


def test_hot_shapes_match_kio_byte_for_byte() -> None:
    from kio.schema.errors import ErrorCode as KioErrorCode
    from kio.schema.fetch.v12 import response as kio_fetch
    from kio.schema.produce.v9 import request as kio_produce
    from kio.schema.request_header.v2.header import RequestHeader as KioRequestHeader
    from kio.schema.response_header.v1.header import ResponseHeader as KioResponseHeader
    from kio.serial import entity_reader, entity_writer

    kio_request = kio_produce.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(milliseconds=30_000),
        topic_data=(
            kio_produce.TopicProduceData(
                name="events",
                partition_data=(kio_produce.PartitionProduceData(index=3, records=BATCH),),
            ),
        ),
    )
    buffer = io.BytesIO()
    entity_writer(KioRequestHeader)(
        buffer,
        KioRequestHeader(
            request_api_key=0, request_api_version=9, correlation_id=7, client_id="client-1"
        ),
    )
    entity_writer(kio_produce.ProduceRequest)(buffer, kio_request)
    assert bytes(encode_request(_header(PRODUCE, 9), _produce()))[4:] == buffer.getvalue()

    fetch = response_class(FETCH)
    ours = fetch(
        responses=(
            fetch.FetchableTopicResponse(
                topic="events",
                partitions=tuple(
                    fetch.PartitionData(partition_index=i, high_watermark=10 * i, records=BATCH)
                    for i in range(8)
                ),
            ),
        )
    )
    ours_bytes = bytes(encode_response(ResponseHeader(correlation_id=7), FETCH, 12, ours))[4:]
    header, offset = entity_reader(KioResponseHeader)(ours_bytes, 0)
    theirs, _ = entity_reader(kio_fetch.FetchResponse)(ours_bytes, offset)
    assert header.correlation_id == 7
    assert [p.high_watermark for p in theirs.responses[0].partitions] == [10 * i for i in range(8)]
    assert all(p.records == BATCH for p in theirs.responses[0].partitions)
    assert theirs.responses[0].partitions[0].error_code == KioErrorCode.none
    buffer = io.BytesIO()
    entity_writer(KioResponseHeader)(buffer, header)
    entity_writer(kio_fetch.FetchResponse)(buffer, theirs)
    assert buffer.getvalue() == ours_bytes
