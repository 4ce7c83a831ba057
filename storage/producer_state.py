"""Producer state of one partition: idempotence, fencing and open transactions.

For every producer id that wrote to the partition, Kafka's leader keeps its epoch,
the sequence ranges and offsets of its last 5 batches, the first offset of its open
transaction and the timestamp of its last write (`ProducerStateManager`,
`ProducerStateEntry`, `ProducerAppendInfo`). With that it can

- answer a retried batch with the offsets it got the first time and write nothing
  (a duplicate: same epoch, same first and last sequence as one of the last 5);
- refuse a batch that skips or repeats sequences (OUT_OF_ORDER_SEQUENCE_NUMBER), a
  new epoch that does not start at sequence 0, and an older epoch than the one it
  knows (INVALID_PRODUCER_EPOCH: a zombie);
- know which transactions are open, so the last stable offset (LSO) stops a
  read_committed consumer before the first undecided record, and which were aborted,
  for the transaction index.

The rules are split as Kafka splits them. `validate` runs before an append and
changes nothing; `record` runs after the append, with the offsets the log assigned,
and never refuses (a follower records what its leader wrote). Both are pure: no
clock (expiry takes `now_ms`), no files. A batch's "last timestamp" is its header's
max timestamp, as in Kafka, so replaying the log rebuilds exactly the same state.

Around the pure `ProducerState`, `ProducerStateManager` keeps it in step with its
log directory: `<20-digit offset>.snapshot` files, the state after every batch below
that offset, written atomically (temp, fsync, rename, fsync dir) with a version and a
CRC32C; on open or after a truncation it loads the latest snapshot it can trust and
replays only the batches after it. A snapshot that fails any check is logged, deleted
and never used: the next older one, or the log start, is replayed from instead.

What the partition calls, and when (the ordering contract):
- before an append as leader: `validate(headers)`; a DUPLICATE is answered with
  `outcome.duplicate`'s offsets and nothing is written; an error verdict refuses the
  request with its Kafka error code (`Verdict.error_code`).
- after the append: `record(header)` for each batch, its offsets as assigned
  (`assigned_headers`); a follower calls it after `append_as_follower` too. A marker
  (`record(header, marker)`) that ends an aborted transaction returns the
  `AbortedTxn` for the segment's transaction index.
- when the log rolls a segment: `take_snapshot()` (its offset is the new base).
- after `truncate_to(offset)` of the log: `truncate_to(offset, read_batches)`.
- after the log start moves (DeleteRecords, retention): `truncate_start(offset)`.
- when the log restarts empty somewhere: `truncate_fully_and_start_at(offset)`.
- on open: `ProducerStateManager.load(...)`.
- periodically: `expire(now_ms)` (Kafka checks every 10 minutes,
  producer.id.expiration.check.interval.ms).
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol

import attrs
from crc32c import crc32c

from storage.checkpoint import write_atomically
from storage.fs import FileSystem
from storage.records import (
    NO_PRODUCER_EPOCH,
    NO_SEQUENCE,
    BatchHeader,
    Buffer,
    ControlRecordType,
    RecordBatchError,
    build_control_batch,
    iter_batches,
    iter_records,
    parse_control_record_key,
)
from storage.txn_index import AbortedTxn

log = logging.getLogger(__name__)

# Kafka's ProducerStateEntry.NUM_BATCHES_TO_RETAIN: a producer has at most 5 requests
# in flight (max.in.flight.requests.per.connection <= 5 with idempotence), so a retry
# is always of one of its last 5 batches. Read at call time (tests plant a smaller one).
BATCHES_RETAINED = 5
SEQUENCE_MAX = (1 << 31) - 1  # sequences wrap to 0 after Integer.MAX_VALUE
EPOCH_MAX = (1 << 15) - 1  # producer epochs are int16
# producer.id.expiration.ms (KIP-854, default 1 day): an idempotent producer's state is
# dropped once it has written nothing for this long.
PRODUCER_ID_EXPIRATION_MS = 24 * 3600 * 1000
# transactional.id.expiration.ms (default 7 days): here also how long a transactional
# producer's state is kept (decision 0014).
TRANSACTIONAL_ID_EXPIRATION_MS = 7 * 24 * 3600 * 1000
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 1
_MARKER_VALUE = struct.Struct(">hi")  # EndTransactionMarker: version i16, coordinator epoch i32
MARKER_VALUE_VERSION = 0


class Verdict(enum.Enum):
    """What `validate` says of an append; the errors carry Kafka's error codes."""

    NEW = 0
    DUPLICATE = -2  # not an error: answered with the original offsets
    INVALID_RECORD = 87
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    TRANSACTION_COORDINATOR_FENCED = 52
    # Kafka's broker stopped returning it from Produce in 2.5 (KIP-360): an unknown
    # producer's first batch is taken at any sequence. Kept for the wiring's mapping;
    # `validate` never answers it.
    UNKNOWN_PRODUCER_ID = 59

    @property
    def error_code(self) -> int:
        """Kafka's error code for the produce answer (0 for NEW and DUPLICATE)."""
        return max(self.value, 0)


class Origin(enum.Enum):
    """Who appends, which decides what is checked (Kafka's AppendOrigin)."""

    CLIENT = "client"  # a producer: duplicates, epochs, sequences, transaction state
    COORDINATOR = "coordinator"  # a coordinator's own writes and markers: epochs only
    REPLICATION = "replication"  # a follower copying its leader: nothing refused


# Module-level names for the members the append path compares on every batch: an
# enum attribute lookup costs five times a global's.
_CLIENT, _REPLICATION = Origin.CLIENT, Origin.REPLICATION
_VERDICT_NEW = Verdict.NEW


@attrs.frozen(kw_only=True, slots=True)
class ProducerStateConfig:
    producer_id_expiration_ms: int = PRODUCER_ID_EXPIRATION_MS
    transactional_id_expiration_ms: int = TRANSACTIONAL_ID_EXPIRATION_MS


class BatchMetadata(NamedTuple):
    """One of a producer's last batches: what a retry of it is answered with.

    A NamedTuple, as BatchHeader is: every idempotent append makes one, and a frozen
    attrs instance costs four times as much to build."""

    first_sequence: int
    last_sequence: int
    first_offset: int
    last_offset: int
    max_timestamp: int


@attrs.frozen(kw_only=True, slots=True)
class ProducerEntry:
    producer_id: int
    epoch: int = NO_PRODUCER_EPOCH
    batches: tuple[BatchMetadata, ...] = ()  # oldest first, at most BATCHES_RETAINED
    coordinator_epoch: int = -1  # of the coordinator that wrote its last marker
    last_timestamp: int = -1
    txn_first_offset: int = -1  # first offset of its open transaction, -1 if none
    transactional: bool = False  # it has written transactional batches or markers

    @property
    def last_sequence(self) -> int:
        return self.batches[-1].last_sequence if self.batches else NO_SEQUENCE

    @property
    def has_open_transaction(self) -> bool:
        return self.txn_first_offset >= 0

    def find_duplicate(self, header: BatchHeader) -> BatchMetadata | None:
        """The retained batch with this batch's epoch and exact sequence range."""
        if header.producer_epoch != self.epoch:
            return None
        first, last = header.base_sequence, header.last_sequence
        for batch in self.batches:
            if batch.first_sequence == first and batch.last_sequence == last:
                return batch
        return None


@attrs.frozen(kw_only=True, slots=True)
class Outcome:
    verdict: Verdict
    duplicate: BatchMetadata | None = None  # for DUPLICATE: the batch as first written
    message: str = ""

    @property
    def is_new(self) -> bool:
        return self.verdict is _VERDICT_NEW


NEW = Outcome(verdict=Verdict.NEW)


@attrs.frozen(kw_only=True, slots=True)
class EndTxnMarker:
    """The one record of a transaction marker batch: COMMIT or ABORT, and by whom."""

    control_type: ControlRecordType
    coordinator_epoch: int

    def __attrs_post_init__(self) -> None:
        assert self.control_type in (ControlRecordType.COMMIT, ControlRecordType.ABORT), self

    @property
    def aborts(self) -> bool:
        return self.control_type is ControlRecordType.ABORT

    @classmethod
    def from_wire(cls, control_type: ControlRecordType, value: bytes | None) -> EndTxnMarker:
        if value is None or len(value) < _MARKER_VALUE.size:
            raise RecordBatchError(f"transaction marker value too short: {value!r}")
        version, coordinator_epoch = _MARKER_VALUE.unpack_from(value)
        if version < 0:
            raise RecordBatchError(f"transaction marker version {version}")
        return cls(control_type=control_type, coordinator_epoch=coordinator_epoch)

    def value(self) -> bytes:
        return _MARKER_VALUE.pack(MARKER_VALUE_VERSION, self.coordinator_epoch)


@attrs.frozen(kw_only=True, slots=True)
class CompletedTxn:
    producer_id: int
    first_offset: int
    last_offset: int  # the marker's offset
    aborted: bool


class LoggedBatch(NamedTuple):
    """A batch as replay needs it: its header, and its marker for a marker batch."""

    header: BatchHeader
    marker: EndTxnMarker | None = None


@attrs.frozen(kw_only=True)
class StateView:
    """Everything a ProducerState holds, comparable (tests, snapshots, rebuilds)."""

    producers: tuple[ProducerEntry, ...]
    ongoing: tuple[tuple[int, int], ...]  # (first offset, producer id), by first offset
    unreplicated: tuple[CompletedTxn, ...]
    map_end_offset: int
    log_start_offset: int


# --------------------------------------------------------------------------- rules


def in_sequence(last_sequence: int, next_sequence: int) -> bool:
    """Does `next_sequence` follow `last_sequence` (-1: nothing yet), wrapping at 2^31?"""
    return next_sequence == last_sequence + 1 or (
        next_sequence == 0 and last_sequence == SEQUENCE_MAX
    )


def _with_data(entry: ProducerEntry, header: BatchHeader, first_offset: int) -> ProducerEntry:
    """The entry after a data batch at `first_offset` (ProducerStateEntry.addBatch)."""
    # A new epoch starts a fresh history: a retry can only be of the current epoch.
    kept = entry.batches if header.producer_epoch == entry.epoch else ()
    batch = BatchMetadata(
        first_sequence=header.base_sequence,
        last_sequence=header.last_sequence,
        first_offset=first_offset,
        last_offset=first_offset + header.last_offset_delta,
        max_timestamp=header.max_timestamp,
    )
    batches = (*kept, batch)[-BATCHES_RETAINED:]
    txn_first = entry.txn_first_offset
    transactional = header.is_transactional
    if transactional and txn_first < 0:
        txn_first = first_offset
    # The constructor, not attrs.evolve: this runs on every idempotent append, and
    # evolve costs three times as much.
    return ProducerEntry(
        producer_id=entry.producer_id,
        epoch=header.producer_epoch,
        batches=batches,
        coordinator_epoch=entry.coordinator_epoch,
        last_timestamp=header.max_timestamp,
        txn_first_offset=txn_first,
        transactional=entry.transactional or transactional,
    )


def _with_marker(entry: ProducerEntry, header: BatchHeader, marker: EndTxnMarker) -> ProducerEntry:
    """The entry after a COMMIT or ABORT marker (ProducerAppendInfo.appendEndTxnMarker)."""
    kept = entry.batches if header.producer_epoch == entry.epoch else ()
    return attrs.evolve(
        entry,
        epoch=header.producer_epoch,
        batches=kept,
        coordinator_epoch=marker.coordinator_epoch,
        last_timestamp=header.max_timestamp,
        txn_first_offset=-1,
        transactional=True,
    )


def _refuse(verdict: Verdict, message: str) -> Outcome:
    return Outcome(verdict=verdict, message=message)


def _check_data(
    entry: ProducerEntry, committed_epoch: int, header: BatchHeader, origin: Origin
) -> Outcome:
    """Epoch, sequence and transaction state of one data batch against `entry`."""
    pid, epoch = header.producer_id, header.producer_epoch
    if epoch < entry.epoch and origin is not _REPLICATION:
        return _refuse(
            Verdict.INVALID_PRODUCER_EPOCH,
            f"producer {pid}: epoch {epoch} is older than the known epoch {entry.epoch}",
        )
    if origin is _CLIENT:
        first = header.base_sequence
        if epoch != entry.epoch:
            if first != 0 and entry.epoch != NO_PRODUCER_EPOCH:
                return _refuse(
                    Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    f"producer {pid}: new epoch {epoch} (after {entry.epoch}) starts at "
                    f"sequence {first}, not 0",
                )
        elif committed_epoch != NO_PRODUCER_EPOCH and not in_sequence(entry.last_sequence, first):
            # An entry without an epoch (its records deleted, or a marker for a
            # producer never seen) takes any sequence, as Kafka does since KIP-360.
            return _refuse(
                Verdict.OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"producer {pid} epoch {epoch}: sequence {first} does not follow "
                f"{entry.last_sequence}",
            )
    if entry.has_open_transaction and not header.is_transactional:
        return _refuse(
            Verdict.INVALID_TXN_STATE,
            f"producer {pid}: a non-transactional batch inside its open transaction "
            f"(from offset {entry.txn_first_offset})",
        )
    return NEW


# --------------------------------------------------------------------------- state


class ProducerState:
    """The pure state: producers, open and unreplicated transactions, map end offset.

    `map_end_offset` is the offset after the last batch recorded: the state describes
    exactly the batches below it (a snapshot is named by it).
    """

    def __init__(
        self,
        *,
        map_end_offset: int = 0,
        log_start_offset: int = 0,
        config: ProducerStateConfig | None = None,
    ) -> None:
        assert 0 <= log_start_offset <= map_end_offset, (log_start_offset, map_end_offset)
        self.config = config if config is not None else ProducerStateConfig()
        self.map_end_offset = map_end_offset
        self.log_start_offset = log_start_offset
        self._producers: dict[int, ProducerEntry] = {}
        # first offset -> producer id of each open transaction.
        self._ongoing: dict[int, int] = {}
        # first offset -> transactions decided by a marker not yet below the HWM.
        self._unreplicated: dict[int, CompletedTxn] = {}

    # ------------------------------------------------------------------ reading

    def entry(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    @property
    def producers(self) -> dict[int, ProducerEntry]:
        return dict(self._producers)

    def first_undecided_offset(self) -> int | None:
        """The first offset of the oldest open transaction."""
        return min(self._ongoing) if self._ongoing else None

    def first_unstable_offset(self, high_watermark: int) -> int | None:
        """The first offset of the oldest transaction that is open, or decided by a
        marker not yet below the high-water mark (a marker may still be truncated)."""
        candidates = list(self._ongoing)
        candidates += [
            first for first, txn in self._unreplicated.items() if txn.last_offset >= high_watermark
        ]
        return min(candidates) if candidates else None

    def last_stable_offset(self, high_watermark: int) -> int:
        """What a read_committed consumer may read up to (exclusive)."""
        unstable = self.first_unstable_offset(high_watermark)
        if unstable is None or unstable >= high_watermark:
            return high_watermark
        # A transaction may have begun below the log start (DeleteRecords): the LSO
        # never goes below the log start (UnifiedLog.maybeIncrementFirstUnstableOffset).
        return max(unstable, min(self.log_start_offset, high_watermark))

    def view(self) -> StateView:
        return StateView(
            producers=tuple(self._producers[pid] for pid in sorted(self._producers)),
            ongoing=tuple(sorted((first, pid) for first, pid in self._ongoing.items())),
            unreplicated=tuple(self._unreplicated[first] for first in sorted(self._unreplicated)),
            map_end_offset=self.map_end_offset,
            log_start_offset=self.log_start_offset,
        )

    # ------------------------------------------------------------------ before an append

    def validate(self, headers: Sequence[BatchHeader], origin: Origin = Origin.CLIENT) -> Outcome:
        """Check the batches of one append in order, changing nothing.

        A batch that repeats one of its producer's last batches makes the whole append
        a DUPLICATE, answered with that batch's offsets (UnifiedLog does the same).
        """
        updated: dict[int, ProducerEntry] = {}
        last = len(headers) - 1
        for position, header in enumerate(headers):
            pid = header.producer_id
            if pid < 0:
                if header.is_transactional:
                    return _refuse(
                        Verdict.INVALID_RECORD, "a transactional batch needs a producer id"
                    )
                continue
            if origin is _CLIENT:
                if header.is_control:
                    return _refuse(Verdict.INVALID_RECORD, "producers do not write control batches")
                if header.base_sequence < 0:
                    # LogValidator: a batch with a producer id must have a sequence.
                    return _refuse(
                        Verdict.INVALID_RECORD,
                        f"producer {pid}: invalid sequence number {header.base_sequence}",
                    )
                committed = self._producers.get(pid)
                duplicate = committed.find_duplicate(header) if committed else None
                if duplicate is not None:
                    return Outcome(
                        verdict=Verdict.DUPLICATE,
                        duplicate=duplicate,
                        message=f"producer {pid}: sequences {duplicate.first_sequence}.."
                        f"{duplicate.last_sequence} were written at offset {duplicate.first_offset}",
                    )
            committed = self._producers.get(pid)
            entry = updated.get(pid) or committed or ProducerEntry(producer_id=pid)
            committed_epoch = committed.epoch if committed else NO_PRODUCER_EPOCH
            outcome = _check_data(entry, committed_epoch, header, origin)
            if not outcome.is_new:
                return outcome
            if position < last:  # later batches of the append are checked against it
                updated[pid] = _with_data(entry, header, header.base_offset)
        return NEW

    def validate_marker(
        self,
        producer_id: int,
        producer_epoch: int,
        marker: EndTxnMarker,
        *,
        epoch_bumped: bool = False,
    ) -> Outcome:
        """May the coordinator write this COMMIT/ABORT marker (WriteTxnMarkers)?

        `epoch_bumped` is transaction version 2 (KIP-890 part 2): the coordinator
        bumps the epoch for every marker, so a marker must carry a newer epoch than
        the producer's, except the retry of one already written (same epoch, no open
        transaction, KAFKA-19999). Before it, a marker may carry the same epoch.
        """
        entry = self._producers.get(producer_id) or ProducerEntry(producer_id=producer_id)
        if epoch_bumped:
            stale = producer_epoch <= entry.epoch
            if producer_epoch == entry.epoch and not entry.has_open_transaction:
                stale = False
        else:
            stale = producer_epoch < entry.epoch
        if stale:
            return _refuse(
                Verdict.INVALID_PRODUCER_EPOCH,
                f"producer {producer_id}: marker epoch {producer_epoch}, known {entry.epoch}",
            )
        if entry.coordinator_epoch > marker.coordinator_epoch:
            return _refuse(
                Verdict.TRANSACTION_COORDINATOR_FENCED,
                f"producer {producer_id}: coordinator epoch {marker.coordinator_epoch} is "
                f"older than {entry.coordinator_epoch}",
            )
        return NEW

    # ------------------------------------------------------------------ after an append

    def record(self, header: BatchHeader, marker: EndTxnMarker | None = None) -> AbortedTxn | None:
        """Take a batch the log now holds (its final offsets in `header`).

        Returns the transaction-index entry when `marker` ends an aborted transaction
        that wrote to this partition (a marker of an empty transaction changes no
        offset and is not indexed, as in Kafka).
        """
        assert header.base_offset >= self.map_end_offset, (
            f"batch at {header.base_offset} recorded after offset {self.map_end_offset}"
        )
        assert marker is None or header.is_control, f"a marker on a data batch: {header}"
        self.map_end_offset = header.next_offset
        pid = header.producer_id
        if pid < 0:
            return None
        entry = self._producers.get(pid) or ProducerEntry(producer_id=pid)
        if header.is_control:
            if marker is None:
                return None  # an empty control batch: the cleaner removed its marker
            return self._end_transaction(entry, header, marker)
        if entry.has_open_transaction and not header.is_transactional:
            # The leader refuses this (INVALID_TXN_STATE); a follower copies its
            # leader's log whatever it holds, and the transaction stays open.
            log.warning(
                "producer %d: non-transactional batch at %d in a transaction",
                pid,
                header.base_offset,
            )
        updated = _with_data(entry, header, header.base_offset)
        if updated.txn_first_offset >= 0 and not entry.has_open_transaction:
            self._ongoing[updated.txn_first_offset] = pid
        self._producers[pid] = updated
        return None

    def _end_transaction(
        self, entry: ProducerEntry, header: BatchHeader, marker: EndTxnMarker
    ) -> AbortedTxn | None:
        pid = entry.producer_id
        self._producers[pid] = _with_marker(entry, header, marker)
        if not entry.has_open_transaction:
            return None
        first = entry.txn_first_offset
        assert self._ongoing.get(first) == pid, (first, pid, self._ongoing)
        # The LSO once this marker is written: the oldest other open transaction's
        # start, or just past the marker (ProducerStateManager.lastStableOffset).
        others = [offset for offset, owner in self._ongoing.items() if owner != pid]
        last_stable = min(others) if others else header.base_offset + 1
        del self._ongoing[first]
        completed = CompletedTxn(
            producer_id=pid,
            first_offset=first,
            last_offset=header.base_offset,
            aborted=marker.aborts,
        )
        self._unreplicated[first] = completed
        if not marker.aborts:
            return None
        return AbortedTxn(pid, first, header.base_offset, last_stable)

    def replay(self, batches: Iterable[LoggedBatch]) -> list[AbortedTxn]:
        """Record batches read back from the log; the aborted transactions they end."""
        aborted = []
        for header, marker in batches:
            if header.base_offset < self.map_end_offset:
                if header.next_offset <= self.map_end_offset:
                    continue
                # The log start lies inside this batch (DeleteRecords): reads from the
                # start return it whole, and its producer did write it.
                self.map_end_offset = header.base_offset
            found = self.record(header, marker)
            if found is not None:
                aborted.append(found)
        return aborted

    def on_high_watermark(self, high_watermark: int) -> None:
        """Forget decided transactions whose marker is now below the high-water mark."""
        for first in [
            f for f, txn in self._unreplicated.items() if txn.last_offset < high_watermark
        ]:
            del self._unreplicated[first]

    # ------------------------------------------------------------------ removing

    def truncate_start(self, log_start_offset: int) -> None:
        """The log start moved forward. Producers stay (their epoch and sequences still
        fence and order), as Kafka keeps them since KIP-360."""
        if log_start_offset <= self.log_start_offset:
            return
        self.log_start_offset = log_start_offset
        self.on_high_watermark(log_start_offset)
        self.map_end_offset = max(self.map_end_offset, log_start_offset)

    def clear(self, offset: int) -> None:
        """Forget everything: the log restarts empty at `offset`."""
        self._producers.clear()
        self._ongoing.clear()
        self._unreplicated.clear()
        self.map_end_offset = offset
        self.log_start_offset = offset

    def expire(self, now_ms: int) -> list[int]:
        """Drop producers idle too long without an open transaction; their ids.

        An open transaction keeps its producer (the coordinator aborts it after
        transaction.timeout.ms). Idle means since the last batch's max timestamp.
        """
        expired = []
        for pid, entry in self._producers.items():
            if entry.has_open_transaction:
                continue
            limit = self.config.producer_id_expiration_ms
            if entry.transactional:
                limit = max(limit, self.config.transactional_id_expiration_ms)
            if now_ms - entry.last_timestamp >= limit:
                expired.append(pid)
        for pid in expired:
            del self._producers[pid]
        return expired

    # ------------------------------------------------------------------ snapshots

    def to_snapshot(self) -> bytes:
        return encode_snapshot(self)

    def _load_entries(
        self, producers: Iterable[ProducerEntry], unreplicated: Iterable[CompletedTxn]
    ) -> None:
        for entry in producers:
            assert entry.producer_id not in self._producers, entry
            self._producers[entry.producer_id] = entry
            if entry.has_open_transaction:
                self._ongoing[entry.txn_first_offset] = entry.producer_id
        for txn in unreplicated:
            self._unreplicated[txn.first_offset] = txn


def assigned_headers(
    headers: Sequence[BatchHeader], first_offset: int, leader_epoch: int
) -> list[BatchHeader]:
    """The headers of an append as the log patched them (offsets from `first_offset`)."""
    patched = []
    offset = first_offset
    for header in headers:
        moved = header.rebased(offset, leader_epoch)
        patched.append(moved)
        offset = moved.next_offset
    return patched


# --------------------------------------------------------------------------- markers


def build_marker_batch(
    marker: EndTxnMarker,
    *,
    producer_id: int,
    producer_epoch: int,
    timestamp: int,
    base_offset: int = 0,
    partition_leader_epoch: int = -1,
) -> bytes:
    """A COMMIT/ABORT marker batch as the leader writes it for WriteTxnMarkers."""
    return build_control_batch(
        marker.control_type,
        marker.value(),
        timestamp=timestamp,
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        is_transactional=True,
    )


def logged_batches(buffer: Buffer) -> Iterator[LoggedBatch]:
    """The batches of a buffer of whole batches, decoding only markers' one record."""
    for position, header in iter_batches(buffer, validate=False):
        marker = None
        if header.is_control and header.producer_id >= 0:
            record = next(iter_records(buffer, position), None)
            if record is not None:
                kind = parse_control_record_key(record.key)
                if kind in (ControlRecordType.COMMIT, ControlRecordType.ABORT):
                    marker = EndTxnMarker.from_wire(kind, record.value)
        yield LoggedBatch(header, marker)


class ReadableLog(Protocol):
    """What replay needs of a log (SegmentedLog.read_slice)."""

    def read_slice(
        self, start_offset: int, max_bytes: int, max_offset: int | None = None
    ) -> tuple[bytes, int]: ...


# One read per this many bytes during replay (a 1 GiB segment is read in 1,024 steps).
REPLAY_READ_BYTES = 1 << 20
ReadBatches = Callable[[int, int], Iterable[LoggedBatch]]


def log_reader(readable: ReadableLog) -> ReadBatches:
    """`read_batches(start, end)` over a log: its batches in [start, end), in order."""

    def read_batches(start: int, end: int) -> Iterator[LoggedBatch]:
        offset = start
        # Every read returns at least one whole batch or stops: bounded by end - start.
        while offset < end:
            data, next_offset = readable.read_slice(offset, REPLAY_READ_BYTES, end)
            if not data:
                break
            yield from logged_batches(data)
            assert next_offset > offset, (offset, next_offset)
            offset = next_offset

    return read_batches


# --------------------------------------------------------------------------- snapshot files
#
# version u16 | crc32c u32 of everything after it | map end offset i64 |
# producer count i32, each: producer id i64, epoch i16, coordinator epoch i32,
#   last timestamp i64, open transaction's first offset i64, flags u8 (1 =
#   transactional), batch count u8, each: first sequence i32, last sequence i32,
#   first offset i64, last offset i64, max timestamp i64 |
# unreplicated count i32, each: producer id i64, first offset i64, last offset i64,
#   aborted u8
# Kafka's version 1 keeps only each producer's last batch; this keeps all five, so a
# retry of any of them is still answered after a restart (decision 0014).

_PREFIX = struct.Struct(">HI")
_COUNT = struct.Struct(">i")
_OFFSET = struct.Struct(">q")
_PRODUCER = struct.Struct(">qhiqqBB")
_BATCH = struct.Struct(">iiqqq")
_TXN = struct.Struct(">qqqB")
_TRANSACTIONAL_FLAG = 0x01


class CorruptSnapshotError(ValueError):
    """A snapshot file fails a check: it is never used."""


def snapshot_file_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


def encode_snapshot(state: ProducerState) -> bytes:
    view = state.view()
    parts = [_OFFSET.pack(view.map_end_offset), _COUNT.pack(len(view.producers))]
    for entry in view.producers:
        flags = _TRANSACTIONAL_FLAG if entry.transactional else 0
        parts.append(
            _PRODUCER.pack(
                entry.producer_id,
                entry.epoch,
                entry.coordinator_epoch,
                entry.last_timestamp,
                entry.txn_first_offset,
                flags,
                len(entry.batches),
            )
        )
        for batch in entry.batches:
            parts.append(
                _BATCH.pack(
                    batch.first_sequence,
                    batch.last_sequence,
                    batch.first_offset,
                    batch.last_offset,
                    batch.max_timestamp,
                )
            )
    parts.append(_COUNT.pack(len(view.unreplicated)))
    for txn in view.unreplicated:
        parts.append(
            _TXN.pack(txn.producer_id, txn.first_offset, txn.last_offset, int(txn.aborted))
        )
    body = b"".join(parts)
    return _PREFIX.pack(SNAPSHOT_VERSION, crc32c(body)) + body


class _Reader:
    """Bounds-checked reads of a snapshot body: a short file is corrupt, not a crash."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, layout: struct.Struct) -> tuple[int, ...]:
        if self.position + layout.size > len(self.data):
            raise CorruptSnapshotError(f"snapshot ends inside a field at byte {self.position}")
        fields = layout.unpack_from(self.data, self.position)
        self.position += layout.size
        return fields

    def count(self, item_bytes: int) -> int:
        (value,) = self.take(_COUNT)
        if value < 0 or value * item_bytes > len(self.data) - self.position:
            raise CorruptSnapshotError(f"count {value} does not fit the snapshot")
        return value


def decode_snapshot(
    content: bytes, *, config: ProducerStateConfig | None = None, log_start_offset: int = 0
) -> ProducerState:
    """The state a snapshot holds; CorruptSnapshotError for anything not as written."""
    if len(content) < _PREFIX.size:
        raise CorruptSnapshotError(f"snapshot of {len(content)} bytes has no header")
    version, crc = _PREFIX.unpack_from(content)
    if version != SNAPSHOT_VERSION:
        raise CorruptSnapshotError(f"snapshot version {version}, only {SNAPSHOT_VERSION} is read")
    body = content[_PREFIX.size :]
    if crc32c(body) != crc:
        raise CorruptSnapshotError(f"snapshot CRC32C {crc32c(body):#010x} != stored {crc:#010x}")
    reader = _Reader(body)
    (map_end,) = reader.take(_OFFSET)
    if map_end < log_start_offset:
        raise CorruptSnapshotError(
            f"snapshot offset {map_end} below the log start {log_start_offset}"
        )
    producers = [_read_producer(reader, map_end) for _ in range(reader.count(_PRODUCER.size))]
    unreplicated = [_read_txn(reader, map_end) for _ in range(reader.count(_TXN.size))]
    if reader.position != len(body):
        raise CorruptSnapshotError(f"{len(body) - reader.position} bytes after the snapshot's end")
    ids = [entry.producer_id for entry in producers]
    if ids != sorted(set(ids)):
        raise CorruptSnapshotError("producer ids repeated or out of order")
    state = ProducerState(map_end_offset=map_end, log_start_offset=log_start_offset, config=config)
    open_firsts = [entry.txn_first_offset for entry in producers if entry.has_open_transaction]
    if len(open_firsts) != len(set(open_firsts)):
        raise CorruptSnapshotError("two open transactions start at one offset")
    state._load_entries(producers, unreplicated)
    return state


def _read_producer(reader: _Reader, map_end: int) -> ProducerEntry:
    pid, epoch, coordinator_epoch, last_timestamp, txn_first, flags, count = reader.take(_PRODUCER)
    if pid < 0 or not NO_PRODUCER_EPOCH <= epoch <= EPOCH_MAX or flags & ~_TRANSACTIONAL_FLAG:
        raise CorruptSnapshotError(f"impossible producer {pid} epoch {epoch} flags {flags}")
    if count > BATCHES_RETAINED or not -1 <= txn_first < map_end:
        raise CorruptSnapshotError(f"producer {pid}: {count} batches, transaction at {txn_first}")
    batches = []
    previous_end = -1
    for _ in range(count):
        first_seq, last_seq, first, last, max_timestamp = reader.take(_BATCH)
        if not (-1 <= first_seq <= SEQUENCE_MAX and -1 <= last_seq <= SEQUENCE_MAX):
            raise CorruptSnapshotError(f"producer {pid}: sequences {first_seq}..{last_seq}")
        if not previous_end < first <= last < map_end:
            raise CorruptSnapshotError(f"producer {pid}: batch offsets {first}..{last}")
        previous_end = last
        batches.append(
            BatchMetadata(
                first_sequence=first_seq,
                last_sequence=last_seq,
                first_offset=first,
                last_offset=last,
                max_timestamp=max_timestamp,
            )
        )
    return ProducerEntry(
        producer_id=pid,
        epoch=epoch,
        batches=tuple(batches),
        coordinator_epoch=coordinator_epoch,
        last_timestamp=last_timestamp,
        txn_first_offset=txn_first,
        transactional=bool(flags & _TRANSACTIONAL_FLAG),
    )


def _read_txn(reader: _Reader, map_end: int) -> CompletedTxn:
    pid, first, last, aborted = reader.take(_TXN)
    if pid < 0 or not 0 <= first < last < map_end or aborted > 1:
        raise CorruptSnapshotError(f"impossible decided transaction {pid} {first}..{last}")
    return CompletedTxn(
        producer_id=pid, first_offset=first, last_offset=last, aborted=bool(aborted)
    )


def list_snapshot_offsets(fs: FileSystem, directory: str) -> list[int]:
    """Offsets of the snapshot files in `directory`, oldest first."""
    offsets = []
    for name in fs.listdir(directory):
        stem = name[: -len(SNAPSHOT_SUFFIX)]
        if name.endswith(SNAPSHOT_SUFFIX) and len(stem) == 20 and stem.isdigit():
            offsets.append(int(stem))
    return sorted(offsets)


def write_snapshot(fs: FileSystem, directory: str, state: ProducerState) -> str:
    """Write `state` as `<map end offset>.snapshot`, atomically and durably; its path."""
    path = f"{directory}/{snapshot_file_name(state.map_end_offset)}"
    write_atomically(fs, path, encode_snapshot(state))
    return path


def read_snapshot(
    fs: FileSystem,
    directory: str,
    offset: int,
    *,
    config: ProducerStateConfig | None = None,
    log_start_offset: int = 0,
) -> ProducerState:
    path = f"{directory}/{snapshot_file_name(offset)}"
    handle = fs.open(path, create=False)
    try:
        content = handle.read_at(0, handle.size())
    finally:
        handle.close()
    state = decode_snapshot(content, config=config, log_start_offset=log_start_offset)
    if state.map_end_offset != offset:
        raise CorruptSnapshotError(f"{path} holds the state at offset {state.map_end_offset}")
    return state


def load_latest_snapshot(
    fs: FileSystem,
    directory: str,
    *,
    log_start_offset: int = 0,
    max_offset: int | None = None,
    config: ProducerStateConfig | None = None,
) -> ProducerState | None:
    """The newest snapshot in [log_start_offset, max_offset] that passes every check.

    Each one that fails is logged and deleted (never trusted, never tried again).
    """
    for offset in reversed(list_snapshot_offsets(fs, directory)):
        if offset < log_start_offset or (max_offset is not None and offset > max_offset):
            continue
        try:
            return read_snapshot(
                fs, directory, offset, config=config, log_start_offset=log_start_offset
            )
        except CorruptSnapshotError as error:
            log.warning("%s: producer snapshot %d ignored: %s", directory, offset, error)
            fs.remove(f"{directory}/{snapshot_file_name(offset)}")
    return None


def delete_snapshots(fs: FileSystem, directory: str, keep: Callable[[int], bool]) -> list[int]:
    """Remove the snapshots whose offset `keep` refuses; their offsets."""
    removed = [offset for offset in list_snapshot_offsets(fs, directory) if not keep(offset)]
    for offset in removed:
        fs.remove(f"{directory}/{snapshot_file_name(offset)}")
    if removed:
        fs.sync_dir(directory)
    return removed


# --------------------------------------------------------------------------- the manager


class ProducerStateManager:
    """A partition's producer state kept in step with its log directory's snapshots."""

    def __init__(self, fs: FileSystem, directory: str, state: ProducerState) -> None:
        self.fs = fs
        self.directory = directory
        self.state = state
        # Where the last load or truncation started replaying the log: the aborted
        # transactions it returned are every one whose marker lies at or after it.
        self.replayed_from = state.map_end_offset

    @classmethod
    def load(
        cls,
        fs: FileSystem,
        directory: str,
        *,
        log_start_offset: int,
        log_end_offset: int,
        read_batches: ReadBatches,
        config: ProducerStateConfig | None = None,
    ) -> tuple[ProducerStateManager, list[AbortedTxn]]:
        """The state at the log end: the latest good snapshot, plus the batches after it.

        Returns the aborted transactions the replay met: the transaction indexes of
        the segments it covered can be checked or rebuilt from them.
        """
        self = cls(
            fs,
            directory,
            ProducerState(
                map_end_offset=log_start_offset, log_start_offset=log_start_offset, config=config
            ),
        )
        aborted = self._reload(log_start_offset, log_end_offset, read_batches)
        return self, aborted

    def _reload(self, log_start: int, log_end: int, read_batches: ReadBatches) -> list[AbortedTxn]:
        # A snapshot past the log end describes batches the log no longer holds; one
        # below the log start would need batches it no longer has.
        delete_snapshots(self.fs, self.directory, lambda offset: log_start <= offset <= log_end)
        config = self.state.config
        loaded = load_latest_snapshot(
            self.fs, self.directory, log_start_offset=log_start, max_offset=log_end, config=config
        )
        if loaded is None:
            loaded = ProducerState(
                map_end_offset=log_start, log_start_offset=log_start, config=config
            )
        self.state = loaded
        start = loaded.map_end_offset
        self.replayed_from = start
        aborted = loaded.replay(read_batches(start, log_end)) if start < log_end else []
        if loaded.map_end_offset < log_end:
            # A compacted log may end with a gap the cleaner left; the state covers it.
            loaded.map_end_offset = log_end
        return aborted

    # -- the partition's calls, delegated

    def validate(self, headers: Sequence[BatchHeader], origin: Origin = Origin.CLIENT) -> Outcome:
        return self.state.validate(headers, origin)

    def record(self, header: BatchHeader, marker: EndTxnMarker | None = None) -> AbortedTxn | None:
        return self.state.record(header, marker)

    def last_stable_offset(self, high_watermark: int) -> int:
        return self.state.last_stable_offset(high_watermark)

    def expire(self, now_ms: int) -> list[int]:
        return self.state.expire(now_ms)

    # -- the log's events

    def latest_snapshot_offset(self) -> int | None:
        offsets = list_snapshot_offsets(self.fs, self.directory)
        return offsets[-1] if offsets else None

    def take_snapshot(self) -> bool:
        """Snapshot the state at its map end offset (the new segment's base on a roll),
        unless that snapshot exists. Call it once the batches below are synced."""
        latest = self.latest_snapshot_offset()
        if latest is not None and latest >= self.state.map_end_offset:
            return False
        write_snapshot(self.fs, self.directory, self.state)
        return True

    def truncate_to(self, offset: int, read_batches: ReadBatches) -> list[AbortedTxn]:
        """The log was cut at `offset`: the state of the batches below it, rebuilt from
        the latest snapshot at or below it and the log's batches after that snapshot."""
        if offset >= self.state.map_end_offset:
            return []
        return self._reload(self.state.log_start_offset, offset, read_batches)

    def truncate_start(self, offset: int, *, first_segment_base: int | None = None) -> None:
        """The log start moved to `offset` (DeleteRecords, retention).

        Snapshots below `first_segment_base` (the oldest remaining segment, when
        segments went) are deleted, as Kafka deletes them with their segments; one
        below the new start could not be replayed from anyway. A snapshot of the
        current state is written, so a restart keeps the producers whose batches are
        gone (otherwise they would be forgotten: later batches taken at any sequence).
        """
        self.state.truncate_start(offset)
        floor = offset if first_segment_base is None else min(offset, first_segment_base)
        delete_snapshots(self.fs, self.directory, lambda snapshot: snapshot >= floor)
        self.take_snapshot()

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """The log restarted empty at `offset`: no producer, no snapshot."""
        self.state.clear(offset)
        delete_snapshots(self.fs, self.directory, lambda _: False)


def aborted_transactions_between(
    fs: FileSystem,
    directory: str,
    *,
    log_start_offset: int,
    start_offset: int,
    end_offset: int,
    read_batches: ReadBatches,
    config: ProducerStateConfig | None = None,
) -> list[AbortedTxn]:
    """The aborted transactions whose markers lie in [start_offset, end_offset): what a
    segment's transaction index holds, recovered from the log when it is missing or
    corrupt. Replays from the latest snapshot at or below `start_offset`."""
    state = load_latest_snapshot(
        fs, directory, log_start_offset=log_start_offset, max_offset=start_offset, config=config
    )
    if state is None:
        state = ProducerState(
            map_end_offset=log_start_offset, log_start_offset=log_start_offset, config=config
        )
    replayed = state.replay(read_batches(state.map_end_offset, end_offset))
    return [txn for txn in replayed if start_offset <= txn.last_offset < end_offset]


__all__ = [
    "BATCHES_RETAINED",
    "PRODUCER_ID_EXPIRATION_MS",
    "TRANSACTIONAL_ID_EXPIRATION_MS",
    "BatchMetadata",
    "CompletedTxn",
    "CorruptSnapshotError",
    "EndTxnMarker",
    "LoggedBatch",
    "Origin",
    "Outcome",
    "ProducerEntry",
    "ProducerState",
    "ProducerStateConfig",
    "ProducerStateManager",
    "StateView",
    "Verdict",
    "aborted_transactions_between",
    "assigned_headers",
    "build_marker_batch",
    "decode_snapshot",
    "delete_snapshots",
    "encode_snapshot",
    "in_sequence",
    "list_snapshot_offsets",
    "load_latest_snapshot",
    "log_reader",
    "logged_batches",
    "read_snapshot",
    "write_snapshot",
]
