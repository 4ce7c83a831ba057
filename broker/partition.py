"""One partition replica on this broker: its log, its role, and (as leader) its followers.

The controller decides who leads and who is in sync; a Partition only acts on what
the metadata image says, plus the ISR change it has asked for and not yet seen
committed (KIP-497's "maximal ISR": the high-water mark counts the larger set while a
change is in flight, so a shrink never lets it run ahead of a member that may still
be needed, and an expansion counts the newcomer at once).

Everything here runs on the trio thread and never awaits except in `wait_*`, so each
method sees and leaves a consistent state. That is what makes idempotence safe: a
leader's `validate`, `append` and `record` of the producer state happen with no await
between them, so two requests of one producer can never interleave there.

The producer state (`storage.producer_state`) follows the log through every change,
as its contract asks: loaded on open, validated before and recorded after each
leader append, recorded after each follower append, snapshotted when the log rolls a
segment and on close, rebuilt after a truncation, moved with the log start, cleared
when the log restarts empty, and expired on the replica manager's timer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from broker.group_commit import GroupCommit
from broker.partition_transactions import PartitionTransactions
from broker.replica_state import (
    FollowerState,
    high_watermark,
    lagging,
    may_join_isr,
    record_fetch,
)
from client.protocol.errors import ErrorCode, KafkaError
from kraft.metadata.image import PartitionRegistration
from storage.divergence import EpochEnd, diverging_epoch, truncation_offset
from storage.log import AppendInfo, SegmentedLog
from storage.producer_state import (
    NEW,
    ProducerStateConfig,
    ProducerStateManager,
    Verdict,
    assigned_headers,
    delete_snapshots,
    log_reader,
    logged_batches,
)
from storage.records import (
    check_producer_batches,
    iter_batches,
)
from storage.txn_index import LogTxnIndexes

log = logging.getLogger(__name__)

# A gzip batch may inflate to this many times max.message.bytes, no more (a 255 KB
# "gzip bomb" would otherwise cost 250 MB of memory to read).
INFLATION_RATIO_MAX = 32
# What a parked fetch waits for at a partition (`Partition.watch_offset`): followers
# for the log end, consumers for the high-water mark or, read_committed, the LSO.
WATCH_LOG_END, WATCH_HIGH_WATERMARK, WATCH_LAST_STABLE = 0, 1, 2


class Partition(PartitionTransactions):
    def __init__(
        self,
        *,
        topic: str,
        topic_id: str,
        index: int,
        log: SegmentedLog,
        broker_id: int,
        blocking_io: bool = True,
        producer_state_config: ProducerStateConfig | None = None,
        now_wall_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self.topic_id = topic_id
        self.index = index
        self.log = log
        self.broker_id = broker_id
        self.leader_id = -1
        self.leader_epoch = -1
        self.partition_epoch = -1
        self.replicas: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        self.pending_isr: tuple[int, ...] | None = None  # asked of the controller
        self.isr_change_backoff_until_ms = 0  # after a refusal
        self.high_watermark = 0
        self.epoch_start_offset = 0
        self.followers: dict[int, FollowerState] = {}
        self.offline = False
        self.group_commit = GroupCommit(log, blocking_io=blocking_io)
        self.last_flush_ms = 0
        # From the topic's configuration and the metadata's features.
        self.min_insync_replicas = 1
        self.elr_enabled = False
        self.unclean_election = False
        self._changed = trio.Event()
        # Parked fetches (Kafka's DelayedFetch purgatory, keyed by partition): each
        # waiter's event -> what it watches (WATCH_*) and the value it last read.
        self._fetch_watchers: dict[trio.Event, tuple[int, int]] = {}
        self.producer_state, replayed = ProducerStateManager.load(
            log.fs,
            log.directory,
            log_start_offset=log.log_start_offset,
            log_end_offset=log.log_end_offset,
            read_batches=log_reader(log),
            config=producer_state_config,
        )
        if now_wall_ms is not None:
            self.producer_state.expire(now_wall_ms)
        self.txn_indexes = LogTxnIndexes.open(
            log.fs,
            log.directory,
            segment_bases=self._segment_bases(),
            log_end_offset=log.log_end_offset,
            recover=self._recover_aborted,
        )
        # Entries past the last snapshot may not have been synced before a crash: the
        # replay that rebuilt the producer state found every marker there.
        self.txn_indexes.reconcile(self.producer_state.replayed_from, replayed)
        # KIP-890 part 1: producer id -> the verification under way for it (a marker
        # voids it, so a verification that straddles one cannot open a transaction).
        self._verification_guards: dict[int, object] = {}
        self._verification_off_logged = False
        log.on_roll = self._on_roll

    def __repr__(self) -> str:
        return f"{self.topic}-{self.index}"

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.broker_id and not self.offline

    # ------------------------------------------------------------------ metadata

    def apply(self, registration: PartitionRegistration, now_ms: int) -> str:
        """Take the image's view; 'leader', 'follower' or 'isr' for what changed."""
        assert registration.leader_epoch >= self.leader_epoch, (
            f"{self}: leader epoch {registration.leader_epoch} after {self.leader_epoch}"
        )
        new_epoch = registration.leader_epoch != self.leader_epoch
        self.replicas = registration.replicas
        self.isr = registration.isr
        self.partition_epoch = registration.partition_epoch
        if self.pending_isr is not None and (new_epoch or set(self.pending_isr) == set(self.isr)):
            self.pending_isr = None
        if not new_epoch:
            # A smaller ISR may let the high-water mark move; waiters re-check.
            if self.is_leader:
                self._maybe_advance_high_watermark()
            self._notify(everyone=True)
            return "isr"
        self.leader_id = registration.leader
        self.leader_epoch = registration.leader_epoch
        if self.leader_id == self.broker_id:
            self._become_leader(now_ms)
            return "leader"
        self.followers = {}
        self._notify(everyone=True)
        return "follower"

    def _become_leader(self, now_ms: int) -> None:
        # New batches carry the new epoch from the current end on; followers that
        # fetch with an older last epoch learn where theirs diverged from this point.
        self.epoch_start_offset = self.log.log_end_offset
        self.log.epoch_cache.assign(self.leader_epoch, self.epoch_start_offset)
        # Everyone in the ISR starts the epoch caught up; it has lag time to prove it.
        self.followers = {
            replica: FollowerState(last_caught_up_ms=now_ms if replica in self.isr else -1)
            for replica in self.replicas
            if replica != self.broker_id
        }
        self.high_watermark = min(self.high_watermark, self.log.log_end_offset)
        self._maybe_advance_high_watermark()
        self._notify(everyone=True)

    def check_leader_epoch(self, current_leader_epoch: int) -> None:
        """Kafka's rule for a request that names the epoch it thinks is current."""
        if current_leader_epoch < 0:
            return
        if current_leader_epoch < self.leader_epoch:
            raise KafkaError(
                ErrorCode.FENCED_LEADER_EPOCH,
                f"{self}: epoch {current_leader_epoch} < current {self.leader_epoch}",
            )
        if current_leader_epoch > self.leader_epoch:
            raise KafkaError(
                ErrorCode.UNKNOWN_LEADER_EPOCH,
                f"{self}: epoch {current_leader_epoch} > known {self.leader_epoch}",
            )

    def require_leader(self, current_leader_epoch: int) -> None:
        if self.offline:
            raise KafkaError(ErrorCode.KAFKA_STORAGE_ERROR, f"{self} is offline")
        self.check_leader_epoch(current_leader_epoch)
        if not self.is_leader:
            raise KafkaError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER, f"{self}: broker {self.leader_id} leads it"
            )

    # ------------------------------------------------------------------ leader side

    @property
    def maximal_isr(self) -> set[int]:
        return set(self.isr) | set(self.pending_isr or ())

    def append_as_leader(
        self, records: bytes, *, verified: Mapping[int, object] | None = None
    ) -> AppendInfo:
        """A producer's batches: checked as Kafka's LogValidator does, then appended.

        A retry of one of its producer's last batches is answered with the offsets it
        was written at (batch_count 0: nothing is written); a batch out of sequence,
        of a fenced epoch or otherwise refused by the producer state raises KafkaError
        with Kafka's code. `verified` (KIP-890 part 1 on): producer id -> the guard of
        its verification (`begin_verification`); a transactional batch that would
        open a transaction needs a guard no marker has voided since.
        """
        check_producer_batches(
            records,
            inflated_bytes_max=self.log.config.max_message_bytes * INFLATION_RATIO_MAX,
        )
        headers = [header for _, header in iter_batches(records, validate=False)]
        if verified is not None:
            self._check_verified(headers, verified)
        elif not self._verification_off_logged and any(h.is_transactional for h in headers):
            self._verification_off_logged = True
            log.info("%s: transactional batches taken without their coordinator's check", self)
        state = self.producer_state.state
        outcome = state.validate(headers)
        if outcome is not NEW and not outcome.is_new:  # `is NEW`: the usual case, quickly
            if outcome.verdict is Verdict.DUPLICATE:
                assert outcome.duplicate is not None
                batch = outcome.duplicate
                return AppendInfo(
                    batch.first_offset, batch.last_offset, batch.max_timestamp, -1, 0, 0, 0
                )
            raise KafkaError(outcome.verdict.error_code, f"{self}: {outcome.message}")
        # No await from validate to record: nothing else may append in between.
        info = self.log.append(records, self.leader_epoch)
        for header in assigned_headers(headers, info.first_offset, self.leader_epoch):
            state.record(header)
            if header.is_transactional:
                self._verification_guards.pop(header.producer_id, None)  # open now
        self._maybe_advance_high_watermark()  # a lone ISR commits at once
        self._notify()
        return info

    def on_follower_fetch(
        self,
        replica: int,
        fetch_offset: int,
        last_fetched_epoch: int,
        now_ms: int,
        broker_epoch: int = -1,
    ) -> EpochEnd | None:
        """Record a follower's fetch; its divergence point if its log is not a prefix.

        A fetch offset outside the log is not recorded (the caller answers
        OFFSET_OUT_OF_RANGE): a follower's progress vouches for what it holds, and an
        offset past our end would let the high-water mark run past what it holds.
        """
        if replica not in self.replicas:
            return None
        diverging = diverging_epoch(self.log, fetch_offset, last_fetched_epoch)
        if diverging is not None:
            return diverging
        if not self.log.log_start_offset <= fetch_offset <= self.log.log_end_offset:
            return None
        state = self.followers.get(replica)
        if state is None:
            state = self.followers[replica] = FollowerState()
        record_fetch(state, fetch_offset, self.log.log_end_offset, now_ms)
        state.broker_epoch = broker_epoch
        if self._maybe_advance_high_watermark():
            self._notify()
        return None

    def _maybe_advance_high_watermark(self) -> bool:
        if self.elr_enabled and len(self.maximal_isr) < self.min_insync_replicas:
            # KIP-966: replicas that left an ISR this small stay eligible to lead only
            # because nothing more is committed until it is back at the minimum.
            return False
        new = high_watermark(
            self.high_watermark,
            self.log.log_end_offset,
            self.broker_id,
            self.maximal_isr,
            self.followers,
        )
        # Unlike Raft's majority rule, every ISR member holding an entry commits it,
        # whatever its epoch; follower ends are unknown (-1) until each has fetched in
        # this epoch, so nothing commits on a stale view of them.
        new = min(new, self.log.log_end_offset)
        if new > self.high_watermark:
            self.high_watermark = new
            self.producer_state.state.on_high_watermark(new)
            return True
        assert self.high_watermark <= self.log.log_end_offset, (
            f"{self}: high-water mark {self.high_watermark} above log end {self.log.log_end_offset}"
        )
        return False

    def isr_shrink(self, now_ms: int, lag_max_ms: int) -> tuple[int, ...] | None:
        """The ISR without lagging followers, if any lag and no change is in flight."""
        if not self.is_leader or self.pending_isr is not None:
            return None
        out = lagging(self.isr, self.broker_id, self.followers, now_ms, lag_max_ms)
        if not out:
            return None
        return tuple(r for r in self.isr if r not in out)

    def isr_expansion(self) -> tuple[int, ...] | None:
        """The ISR with every follower that has caught up, if any and none in flight."""
        if not self.is_leader or self.pending_isr is not None:
            return None
        joining = [
            replica
            for replica, state in self.followers.items()
            if replica not in self.isr
            and may_join_isr(state, self.high_watermark, self.epoch_start_offset)
        ]
        if not joining:
            return None
        return tuple(r for r in self.replicas if r in self.isr or r in joining)

    def broker_epochs_of(self, members: tuple[int, ...], own_epoch: int) -> tuple[int, ...]:
        """The broker epoch each member last fetched with (KIP-903); -1 if unknown."""
        epochs = []
        for member in members:
            state = self.followers.get(member)
            epochs.append(
                own_epoch if member == self.broker_id else state.broker_epoch if state else -1
            )
        return tuple(epochs)

    # ------------------------------------------------------------------ follower side

    def append_as_follower(self, records: bytes, leader_high_watermark: int) -> None:
        if records:
            self.log.append_as_follower(records)
            # What the leader wrote is recorded as written: nothing is refused here.
            state = self.producer_state
            for header, marker in logged_batches(records):
                self._index_aborted(state.record(header, marker))
        self.update_follower_high_watermark(leader_high_watermark)
        self._notify()

    def update_follower_high_watermark(self, leader_high_watermark: int) -> None:
        new = min(leader_high_watermark, self.log.log_end_offset)
        if new > self.high_watermark:
            self.high_watermark = new
            self.producer_state.state.on_high_watermark(new)

    def truncate_to_divergence(self, diverging: EpochEnd) -> int:
        target = truncation_offset(self.log, diverging)
        self.truncate_as_follower(target)
        return target

    def truncate_as_follower(self, target: int) -> None:
        """Cut our log back to where the leader's agrees with it."""
        if target >= self.log.log_end_offset:
            return
        # Below the high-water mark lies what every ISR member held: a leader from the
        # ISR has it too. Only an unclean election may take it back.
        assert self.unclean_election or target >= self.high_watermark, (
            f"{self}: truncating to {target}, below the high-water mark {self.high_watermark}"
        )
        log.info("%s: truncating from %d to %d", self, self.log.log_end_offset, target)
        self.log.truncate_to(max(target, self.log.log_start_offset))
        self.high_watermark = min(self.high_watermark, self.log.log_end_offset)
        self._producer_state_after_truncation()

    def _producer_state_after_truncation(self) -> None:
        # Also when the log restarted empty at its start (a batch straddled it): the
        # state is then what a snapshot at the start holds, as a reopen would load.
        end = self.log.log_end_offset
        self.producer_state.truncate_to(end, log_reader(self.log))
        self.txn_indexes.truncate_to(end, segment_bases=self._segment_bases())
        if self.log.segments[0].base_offset not in self.txn_indexes.bases:
            self.txn_indexes.restart_at(self.log.segments[0].base_offset)

    def restart_at(self, offset: int) -> None:
        """Behind the leader's log start (retention took what we lack): start over there."""
        log.info("%s: behind the leader's log start, restarting empty at %d", self, offset)
        self.log.truncate_fully_and_start_at(offset)
        self.producer_state.truncate_fully_and_start_at(offset)
        self.txn_indexes.restart_at(offset)
        self.high_watermark = min(self.high_watermark, self.log.log_end_offset)

    def follow_log_start(self, leader_log_start: int) -> None:
        """The leader deleted records (retention, DeleteRecords): so do we."""
        offset = min(leader_log_start, self.log.log_end_offset)
        if offset > self.log.log_start_offset:
            self.log.advance_log_start_offset(offset)
            self._producer_state_after_log_start_move()

    def _producer_state_after_log_start_move(self) -> None:
        self.txn_indexes.drop_below(self.log.segments[0].base_offset)
        self.txn_indexes.flush()  # the snapshot below counts on what it holds
        manager = self.producer_state
        manager.truncate_start(
            self.log.log_start_offset, first_segment_base=self.log.segments[0].base_offset
        )
        # Each move snapshots the state at the log end; inside the active segment only
        # the newest is kept (beside the roll's), so repeated DeleteRecords leave at
        # most two snapshots per segment, not one per call.
        active_base = self.log.active_segment.base_offset
        newest = manager.latest_snapshot_offset()
        if newest is not None:
            delete_snapshots(
                manager.fs,
                manager.directory,
                lambda offset: offset <= active_base or offset >= newest,
            )

    def _on_roll(self, base_offset: int) -> None:
        # Every batch below the new segment was recorded right after its append.
        state = self.producer_state.state
        assert state.map_end_offset == base_offset, (
            f"{self}: producer state at {state.map_end_offset}, new segment at {base_offset}"
        )
        self.txn_indexes.on_roll(base_offset)
        self.producer_state.take_snapshot()

    def expire_producers(self, now_wall_ms: int) -> list[int]:
        """Forget producers idle past producer_id_expiration_ms (see ProducerState)."""
        return self.producer_state.expire(now_wall_ms)

    # ------------------------------------------------------------------ removing data

    def delete_records_before(self, offset: int) -> int:
        """DeleteRecords as leader: the log start moves to `offset` (-1: the high-water
        mark), never past the high-water mark; the new log start."""
        offset = self.high_watermark if offset == -1 else offset
        if not 0 <= offset <= self.high_watermark:
            raise KafkaError(
                ErrorCode.OFFSET_OUT_OF_RANGE, f"{offset} is outside [0, {self.high_watermark}]"
            )
        if offset > self.log.log_start_offset:
            self.log.advance_log_start_offset(offset)
            self._producer_state_after_log_start_move()
        return self.log.log_start_offset

    def enforce_retention(self, now_wall_ms: int) -> int:
        """Segments past retention.ms / retention.bytes, below the high-water mark."""
        deleted = self.log.delete_old_segments(now_wall_ms, max_offset=self.high_watermark)
        if deleted:
            self._producer_state_after_log_start_move()
        return deleted

    def close(self) -> None:
        """This broker no longer holds the partition (or is stopping)."""
        self.offline = True
        self._notify(everyone=True)
        self.log.close()
        self.txn_indexes.close()
        # A clean stop restarts from here without replaying the active segment.
        self.producer_state.take_snapshot()

    # ------------------------------------------------------------------ durability

    def flush_due(self) -> bool:
        """Does the topic's flush.messages want the appends so far synced now?"""
        every = self.log.config.flush_messages
        return every is not None and self.log.unflushed_records >= every

    async def wait_durable(self, end_offset: int, now_ms: int) -> None:
        await self.group_commit.wait_durable(end_offset)
        self.last_flush_ms = now_ms

    def last_fetched_epoch(self) -> int:
        if self.log.log_end_offset == self.log.log_start_offset:
            return -1
        return self.log.latest_epoch()

    # ------------------------------------------------------------------ waiting

    def _notify(self, *, everyone: bool = False) -> None:
        """Something changed: wake `wait_committed`, and the parked fetches whose
        watched offset moved (`everyone`: all of them, for a leadership change, an ISR
        change or the partition going offline)."""
        self._changed.set()
        self._changed = trio.Event()
        if self._fetch_watchers:
            self._wake_fetches(everyone)

    def _wake_fetches(self, everyone: bool) -> None:
        watchers = self._fetch_watchers
        if everyone:
            woken = list(watchers)
        else:
            log_end, hwm, lso = self.log.log_end_offset, self.high_watermark, -1
            woken = []
            for event, (what, seen) in watchers.items():
                if what == WATCH_LOG_END:
                    now = log_end
                elif what == WATCH_HIGH_WATERMARK:
                    now = hwm
                else:
                    if lso < 0:
                        lso = self.last_stable_offset
                    now = lso
                if now != seen:
                    woken.append(event)
        for event in woken:
            del watchers[event]
            event.set()

    def watch_offset(self, event: trio.Event, what: int) -> None:
        """Set `event` once the offset `what` (WATCH_*) moves from its value now, or at
        a leadership or ISR change, or when the partition goes offline. A fetch parks
        with one event on each partition it reads, so only those partitions wake it."""
        if what == WATCH_LOG_END:
            seen = self.log.log_end_offset
        elif what == WATCH_HIGH_WATERMARK:
            seen = self.high_watermark
        else:
            seen = self.last_stable_offset
        self._fetch_watchers[event] = (what, seen)

    def unwatch(self, event: trio.Event) -> None:
        self._fetch_watchers.pop(event, None)

    async def wait_change(self) -> None:
        await self._changed.wait()

    async def wait_committed(self, offset: int, leader_epoch: int) -> None:
        """Until the high-water mark passes `offset`; KafkaError if leadership moves."""
        while self.high_watermark <= offset:
            if self.leader_epoch != leader_epoch or not self.is_leader:
                raise KafkaError(
                    ErrorCode.NOT_LEADER_OR_FOLLOWER,
                    f"{self}: leadership moved before offset {offset} was replicated",
                )
            await self._changed.wait()
