"""The end-to-end cost of idempotence: librdkafka with enable.idempotence on and off.

One pykraft node (controller + broker, one OS process), one topic per phase (6
partitions, RF 1); a confluent-kafka producer sends `--records` 100-byte records,
acks=all, linger.ms 5, 5 requests in flight, at most `--batch-records` records per
batch (librdkafka's batch.num.messages), record i to partition i mod 6. Phases
alternate off, on, off, on ... (`--rounds` of each). Per phase: the broker process's
CPU time per record (user + system, from /proc: what the broker spends, whatever
else the machine runs) and the wall-clock rate. One JSON line with the best of each.

    python -m bench.idempotence_clients [--records 200000] [--rounds 2] [--batch-records 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from broker.local_cluster import LocalCluster

PARTITIONS = 6
VALUE = b"x" * 100
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def create(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    futures[topic].result(60)
    time.sleep(1)  # the broker's image has its leaders


def phase(
    bootstrap: str, pid: int, topic: str, records: int, idempotent: bool, batch_records: int
) -> dict:
    create(bootstrap, topic)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": idempotent,
            "acks": "all",
            "linger.ms": 5,
            "max.in.flight.requests.per.connection": 5,
            "batch.num.messages": batch_records,
        }
    )
    errors: list[object] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            errors.append(error)

    producer.produce(topic, VALUE, partition=0, on_delivery=on_delivery)
    producer.flush(60)  # connections, metadata and the producer id before the clock
    cpu_start, start = cpu_seconds(pid), time.perf_counter()
    for index in range(records):
        while True:
            try:
                producer.produce(
                    topic, VALUE, partition=index % PARTITIONS, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(300) == 0, "records left unsent"
    seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu_start
    assert not errors, errors[:3]
    return {"msgs_per_s": records / seconds, "server_cpu_us_per_msg": cpu / records * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--batch-records", type=int, default=10_000, help="librdkafka's batch.num.messages"
    )
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as root, LocalCluster(root, combined=1) as cluster:
        cluster.start_all()
        (node,) = cluster.broker_ids
        bootstrap = cluster.bootstrap_servers()
        for round_ in range(args.rounds):
            for idempotent in (False, True):
                name = "on" if idempotent else "off"
                topic = f"{name}-{round_}"
                result = phase(
                    bootstrap,
                    cluster.pid(node),
                    topic,
                    args.records,
                    idempotent,
                    args.batch_records,
                )
                kept = best.setdefault(name, {"msgs_per_s": 0.0, "server_cpu_us_per_msg": 1e9})
                kept["msgs_per_s"] = max(kept["msgs_per_s"], result["msgs_per_s"])
                kept["server_cpu_us_per_msg"] = min(
                    kept["server_cpu_us_per_msg"], result["server_cpu_us_per_msg"]
                )
    on, off = best["on"], best["off"]
    print(
        json.dumps(
            {
                "records": args.records,
                "rounds": args.rounds,
                "batch_records": args.batch_records,
                "idempotence_off": {k: round(v, 2) for k, v in off.items()},
                "idempotence_on": {k: round(v, 2) for k, v in on.items()},
                "server_cpu_cost_pct": round(
                    100 * (on["server_cpu_us_per_msg"] / off["server_cpu_us_per_msg"] - 1), 1
                ),
                "throughput_cost_pct": round(100 * (1 - on["msgs_per_s"] / off["msgs_per_s"]), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
