"""Transactional throughput against the same producer idempotent, on a 3-node cluster.

Three pykraft nodes (controller + broker each, OS processes), one topic per phase of
6 partitions, replication factor 3, min.insync.replicas 2. A confluent-kafka producer
(acks=all, linger.ms 5, 5 requests in flight) sends `--records` 100-byte records,
record i to partition i mod 6, two ways:

- `txn`: `transactional.id` set; a transaction is begun, filled for 100 ms
  (`--commit-every-ms`), committed, and the next begun: each commit_transaction()
  call is timed (it flushes the transaction's last records, then EndTxn, whose
  answer waits for the markers at every partition);
- `idempotent`: the same producer without a transactional id (enable.idempotence),
  flushed once at the end.

Phases alternate (`--rounds` of each) and the best rate of each is kept. One JSON
line: records per second of each, `ratio_txn_vs_idempotent`, and the commit latency
p50/p99 (ms) over every transaction of every txn phase. Each phase is capped by
`--max-phase-s` (it then says so in `errors` rather than hang).

    python -m bench.txn_bench [--records 50000] [--rounds 2] [--commit-every-ms 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from broker.local_cluster import LocalCluster

PARTITIONS = 6
REPLICATION_FACTOR = 3
VALUE = b"x" * 100
TOPIC_READY_S = 60.0
SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger.ms": 5,
    "max.in.flight.requests.per.connection": 5,
    "enable.idempotence": True,
}


def create(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                PARTITIONS,
                REPLICATION_FACTOR,
                config={"min.insync.replicas": "2"},
            )
        ]
    )
    futures[topic].result(TOPIC_READY_S)
    time.sleep(1)  # every broker's image has the leaders


def _produce(producer: Any, topic: str, index: int, errors: list[Any]) -> None:
    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    while True:
        try:
            producer.produce(topic, VALUE, partition=index % PARTITIONS, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.01)


def txn_phase(
    bootstrap: str, topic: str, records: int, commit_every_s: float, cap_s: float
) -> dict[str, Any]:
    create(bootstrap, topic)
    producer = Producer(
        SETTINGS | {"bootstrap.servers": bootstrap, "transactional.id": f"bench-{topic}"}
    )
    producer.init_transactions(60)
    errors: list[Any] = []
    # A first transaction outside the clock: connections, metadata, the coordinator.
    producer.begin_transaction()
    _produce(producer, topic, 0, errors)
    producer.commit_transaction(60)
    commits_ms: list[float] = []
    start = time.perf_counter()
    deadline = start + cap_s
    sent = 0
    while sent < records and time.perf_counter() < deadline:
        producer.begin_transaction()
        began = time.perf_counter()
        while sent < records and time.perf_counter() - began < commit_every_s:
            _produce(producer, topic, sent, errors)
            sent += 1
            if sent % 256 == 0:
                producer.poll(0)
        committing = time.perf_counter()
        producer.commit_transaction(60)
        commits_ms.append((time.perf_counter() - committing) * 1000)
    seconds = time.perf_counter() - start
    return {
        "records": sent,
        "msgs_per_s": sent / seconds,
        "commits_ms": commits_ms,
        "errors": [str(e) for e in errors[:3]]
        + ([f"capped at {cap_s:g} s"] if sent < records else []),
    }


def idempotent_phase(bootstrap: str, topic: str, records: int, cap_s: float) -> dict[str, Any]:
    create(bootstrap, topic)
    producer = Producer(SETTINGS | {"bootstrap.servers": bootstrap})
    errors: list[Any] = []
    _produce(producer, topic, 0, errors)
    producer.flush(60)  # connections, metadata and the producer id before the clock
    start = time.perf_counter()
    deadline = start + cap_s
    sent = 0
    while sent < records and time.perf_counter() < deadline:
        _produce(producer, topic, sent, errors)
        sent += 1
        if sent % 256 == 0:
            producer.poll(0)
    left = producer.flush(max(1.0, deadline - time.perf_counter()))
    seconds = time.perf_counter() - start
    return {
        "records": sent - left,
        "msgs_per_s": (sent - left) / seconds,
        "errors": [str(e) for e in errors[:3]]
        + ([f"capped at {cap_s:g} s"] if sent < records or left else []),
    }


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--commit-every-ms", type=float, default=100.0)
    parser.add_argument("--max-phase-s", type=float, default=300.0)
    args = parser.parse_args()
    best = {"txn": 0.0, "idempotent": 0.0}
    rates: dict[str, list[int]] = {"txn": [], "idempotent": []}
    commits_ms: list[float] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as root, LocalCluster(root, combined=3) as cluster:
        cluster.start_all()
        bootstrap = cluster.bootstrap_servers()
        for round_ in range(args.rounds):
            # Which goes first alternates: a busy machine's drift favours neither.
            for kind in ("txn", "idempotent") if round_ % 2 == 0 else ("idempotent", "txn"):
                if kind == "txn":
                    result = txn_phase(
                        bootstrap,
                        f"txn-{round_}",
                        args.records,
                        args.commit_every_ms / 1000,
                        args.max_phase_s,
                    )
                    commits_ms += result["commits_ms"]
                else:
                    result = idempotent_phase(
                        bootstrap, f"idempotent-{round_}", args.records, args.max_phase_s
                    )
                best[kind] = max(best[kind], result["msgs_per_s"])
                rates[kind].append(round(result["msgs_per_s"]))
                errors += result["errors"]
    print(
        json.dumps(
            {
                "records": args.records,
                "rounds": args.rounds,
                "nodes": 3,
                "replication_factor": REPLICATION_FACTOR,
                "partitions": PARTITIONS,
                "commit_every_ms": args.commit_every_ms,
                "txn_msgs_per_s": round(best["txn"]),
                "idempotent_msgs_per_s": round(best["idempotent"]),
                "ratio_txn_vs_idempotent": round(best["txn"] / best["idempotent"], 3)
                if best["idempotent"]
                else None,
                "rates_per_phase": rates,
                "commits": len(commits_ms),
                "commit_ms_p50": _round(_percentile(commits_ms, 0.5)),
                "commit_ms_p99": _round(_percentile(commits_ms, 0.99)),
                "commit_ms_mean": _round(statistics.fmean(commits_ms) if commits_ms else None),
                "errors": errors,
            }
        )
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    main()
