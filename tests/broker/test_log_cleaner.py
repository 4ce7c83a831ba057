"""The broker's log cleaner (issue 16): compacted topics' configs, the produce check for
keys, cleaning on leaders and followers in a running cluster, passes interleaved with
appends and truncations on the event loop, and a crash in the middle of a pass."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import broker.log_cleaner as log_cleaner_module
from broker.group_driver import OFFSETS_TOPIC
from broker.groups.messages import CommitPartition, OffsetCommitRequest
from broker.log_cleaner import LogCleaner, cleaner_config_for, refuse_keyless_records
from broker.partition import Partition
from broker.replica_manager import ReplicaManager, log_config_for
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from kraft.controller.configs_schema import check_config, described
from kraft.metadata.image import MetadataImage, PartitionRegistration
from storage.cleaner import CleanerConfig, clean, first_dirty_offset
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import (
    Compression,
    RecordBatchError,
    RecordInput,
    build_batch,
    iter_batches,
    iter_records,
)
from tests.broker.test_data_plane import first, produce_body, started, topic_ready
from tests.storage.test_cleaner import CountdownFileSystem, CrashNow

COMPACTED = {"cleanup.policy": "compact"}


def keyed(pairs: list[tuple[bytes | None, bytes | None]], timestamp: int = 1_000) -> bytes:
    return build_batch([RecordInput(timestamp=timestamp, key=k, value=v) for k, v in pairs])


def records_of(log: SegmentedLog) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record from the log start, across the gaps the cleaner leaves."""
    out: list[tuple[int, bytes | None, bytes | None]] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 20)
        if not data:
            break
        for position, header in iter_batches(data):
            out.extend((r.offset, r.key, r.value) for r in iter_records(data, position))
            offset = header.next_offset
    return out


def latest_per_key(
    written: list[tuple[int, bytes | None, bytes | None]],
) -> list[tuple[int, bytes | None, bytes | None]]:
    last = {key: offset for offset, key, _ in written}
    return [r for r in written if last[r[1]] == r[0]]


# ---------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("delete", True),
        ("compact", True),
        ("compact,delete", True),
        ("delete,compact", True),
        (" compact , delete ", True),
        ("", False),
        ("compact,forever", False),
        ("Compact", False),
    ],
)
def test_cleanup_policy_takes_kafkas_list_syntax(value: str, valid: bool) -> None:
    assert (check_config("topic", "cleanup.policy", value) is None) is valid


def test_compaction_configs_have_kafkas_defaults_types_and_checks() -> None:
    shown = {name: (value, kind) for name, value, _, kind in described("topic", {})}
    assert shown["delete.retention.ms"] == ("86400000", "long")
    assert shown["min.cleanable.dirty.ratio"] == ("0.5", "double")
    assert shown["min.compaction.lag.ms"] == ("0", "long")
    assert shown["max.compaction.lag.ms"] == (str(2**63 - 1), "long")
    assert check_config("topic", "min.cleanable.dirty.ratio", "1.5") is not None
    assert check_config("topic", "min.cleanable.dirty.ratio", "x") is not None
    assert check_config("topic", "delete.retention.ms", "-1") is not None
    assert check_config("topic", "max.compaction.lag.ms", "0") is not None
    config = cleaner_config_for(
        {
            "delete.retention.ms": "5",
            "min.cleanable.dirty.ratio": "0.25",
            "max.compaction.lag.ms": "9",
        }
    )
    assert config == CleanerConfig(
        delete_retention_ms=5, min_cleanable_dirty_ratio=0.25, max_compaction_lag_ms=9
    )
    assert cleaner_config_for({}) == CleanerConfig()


def test_cleanup_policy_takes_append_and_subtract_as_a_list() -> None:
    from kraft.controller.configs import OP_APPEND, OP_SUBTRACT, AlterConfigOp
    from kraft.controller.configs import incremental_alter_configs as alter
    from tests.kraft.test_configs_and_producer_ids import apply, topic_resource, with_topic

    def policy_after(image: Any, op: int, value: str) -> tuple[int, Any]:
        change = AlterConfigOp(name="cleanup.policy", op=op, value=value)
        result = alter(image, [topic_resource(change)])
        image = apply(image, result)
        return result.response[0].error_code, image

    image = with_topic()
    code, image = policy_after(image, OP_APPEND, "compact")  # to the default, delete
    assert code == ErrorCode.NONE
    assert image.topic_config("t", "cleanup.policy") == "delete,compact"
    code, image = policy_after(image, OP_SUBTRACT, "delete")
    assert (code, image.topic_config("t", "cleanup.policy")) == (ErrorCode.NONE, "compact")
    assert policy_after(image, OP_SUBTRACT, "compact")[0] == ErrorCode.INVALID_CONFIG  # empty
    assert policy_after(image, OP_APPEND, "forever")[0] == ErrorCode.INVALID_CONFIG
    retention = AlterConfigOp(name="retention.ms", op=OP_APPEND, value="5")
    assert alter(image, [topic_resource(retention)]).response[0].error_code == (
        ErrorCode.INVALID_CONFIG  # not a list
    )


def test_compact_alone_turns_retention_off_and_compact_delete_keeps_it() -> None:
    settings = {"retention.ms": "1000", "retention.bytes": "5000"}
    compact = log_config_for({**settings, "cleanup.policy": "compact"})
    assert (compact.retention_ms, compact.retention_bytes, compact.allow_offset_gaps) == (
        -1,
        -1,
        True,
    )
    both = log_config_for({**settings, "cleanup.policy": "delete,compact"})
    assert (both.retention_ms, both.retention_bytes, both.allow_offset_gaps) == (1000, 5000, True)
    delete = log_config_for(settings)
    assert (delete.retention_ms, delete.allow_offset_gaps) == (1000, False)


def test_a_compacted_topic_refuses_a_record_without_a_key() -> None:
    mixed = keyed([(b"k", b"v"), (None, b"no key")])
    limit = {"inflated_bytes_max": 1 << 20}
    with pytest.raises(KafkaError) as refused:
        refuse_keyless_records("c", COMPACTED, mixed, **limit)
    assert refused.value.code == ErrorCode.INVALID_RECORD == 87
    assert "key" in refused.value.message
    refuse_keyless_records("c", COMPACTED, keyed([(b"k", None)]), **limit)  # a tombstone
    refuse_keyless_records("d", {}, mixed, **limit)  # delete policy: anything goes
    bomb = build_batch(
        [RecordInput(timestamp=1, key=b"k", value=bytes(4 << 20))], compression=Compression.GZIP
    )
    with pytest.raises(RecordBatchError):  # inflated no further than the produce checks allow
        refuse_keyless_records("c", COMPACTED, bomb, **limit)


# ---------------------------------------------------------------------- a running cluster


@pytest.mark.slow
async def test_a_compacted_topic_keeps_the_latest_value_per_key_on_leader_and_followers(
    nursery, tmp_path
) -> None:
    """Repeated keys over small segments; one pass on each replica (the broker's
    cleaner is off: the test runs passes itself, on a clock of its own); a consumer
    then reads exactly the latest value of each key, in offset order; the tombstone
    goes once delete.retention.ms has passed since the pass that kept it."""
    with trio.fail_after(60):
        cluster = await started(nursery, tmp_path, combined=3, log_cleaner_enable=False)
        configs = [
            ["cleanup.policy", "compact"],
            ["segment.bytes", "400"],
            ["delete.retention.ms", "10000"],
        ]
        leader = await topic_ready(cluster, "c", 3, configs=configs)
        written: list[tuple[int, bytes | None, bytes | None]] = []
        rng = random.Random(7)
        for round_ in range(40):
            # k0's last record is a tombstone, at offset 25.
            key = b"k%d" % rng.randrange(0 if round_ < 25 else 1, 6)
            pairs: list[tuple[bytes | None, bytes | None]] = [(key, b"v%d" % round_)]
            if round_ == 25:
                pairs = [(b"k0", None)]
            answer = await cluster.call(leader, ApiKey.PRODUCE, produce_body("c", keyed(pairs)))
            assert first(answer)["error_code"] == ErrorCode.NONE, answer
            written.append((first(answer)["base_offset"], *pairs[0]))
        keyless = await cluster.call(
            leader, ApiKey.PRODUCE, produce_body("c", keyed([(None, b"x")]))
        )
        assert first(keyless)["error_code"] == ErrorCode.INVALID_RECORD
        # DeleteRecords needs the delete policy (compact alone would lose latest values).
        delete = {"topics": [{"name": "c", "partitions": [{"partition": 0, "offset": 5}]}]}
        refused = first(await cluster.call(leader, ApiKey.DELETE_RECORDS, delete))
        assert refused["error_code"] == ErrorCode.POLICY_VIOLATION
        partitions = {node: s.replicas.partitions[("c", 0)] for node, s in cluster.servers.items()}
        while any(p.high_watermark < 40 for p in partitions.values()):
            await trio.sleep(0.01)  # followers learn the high-water mark on their next fetch
        assert all(len(p.log.segments) > 3 for p in partitions.values())

        clock = 100_000
        cleaners = {
            node: LogCleaner(s.replicas, wall_ms=lambda: clock)
            for node, s in cluster.servers.items()
        }
        for node, cleaner in cleaners.items():
            done = await cleaner.clean_once()
            assert done is not None and done.result.cleaned, node
            assert await cleaner.clean_once() is None  # nothing dirty is left
        # Everything but the active segment is cleaned: the latest of each key stays.
        for node, partition in partitions.items():
            got = records_of(partition.log)
            active = partition.log.active_segment.base_offset
            expected = latest_per_key([r for r in written if r[0] < active])
            assert [r for r in got if r[0] < active] == expected, node
            assert (25, b"k0", None) in got  # the tombstone stays, for now
        consumed = await consume_all(cluster, leader, "c")
        assert consumed == records_of(partitions[leader].log)
        # delete.retention.ms after the pass that kept it, the tombstone goes.
        clock += 10_001
        for node, cleaner in cleaners.items():
            done = await cleaner.clean_once()
            assert done is not None and done.result.tombstones_removed == 1, node
            got = records_of(partitions[node].log)
            assert not any(r[1] == b"k0" and r[2] is None for r in got)


async def consume_all(cluster: Any, node: int, topic: str) -> list[tuple[int, Any, Any]]:
    found: list[tuple[int, Any, Any]] = []
    offset = 0
    body: dict[str, Any]
    while True:
        body = {
            "max_wait_ms": 0,
            "topics": [{"name": topic, "partitions": [{"partition": 0, "fetch_offset": offset}]}],
        }
        part = first(await cluster.call(node, ApiKey.FETCH, body))
        assert part["error_code"] == ErrorCode.NONE, part
        if not part["records"]:
            return found
        for position, header in iter_batches(part["records"]):
            found.extend(
                (r.offset, r.key, r.value) for r in iter_records(part["records"], position)
            )
            offset = header.next_offset


# ---------------------------------------------------------------------- one partition, no cluster


def lone_partition(
    fs: MemoryFileSystem, config: LogConfig | None = None, index: int = 0
) -> Partition:
    config = config or LogConfig(segment_bytes=300, allow_offset_gaps=True)
    partition = Partition(
        topic="c",
        topic_id="id-c",
        index=index,
        log=SegmentedLog.open(f"/data/c-{index}", config, fs=fs),
        broker_id=1,
        blocking_io=False,
    )
    only_replica = PartitionRegistration(
        replicas=(1,), isr=(1,), leader=1, leader_epoch=0, partition_epoch=0
    )
    assert partition.apply(only_replica, 0) == "leader"
    return partition


def replicas_holding(partition: Partition, settings: dict[str, str] | None = None) -> Any:
    image = SimpleNamespace(configs={("topic", "c"): settings or COMPACTED})
    return SimpleNamespace(image=image, partitions={("c", 0): partition})


def fill(
    partition: Partition, rounds: int, keys: int = 4
) -> list[tuple[int, bytes | None, bytes | None]]:
    written = []
    for round_ in range(rounds):
        for key in range(keys):
            pair = (b"k%d" % key, b"r%d" % round_)
            info = partition.append_as_leader(keyed([pair]))
            written.append((info.first_offset, *pair))
    assert partition.high_watermark == partition.log.log_end_offset
    return written


async def test_a_pass_in_slices_lets_appends_run_and_gives_up_after_a_truncation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_cleaner_module, "SLICE_BYTES", 1)  # yield after every batch
    partition = lone_partition(MemoryFileSystem())
    written = fill(partition, 6)
    cleaner = LogCleaner(replicas_holding(partition), wall_ms=lambda: 10_000)  # type: ignore[arg-type]
    appended_during_pass = 0

    async def producer() -> None:
        nonlocal appended_during_pass
        for round_ in range(6, 9):
            await trio.sleep(0)
            partition.append_as_leader(keyed([(b"k0", b"late%d" % round_)]))
            appended_during_pass += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        done = await cleaner.clean_once()
    assert done is not None and done.result.cleaned
    assert appended_during_pass == 3
    got = records_of(partition.log)
    end = done.result.end_offset
    assert [r for r in got if r[0] < end] == latest_per_key([r for r in written if r[0] < end])
    assert [r[2] for r in got][-3:] == [b"late6", b"late7", b"late8"]

    # A truncation between two slices: the pass gives up before swapping anything.
    fill(partition, 6)
    before = records_of(partition.log)
    truncate_at = partition.log.inactive_segments()[-1].base_offset

    async def truncator() -> None:
        await trio.sleep(0)
        partition.high_watermark = truncate_at
        partition.truncate_as_follower(truncate_at)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(truncator)
        assert await cleaner.clean_once() is None
    assert cleaner.aborted == 1
    assert records_of(partition.log) == [r for r in before if r[0] < truncate_at]
    fs = partition.log.fs
    assert not [n for n in fs.listdir("/data/c-0") if n.endswith((".cleaned", ".swap"))]


async def test_a_broker_restarted_mid_pass_opens_a_valid_log() -> None:
    """A crash at each file-system operation of a pass, then the replica manager opens
    the partition again: the log reads whole, with every key's latest value, and (once
    compacted) it takes its gaps even after the topic went back to delete."""
    outcomes = set()
    for crash_at in range(300):
        fs = CountdownFileSystem()
        partition = lone_partition(fs)
        written = fill(partition, 5)
        partition.log.flush()
        latest = latest_per_key(written)
        cleaner = LogCleaner(replicas_holding(partition), wall_ms=lambda: 10_000)  # type: ignore[arg-type]
        fs.countdown = crash_at
        try:
            await cleaner.clean_once()
        except CrashNow:
            crashed = True
        else:
            crashed = False
        fs.countdown = None
        fs.crash(random.Random(crash_at))
        settings = {"cleanup.policy": "delete"} if crash_at % 2 else dict(COMPACTED)
        replicas = restarted(fs, settings)
        reopened = replicas._open("c", "id-c", 0)
        assert reopened is not None, crash_at
        got = records_of(reopened.log)
        assert [r[0] for r in got] == sorted({r[0] for r in got})
        assert set(latest) <= set(got), crash_at
        assert set(got) <= set(written)
        outcomes.add(len(got))
        if not crashed:
            active = reopened.log.active_segment.base_offset
            cleaned = latest_per_key([r for r in written if r[0] < active])
            assert got == cleaned + [r for r in written if r[0] >= active]
            break
    else:
        pytest.fail("the pass never got past the crash points")
    assert len(outcomes) >= 2  # some crashes left the old log, some the cleaned one


def restarted(fs: MemoryFileSystem, settings: dict[str, str]) -> ReplicaManager:
    replicas = ReplicaManager(
        broker_id=1,
        data_dir="/data",
        channel=None,  # type: ignore[arg-type]
        broker_epoch=lambda: 1,
        fs=fs,
        log_cleaner_enable=False,
    )
    replicas.image = MetadataImage(configs={("topic", "c"): settings})
    return replicas


# ---------------------------------------------------------------------- __consumer_offsets


def commit_request(group: str, offset: int) -> OffsetCommitRequest:
    return OffsetCommitRequest(
        group_id=group,
        partitions=tuple(
            CommitPartition(topic="t", partition=p, offset=offset + p, metadata=f"m{offset}")
            for p in range(3)
        ),
    )


async def wait_loaded(driver: Any) -> Any:
    while not driver.slots or driver.slots[0].coordinator is None:
        await trio.sleep(0.01)
    return driver.slots[0]


@pytest.mark.slow
async def test_the_coordinator_reloads_from_a_compacted_offsets_topic_and_offsets_expire(
    nursery, tmp_path
) -> None:
    """Commits over several segments, an Empty group's offsets expired (tombstones),
    the offsets partition compacted and its tombstones dropped a delete horizon later:
    a coordinator loaded again from that log (gaps between offsets) holds exactly the
    latest commits of the live group and nothing of the expired one."""
    with trio.fail_after(60):
        cluster = await started(
            nursery, tmp_path, combined=1, log_cleaner_enable=False, offsets_topic_num_partitions=1
        )
        server = cluster.servers[1]
        driver = server.groups
        clock = 1_000_000_000
        driver._wall_ms = lambda: clock
        await driver.ensure_topic()
        assert server.replicas.image.topic_config(OFFSETS_TOPIC, "cleanup.policy") == "compact"
        slot = await wait_loaded(driver)
        partition = slot.partition
        await driver.call("expiring", "commit_offsets", commit_request("expiring", 5))
        clock += driver.config.offsets_retention_ms + 1
        for round_ in range(12):
            await driver.call("live", "commit_offsets", commit_request("live", round_ * 10))
            if round_ % 3 == 2:
                partition.log.roll()
        driver.expire_offsets_now()
        while partition.high_watermark < partition.log.log_end_offset or (
            driver.coordinator("expiring").fetch_offsets("expiring", None).partitions
        ):
            await trio.sleep(0.01)
        partition.log.roll()  # the tombstones leave the active segment
        cleaner = LogCleaner(server.replicas, wall_ms=lambda: clock)
        done = await cleaner.clean_once()
        assert done is not None and done.result.records_removed > 0
        clock += 86_400_000 + 1  # delete.retention.ms: the tombstones go
        done = await cleaner.clean_once()
        assert done is not None and done.result.tombstones_removed == 3
        offsets = [r[0] for r in records_of(partition.log)]
        assert len(offsets) == 3 and offsets[0] > partition.log.log_start_offset  # a gap

        driver._drop(slot, "test: load again")
        driver.on_leadership(partition)
        await wait_loaded(driver)
        fetched = driver.coordinator("live").fetch_offsets("live", None).partitions
        assert [(f.partition, f.offset, f.metadata) for f in fetched] == [
            (p, 110 + p, "m110") for p in range(3)
        ]
        assert driver.coordinator("expiring").fetch_offsets("expiring", None).partitions == ()
        assert "expiring" not in driver.coordinator("live").groups


async def test_the_background_task_cleans_when_due_and_waits_its_backoff_between(
    autojump_clock: Any,
) -> None:
    partition = lone_partition(MemoryFileSystem())
    fill(partition, 6)
    cleaner = LogCleaner(replicas_holding(partition), backoff_ms=15_000, wall_ms=lambda: 10_000)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cleaner.run)
        await trio.sleep(1)
        assert cleaner.passes >= 1
        passes, cleaned_up_to = cleaner.passes, first_dirty_offset(partition.log)
        fill(partition, 6)  # dirty again
        await trio.sleep(5)
        assert first_dirty_offset(partition.log) == cleaned_up_to  # still in its backoff
        await trio.sleep(15)
        assert first_dirty_offset(partition.log) > cleaned_up_to
        assert cleaner.passes > passes
        nursery.cancel_scope.cancel()


async def test_after_a_restart_every_log_is_looked_at_without_a_backoff_between(
    autojump_clock: Any,
) -> None:
    """Logs under their ratio that the cleaner has not seen since it started (their
    tombstone horizons are unknown to it) get one pass each, one after the other."""
    fs = MemoryFileSystem()
    partitions = [lone_partition(fs, index=index) for index in range(3)]
    for partition in partitions:
        fill(partition, 6)
        assert clean(partition.log, 10_000, CleanerConfig()).cleaned  # before the "restart"
    replicas = SimpleNamespace(
        image=SimpleNamespace(configs={("topic", "c"): COMPACTED}),
        partitions={("c", p.index): p for p in partitions},
    )
    cleaner = LogCleaner(replicas, backoff_ms=15_000, wall_ms=lambda: 10_000)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cleaner.run)
        await trio.sleep(1)
        assert cleaner.passes == 3
        nursery.cancel_scope.cancel()
