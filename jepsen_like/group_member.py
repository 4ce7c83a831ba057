"""One member of the subscribe workload's consumer group: its own OS process.

    python -m jepsen_like.group_member --bootstrap B --topic T --group G --member 3

A kafka-python `KafkaConsumer` subscribed to the topic, at-least-once: poll, "process"
for `--process-ms` (so that a pause lands between a poll and its commit, where a zombie
is made), then commit the next offset of every partition it got records of,
synchronously. Every event is one JSON line on stdout, timed with the machine's
monotonic clock (the parent's history clock):

    {"event": "assigned", "generation": 4, "member_id": "...", "partitions": [0, 2]}
    {"event": "revoked", "generation": 4, "partitions": [0, 2]}
    {"event": "poll", "generation": 4, "records": {"0": [[17, "1-5"], ...]}}
    {"event": "commit", "generation": 4, "offsets": {"0": 18}, "outcome": "ok", "invoked": t}

kafka-python, rather than librdkafka, because it tells a member its generation: the
checker's "no partition is owned by two members of one generation" needs it. The
process runs until `--time-s` passes or it is told to stop (SIGTERM), then leaves the
group.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

PROCESS_MS_DEFAULT = 150
POLL_TIMEOUT_MS = 200


def _emit(event: str, **fields: Any) -> None:
    fields.update(event=event, time=time.monotonic_ns())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _generation(consumer: Any) -> int:
    # kafka-python keeps the member's generation on its coordinator (not public API).
    generation = consumer._coordinator._generation
    return int(getattr(generation, "generation_id", -1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jepsen_like.group_member")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--member", type=int, required=True)
    parser.add_argument("--time-s", type=float, required=True)
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    parser.add_argument("--process-ms", type=int, default=PROCESS_MS_DEFAULT)
    args = parser.parse_args(argv)

    from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap.split(","),
        group_id=args.group,
        client_id=f"jepsen-member-{args.member}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=max(100, args.session_timeout_ms // 6),
        # A member that does not poll for this long leaves the group (a pause longer
        # than it is a zombie the moment it wakes).
        max_poll_interval_ms=max(args.session_timeout_ms, 2 * args.process_ms + 2000),
        request_timeout_ms=max(5000, args.session_timeout_ms + 2000),
        max_poll_records=200,
    )

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            _emit(
                "revoked",
                generation=_generation(consumer),
                partitions=sorted(tp.partition for tp in revoked),
            )

        def on_partitions_assigned(self, assigned: Any) -> None:
            _emit(
                "assigned",
                generation=_generation(consumer),
                member_id=consumer._coordinator._generation.member_id,
                partitions=sorted(tp.partition for tp in assigned),
            )

    consumer.subscribe([args.topic], listener=Listener())
    deadline = time.monotonic() + args.time_s
    try:
        while not stopping and time.monotonic() < deadline:
            try:
                batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except KafkaError as error:
                _emit("error", where="poll", error=type(error).__name__)
                time.sleep(0.2)
                continue
            if not batches:
                continue
            generation = _generation(consumer)
            records = {
                str(tp.partition): [[r.offset, (r.value or b"").decode()] for r in batch]
                for tp, batch in batches.items()
            }
            _emit("poll", generation=generation, records=records)
            time.sleep(args.process_ms / 1000)
            offsets = {
                TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                    batch[-1].offset + 1, "", -1
                )
                for tp, batch in batches.items()
            }
            committed = {str(tp.partition): meta.offset for tp, meta in offsets.items()}
            invoked = time.monotonic_ns()
            try:
                consumer.commit(offsets)
            except KafkaError as error:
                _emit(
                    "commit",
                    generation=generation,
                    offsets=committed,
                    outcome="fail",
                    error=type(error).__name__,
                    invoked=invoked,
                )
            else:
                _emit(
                    "commit",
                    generation=generation,
                    offsets=committed,
                    outcome="ok",
                    invoked=invoked,
                )
    finally:
        consumer.close(autocommit=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
