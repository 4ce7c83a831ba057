"""Encode + decode cost of Kafka's hot message shapes, per candidate codec (decision 0010).

    python bench/kafka_codec_bench.py [--rounds 7] [--iterations 2000]

Shapes, each with its header, as a broker sees them:
  produce: a Produce v9 request, one topic, one partition, one 16 KiB record batch;
  fetch:   a Fetch v12 response, one topic, 8 partitions of 16 KiB each.
Candidates:
  own:          client.protocol.kafka (codecs generated from the JSON definitions the
                kafka-python wheel ships);
  kio:          Aiven's kio (dataclasses generated from the same definitions; a native
                reader, a Python writer);
  kafka_python: kafka-python's own classes (kafka.protocol, its generated codecs).
Baseline: `copy_us`, one copy of a frame of the same size (bytes(bytearray)), in the
same run. Each figure is the best round's mean in microseconds per message. Prints one
JSON line; compare the candidates with each other and with the baseline, not with
figures from another machine.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client.protocol.kafka import codec as own
from storage.records import RecordInput, build_batch

BATCH_TARGET_BYTES = 16 * 1024
FETCH_PARTITIONS = 8


def make_batch() -> bytes:
    records = []
    value = b"v" * 100
    while True:
        records.append(RecordInput(key=None, value=value, timestamp=1_700_000_000_000))
        encoded = build_batch(records)
        if len(encoded) >= BATCH_TARGET_BYTES:
            return encoded


def best_us(
    actions: dict[str, Callable[[], Any]], rounds: int, iterations: int
) -> dict[str, float]:
    """Each action's best round, in microseconds per call. Rounds interleave the actions,
    so a burst of load from another process on this shared machine hits them alike."""
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(rounds):
        for name, action in actions.items():
            started = time.perf_counter()
            for _ in range(iterations):
                action()
            best[name] = min(best[name], (time.perf_counter() - started) / iterations)
    return {name: round(seconds * 1e6, 2) for name, seconds in best.items()}


# ---------------------------------------------------------------------- own


def own_shapes(batch: bytes) -> dict[str, Callable[[], Any]]:
    produce = own.request_class(0)
    fetch = own.response_class(1)
    request = produce(
        acks=-1,
        timeout_ms=30_000,
        topic_data=(
            produce.TopicProduceData(
                name="events",
                partition_data=(produce.PartitionProduceData(index=0, records=batch),),
            ),
        ),
    )
    header = own.RequestHeader(
        request_api_key=0, request_api_version=9, correlation_id=7, client_id="bench"
    )
    response = fetch(
        responses=(
            fetch.FetchableTopicResponse(
                topic="events",
                partitions=tuple(
                    fetch.PartitionData(
                        partition_index=index,
                        high_watermark=1_000_000,
                        last_stable_offset=1_000_000,
                        log_start_offset=0,
                        aborted_transactions=None,
                        records=batch,
                    )
                    for index in range(FETCH_PARTITIONS)
                ),
            ),
        )
    )
    response_header = own.ResponseHeader(correlation_id=7)
    produce_frame = bytes(own.encode_request(header, request))[4:]
    fetch_frame = bytes(own.encode_response(response_header, 1, 12, response))[4:]
    assert own.decode_request(produce_frame) == (header, request)
    assert own.decode_response(fetch_frame, 1, 12) == (response_header, response)
    return {
        "produce_encode": lambda: own.encode_request(header, request),
        "produce_decode": lambda: own.decode_request(produce_frame),
        "fetch_encode": lambda: own.encode_response(response_header, 1, 12, response),
        "fetch_decode": lambda: own.decode_response(fetch_frame, 1, 12),
        "_frames": lambda: (produce_frame, fetch_frame),
    }


# ---------------------------------------------------------------------- kio


def kio_shapes(batch: bytes, produce_frame: bytes, fetch_frame: bytes) -> dict[str, Any]:
    from kio.schema.errors import ErrorCode
    from kio.schema.fetch.v12 import response as fetch
    from kio.schema.produce.v9 import request as produce
    from kio.schema.request_header.v2.header import RequestHeader
    from kio.schema.response_header.v1.header import ResponseHeader
    from kio.serial import entity_reader, entity_writer

    request = produce.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(milliseconds=30_000),
        topic_data=(
            produce.TopicProduceData(
                name="events",
                partition_data=(produce.PartitionProduceData(index=0, records=batch),),
            ),
        ),
    )
    header = RequestHeader(
        request_api_key=0, request_api_version=9, correlation_id=7, client_id="bench"
    )
    response = fetch.FetchResponse(
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        responses=(
            fetch.FetchableTopicResponse(
                topic="events",
                partitions=tuple(
                    fetch.PartitionData(
                        partition_index=index,
                        error_code=ErrorCode.none,
                        high_watermark=1_000_000,
                        last_stable_offset=1_000_000,
                        log_start_offset=0,
                        aborted_transactions=None,
                        records=batch,
                    )
                    for index in range(FETCH_PARTITIONS)
                ),
            ),
        ),
    )
    response_header = ResponseHeader(correlation_id=7)
    write_header = entity_writer(RequestHeader)
    write_request = entity_writer(produce.ProduceRequest)
    write_response_header = entity_writer(ResponseHeader)
    write_response = entity_writer(fetch.FetchResponse)
    read_header = entity_reader(RequestHeader)
    read_request = entity_reader(produce.ProduceRequest)
    read_response_header = entity_reader(ResponseHeader)
    read_response = entity_reader(fetch.FetchResponse)

    def encode_request() -> bytes:
        buffer = io.BytesIO()
        write_header(buffer, header)
        write_request(buffer, request)
        return buffer.getvalue()

    def decode_request() -> Any:
        got_header, offset = read_header(produce_frame, 0)
        return got_header, read_request(produce_frame, offset)[0]

    def encode_response() -> bytes:
        buffer = io.BytesIO()
        write_response_header(buffer, response_header)
        write_response(buffer, response)
        return buffer.getvalue()

    def decode_response() -> Any:
        got_header, offset = read_response_header(fetch_frame, 0)
        return got_header, read_response(fetch_frame, offset)[0]

    # The same bytes as the project's codec, both ways.
    assert encode_request() == produce_frame, "kio and own disagree on the Produce bytes"
    assert encode_response() == fetch_frame, "kio and own disagree on the Fetch bytes"
    assert decode_request() == (header, request)
    assert decode_response() == (response_header, response)
    return {
        "produce_encode": encode_request,
        "produce_decode": decode_request,
        "fetch_encode": encode_response,
        "fetch_decode": decode_response,
    }


# ---------------------------------------------------------------------- kafka-python


def kafka_python_shapes(batch: bytes, produce_frame: bytes, fetch_frame: bytes) -> dict[str, Any]:
    from kafka.protocol.consumer import FetchResponse
    from kafka.protocol.producer import ProduceRequest

    topic = ProduceRequest.TopicProduceData
    request = ProduceRequest[9](
        transactional_id=None,
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            topic(
                name="events", partition_data=[topic.PartitionProduceData(index=0, records=batch)]
            )
        ],
    )
    request.with_header(correlation_id=7, client_id="bench")
    fetch_topic = FetchResponse.FetchableTopicResponse
    response = FetchResponse[12](
        throttle_time_ms=0,
        error_code=0,
        session_id=0,
        responses=[
            fetch_topic(
                topic="events",
                partitions=[
                    fetch_topic.PartitionData(
                        partition_index=index,
                        error_code=0,
                        high_watermark=1_000_000,
                        last_stable_offset=1_000_000,
                        log_start_offset=0,
                        aborted_transactions=None,
                        preferred_read_replica=-1,
                        records=batch,
                    )
                    for index in range(FETCH_PARTITIONS)
                ],
            )
        ],
    )
    response.with_header(correlation_id=7)
    assert bytes(request.encode(header=True)) == produce_frame, "kafka-python differs (Produce)"
    assert bytes(response.encode(header=True)) == fetch_frame, "kafka-python differs (Fetch)"
    return {
        "produce_encode": lambda: request.encode(header=True),
        "produce_decode": lambda: ProduceRequest.decode(produce_frame, version=9, header=True),
        "fetch_encode": lambda: response.encode(header=True),
        "fetch_decode": lambda: FetchResponse.decode(fetch_frame, version=12, header=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    batch = make_batch()
    candidates: dict[str, dict[str, Any]] = {"own": own_shapes(batch)}
    produce_frame, fetch_frame = candidates["own"].pop("_frames")()
    candidates["kio"] = kio_shapes(batch, produce_frame, fetch_frame)
    candidates["kafka_python"] = kafka_python_shapes(batch, produce_frame, fetch_frame)

    actions: dict[str, Callable[[], Any]] = {
        "copy_us_produce": lambda: bytes(bytearray(produce_frame)),
        "copy_us_fetch": lambda: bytes(bytearray(fetch_frame)),
    }
    for name, shapes in candidates.items():
        for shape, action in shapes.items():
            actions[f"{name}_{shape}_us"] = action
    result: dict[str, Any] = {
        "batch_bytes": len(batch),
        "produce_frame_bytes": len(produce_frame),
        "fetch_frame_bytes": len(fetch_frame),
    }
    result.update(best_us(actions, args.rounds, args.iterations))
    for name in candidates:
        for shape in ("produce", "fetch"):
            result[f"{name}_{shape}_total_us"] = round(
                result[f"{name}_{shape}_encode_us"] + result[f"{name}_{shape}_decode_us"], 2
            )
        # What a broker does per request: decode a Produce request, encode a Fetch response.
        result[f"{name}_broker_path_us"] = round(
            result[f"{name}_produce_decode_us"] + result[f"{name}_fetch_encode_us"], 2
        )
    for name in ("kio", "kafka_python"):
        for shape in ("produce", "fetch"):
            result[f"ratio_{shape}_{name}_vs_own"] = round(
                result[f"{name}_{shape}_total_us"] / result[f"own_{shape}_total_us"], 2
            )
        result[f"ratio_broker_path_{name}_vs_own"] = round(
            result[f"{name}_broker_path_us"] / result["own_broker_path_us"], 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
