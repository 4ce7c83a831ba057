"""What the broker's answer and request paths cost per message, copy against no copy.

    python bench/wire_copies_bench.py [--rounds 5] [--iterations 200]

Shapes, each against its baseline in the same run:
  fetch_*:    a Kafka Fetch v12 answer, 8 partitions of 1 MiB of records: encoded whole
              and joined for the socket (what the writer did before) against encoded as
              parts (`encode_response_parts`, the records uncopied);
  native_*:   a follower's native Fetch answer, 2 partitions of 1 MiB: `encode_frame`
              (cbor2 into bytes) against `encode_frame_parts`;
  frames_*:   Kafka request frames of 60 KB arriving in 256 KiB receives through
              `KafkaFrameDecoder`, against one plain copy of the same bytes.
Each figure is the best round's mean in microseconds per message. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client.protocol.framing import encode_frame
from client.protocol.kafka import KafkaFrameDecoder, ResponseHeader, encode_response, response_class
from client.protocol.kafka.codec import encode_response_parts
from client.protocol.kafka.framing import frame
from client.protocol.rpc import encode_frame_parts

MIB = 1024 * 1024
RECEIVE_BYTES = 256 * 1024
REQUEST_BYTES = 60_000


def best_us(
    actions: dict[str, Callable[[], Any]], rounds: int, iterations: int
) -> dict[str, float]:
    """Interleaved rounds, so a burst of load from another process hits every action."""
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(rounds):
        for name, action in actions.items():
            started = time.perf_counter()
            for _ in range(iterations):
                action()
            best[name] = min(best[name], (time.perf_counter() - started) / iterations)
    return {name: round(seconds * 1e6, 2) for name, seconds in best.items()}


def shapes() -> dict[str, Callable[[], Any]]:
    fetch = response_class(1)
    records = [os.urandom(MIB) for _ in range(8)]
    answer = fetch(
        responses=(
            fetch.FetchableTopicResponse(
                topic="events",
                partitions=tuple(
                    fetch.PartitionData(partition_index=i, high_watermark=10**6, records=r)
                    for i, r in enumerate(records)
                ),
            ),
        )
    )
    header = ResponseHeader(correlation_id=7)
    assert b"".join(encode_response_parts(header, 1, 12, answer)) == encode_response(
        header, 1, 12, answer
    )
    native = [
        3,
        {"topics": [{"name": "events", "partitions": [{"records": r} for r in records[:2]]}]},
    ]
    stream = b"".join(frame(os.urandom(REQUEST_BYTES)) for _ in range(40))
    receives = [stream[i : i + RECEIVE_BYTES] for i in range(0, len(stream), RECEIVE_BYTES)]

    def decode_frames() -> None:
        decoder = KafkaFrameDecoder()
        for data in receives:
            decoder.feed(data)

    return {
        "fetch_whole_joined": lambda: b"".join([encode_response(header, 1, 12, answer)]),
        "fetch_parts": lambda: encode_response_parts(header, 1, 12, answer),
        "native_encode_frame": lambda: encode_frame(native),
        "native_parts": lambda: encode_frame_parts(native),
        "frames_decoder": decode_frames,
        "frames_one_copy": lambda: [bytearray(data) for data in receives],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    line: dict[str, Any] = best_us(shapes(), args.rounds, args.iterations)
    line["ratio_fetch_whole_vs_parts"] = round(line["fetch_whole_joined"] / line["fetch_parts"], 1)
    line["ratio_native_whole_vs_parts"] = round(
        line["native_encode_frame"] / line["native_parts"], 1
    )
    line["ratio_frames_decoder_vs_one_copy"] = round(
        line["frames_decoder"] / line["frames_one_copy"], 2
    )
    print(json.dumps(line))


if __name__ == "__main__":
    main()
