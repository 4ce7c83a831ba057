"""Metadata image load at a growing partition count: the image series of scale_bench.

The records are built in this process as the controller writes them for a 3-broker
cluster (three RegisterBrokerRecords, then per topic a TopicRecord followed by its
PartitionRecords, RF 3), encoded as they sit in the metadata log. Per point:
- `decode_s` + `replay_s` = `load_s`: what the loader does with the log, the values
  decoded (`decode_record`) and replayed into one MetadataDelta, then `apply()`;
- `snapshot_write_s`: the image written out as records (`to_records`, encoded) and
  stored as a snapshot file (storage/snapshot.py on the OS file system, synced);
- `snapshot_load_s`: that file read back, validated, decoded and replayed from empty,
  as a node restarting from its snapshot does (checked equal to the first image);
- `records_mb` / `snapshot_mb`: the encoded values and the snapshot file;
- `image_rss_mb`: this process's RSS grown while the image was built (rough: the
  allocator keeps what it freed, so it is an upper bound on the image's own size).
Two shapes: many topics of PARTITIONS_PER_TOPIC partitions, and (`one_topic`) every
partition in a single topic, where a per-partition cost that grows with the topic's
size shows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from kraft.metadata.image import EMPTY_IMAGE, MetadataDelta, MetadataImage
from kraft.metadata.records import (
    Listener,
    MetadataRecord,
    PartitionRecord,
    RegisterBrokerRecord,
    TopicRecord,
    decode_record,
    encode_record,
)
from storage import snapshot
from storage.fs import OsFileSystem

BROKERS = (1, 2, 3)
REPLICATION_FACTOR = 3
PARTITIONS_PER_TOPIC = 100
MB = 1024 * 1024


def cluster_records(partitions: int, per_topic: int) -> list[MetadataRecord]:
    """Brokers, then `partitions` partitions in topics of `per_topic` (the last one
    may be smaller)."""
    records: list[MetadataRecord] = [
        RegisterBrokerRecord(
            broker_id=broker,
            broker_epoch=broker,
            incarnation_id=f"incarnation-{broker}",
            listeners=(Listener(name="PLAINTEXT", host="127.0.0.1", port=9090 + broker),),
            rack=None,
            fenced=False,
        )
        for broker in BROKERS
    ]
    for topic, first in enumerate(range(0, partitions, per_topic)):
        topic_id = f"{topic:032x}"
        records.append(TopicRecord(name=f"scale-{topic}", topic_id=topic_id))
        for index in range(min(per_topic, partitions - first)):
            replicas = tuple(BROKERS[(index + i) % len(BROKERS)] for i in range(3))
            records.append(
                PartitionRecord(
                    topic_id=topic_id,
                    partition=index,
                    replicas=replicas,
                    isr=replicas,
                    leader=replicas[0],
                    leader_epoch=0,
                    partition_epoch=0,
                )
            )
    return records


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load(values: list[bytes]) -> tuple[MetadataImage, float, float]:
    """(image, decode seconds, replay seconds) of values replayed from empty."""
    started = time.perf_counter()
    records = [decode_record(value) for value in values]
    decoded = time.perf_counter()
    delta = MetadataDelta(EMPTY_IMAGE)
    for offset, record in enumerate(records):
        delta.replay(record, offset)
    image = delta.apply()
    return image, decoded - started, time.perf_counter() - decoded


def image_point(partitions: int, per_topic: int, directory: str) -> dict[str, Any]:
    values = [encode_record(record) for record in cluster_records(partitions, per_topic)]
    rss_before = _rss_bytes()
    image, decode_s, replay_s = _load(values)
    rss_after = _rss_bytes()
    assert sum(len(t.partitions) for t in image.topics.values()) == partitions
    fs = OsFileSystem()
    snapshot_id = snapshot.SnapshotId(len(values), 1)
    started = time.perf_counter()
    written = [encode_record(record) for record in image.to_records()]
    snapshot.write_snapshot(fs, directory, snapshot_id, written, timestamp_ms=0)
    write_s = time.perf_counter() - started
    path = os.path.join(directory, snapshot.file_name(snapshot_id))
    snapshot_bytes = os.path.getsize(path)
    started = time.perf_counter()
    reloaded, _, _ = _load(snapshot.read_values(fs, directory, snapshot_id))
    snapshot_load_s = time.perf_counter() - started
    assert reloaded.topics == image.topics and reloaded.brokers == image.brokers
    os.remove(path)
    return {
        "partitions": partitions,
        "topics": len(image.topics),
        "records": len(values),
        "records_mb": round(sum(map(len, values)) / MB, 2),
        "decode_s": round(decode_s, 3),
        "replay_s": round(replay_s, 3),
        "load_s": round(decode_s + replay_s, 3),
        "image_rss_mb": round((rss_after - rss_before) / MB, 1),
        "snapshot_write_s": round(write_s, 3),
        "snapshot_load_s": round(snapshot_load_s, 3),
        "snapshot_mb": round(snapshot_bytes / MB, 2),
    }


def image_series(points: list[int], one_topic_points: list[int]) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="scale-image-")
    try:
        many = [image_point(n, PARTITIONS_PER_TOPIC, directory) for n in points]
        one = [image_point(n, n, directory) for n in one_topic_points]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"partitions_per_topic": PARTITIONS_PER_TOPIC, "points": many, "one_topic": one}
