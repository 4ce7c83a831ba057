"""The broker's log cleaner: compacts the local logs of topics whose cleanup.policy
includes `compact` (issue 16; the pass itself is `storage.cleaner`).

One task per broker (`log_cleaner_enable`). A round looks at every local replica of a
compacted topic, leader or follower alike (each replica compacts its own log, as in
Kafka; what a follower copies from a cleaned leader has gaps, which its log takes),
and cleans the dirtiest one: the highest dirty ratio over its
`min.cleanable.dirty.ratio`, else one whose oldest dirty record passed
`max.compaction.lag.ms`, else one whose tombstones' delete horizon came. Only what is
below the replica's high-water mark is cleaned. When no log is due the task sleeps
`log_cleaner_backoff_ms`.

A pass runs on the event loop, a slice at a time (decision 0017): `clean_in_steps`
yields after each batch it reads and the cleaner lets other tasks run every
`SLICE_BYTES`. Appends, reads, truncations, retention and role changes run between
slices as usual; the pass checks before each swap that every segment it read is still
an inactive segment of the log, and gives up the pass otherwise (the next round starts
over from the checkpoint). Every mutation of the log stays on the trio thread, so
nothing here needs a lock.

Produce to a compacted topic refuses records without a key (INVALID_RECORD, as
Kafka's LogValidator does): `refuse_keyless_records`, called by the produce path; and
DeleteRecords needs the delete policy (`refuse_delete_records`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs
import trio

from broker.partition import Partition
from client.protocol import environment
from client.protocol.errors import ErrorCode, KafkaError
from kraft.controller.configs_schema import LONG_MAX, cleanup_policies
from storage.cleaner import (
    DAY_MS,
    CleanerConfig,
    CleanerError,
    CleaningAborted,
    CleanResult,
    clean_in_steps,
    cleanable_part,
)
from storage.log import LogError, SegmentedLog
from storage.records import check_producer_batches, iter_batches, iter_records

if TYPE_CHECKING:
    from broker.replica_manager import ReplicaManager

log = logging.getLogger(__name__)

LOG_CLEANER_BACKOFF_MS = 15_000  # log.cleaner.backoff.ms
# Bytes a pass reads between two chances for other tasks to run.
SLICE_BYTES = 256 * 1024
COMPACT = "compact"


def topic_policies(settings: Mapping[str, str]) -> frozenset[str]:
    return cleanup_policies(settings.get("cleanup.policy", "delete"))


def cleaner_config_for(settings: Mapping[str, str]) -> CleanerConfig:
    max_lag = settings.get("max.compaction.lag.ms", LONG_MAX)
    return CleanerConfig(
        delete_retention_ms=int(settings.get("delete.retention.ms", DAY_MS)),
        min_cleanable_dirty_ratio=float(settings.get("min.cleanable.dirty.ratio", 0.5)),
        min_compaction_lag_ms=int(settings.get("min.compaction.lag.ms", 0)),
        max_compaction_lag_ms=None if max_lag == LONG_MAX else int(max_lag),
    )


def refuse_keyless_records(
    topic: str, settings: Mapping[str, str], records: bytes, *, inflated_bytes_max: int
) -> None:
    """KafkaError(INVALID_RECORD) if `topic` is compacted and a record has no key.

    The produce checks run first (a compressed batch inflates at most
    `inflated_bytes_max`); a batch that does not decode raises RecordBatchError, which
    the produce path answers as it answers any malformed batch."""
    if COMPACT not in topic_policies(settings):
        return
    check_producer_batches(records, inflated_bytes_max=inflated_bytes_max)
    for position, header in iter_batches(records, validate=True):
        if header.is_control:
            continue  # refused by the produce checks, with their own message
        for record in iter_records(records, position):
            if record.key is None:
                raise KafkaError(
                    ErrorCode.INVALID_RECORD,
                    f"{topic} is compacted (cleanup.policy="
                    f"{settings.get('cleanup.policy')}): every record needs a key, "
                    f"the one at offset delta {record.offset - header.base_offset} has none",
                )


def refuse_delete_records(topic: str, settings: Mapping[str, str]) -> None:
    """DeleteRecords needs the delete policy (Kafka: POLICY_VIOLATION otherwise): moving
    the log start of a compact-only topic would drop keys' latest values."""
    if "delete" not in topic_policies(settings):
        raise KafkaError(
            ErrorCode.POLICY_VIOLATION,
            f"{topic}: records cannot be deleted under cleanup.policy="
            f"{settings.get('cleanup.policy')}",
        )


@attrs.frozen(kw_only=True)
class CleanedLog:
    partition: str
    result: CleanResult


class LogCleaner:
    def __init__(
        self,
        replicas: ReplicaManager,
        *,
        backoff_ms: int = LOG_CLEANER_BACKOFF_MS,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.replicas = replicas
        self.backoff_ms = backoff_ms
        # Segment and record timestamps are wall clock, as retention's are.
        self.wall_ms = wall_ms if wall_ms is not None else lambda: environment.current().wall_ms()
        self.passes = 0
        self.aborted = 0
        # Per log: when a kept tombstone's horizon next passes (None: none waits);
        # a log not in it has never been looked at since it was opened.
        self._next_horizon: weakref.WeakKeyDictionary[SegmentedLog, int | None] = (
            weakref.WeakKeyDictionary()
        )
        self._uncleanable: weakref.WeakSet[SegmentedLog] = weakref.WeakSet()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if await self.clean_once() is None:
                await trio.sleep(self.backoff_ms / 1000)

    def compacted(self) -> list[tuple[Partition, CleanerConfig]]:
        image = self.replicas.image
        found = []
        for partition in list(self.replicas.partitions.values()):
            settings = image.configs.get(("topic", partition.topic), {})
            if COMPACT in topic_policies(settings) and not partition.offline:
                found.append((partition, cleaner_config_for(settings)))
        return found

    def _pick(self, now_ms: int) -> tuple[Partition, CleanerConfig] | None:
        """The dirtiest log over its ratio; else one overdue; else one whose tombstone
        horizon came (or that was never looked at)."""
        over: list[tuple[float, str, Partition, CleanerConfig]] = []
        other: list[tuple[Partition, CleanerConfig]] = []
        for partition, config in self.compacted():
            partition_log = partition.log
            if partition_log in self._uncleanable:
                continue
            part = cleanable_part(partition_log, now_ms, config, partition.high_watermark)
            if part.over_ratio:
                over.append((part.ratio, repr(partition), partition, config))
            elif part.overdue:
                other.insert(0, (partition, config))
            elif part.clean_part or part.dirty_part:
                horizon = self._next_horizon.get(partition_log, -1)
                if horizon is not None and horizon <= now_ms:
                    other.append((partition, config))
        if over:
            _, _, partition, config = max(over, key=lambda item: (item[0], item[1]))
            return partition, config
        return other[0] if other else None

    async def clean_once(self) -> CleanedLog | None:
        """One round now: a pass over the log most due; what it did (None: no log was
        due, or the pass gave up). The task goes on at once after a pass, so the logs
        a restart left unknown are all looked at without a backoff between each."""
        now_ms = self.wall_ms()
        picked = self._pick(now_ms)
        if picked is None:
            return None
        partition, config = picked
        partition_log = partition.log
        steps = clean_in_steps(partition_log, now_ms, config, max_offset=partition.high_watermark)
        read = 0
        try:
            while True:
                try:
                    read += next(steps)
                except StopIteration as done:
                    result: CleanResult = done.value
                    break
                if read >= SLICE_BYTES:
                    read = 0
                    await trio.sleep(0)
        except CleaningAborted as error:
            self.aborted += 1
            log.info("%s: cleaning given up: %s", partition, error)
            return None
        except CleanerError as error:
            self._uncleanable.add(partition_log)
            log.error("%s: uncleanable until reopened: %s", partition, error)
            return None
        except (LogError, OSError, ValueError) as error:
            # Between two slices the log closed, went offline, lost its directory, or a
            # segment being read was deleted (I/O on a closed file is a ValueError).
            self.aborted += 1
            log.info("%s: cleaning stopped: %r", partition, error)
            return None
        self.passes += 1
        self._next_horizon[partition_log] = result.next_horizon_ms
        if result.cleaned:
            log.info(
                "%s: cleaned [%d, %d): %s; %d records (%d tombstones) removed, %d -> %d bytes",
                partition,
                result.first_dirty_offset,
                result.end_offset,
                result.reason,
                result.records_removed,
                result.tombstones_removed,
                result.bytes_before,
                result.bytes_after,
            )
        return CleanedLog(partition=repr(partition), result=result)
