"""The consumer's side of a group (Kafka's ConsumerCoordinator): subscriptions, the
rebalance listener, positions from committed offsets, and commits.

`Consumer.poll` calls `maintain()` first, so a rebalance completes inside a poll, as in
Kafka's Java consumer:

- eager assignors (range, roundrobin): before joining, everything owned is committed
  (with auto-commit) and revoked (`on_revoked`); the new assignment is `on_assigned`.
- cooperative-sticky (KIP-429): the member joins still owning its partitions and keeps
  consuming them; afterwards only what it lost is committed and revoked, what it gained
  is `on_assigned`, and when something was revoked it joins once more, so that the
  partition's new owner gets it in the following generation.
- partitions lost (the member's session expired, its generation is gone) are not
  committed: `on_lost`, or `on_revoked` for a listener without one.

A gained partition starts at its committed offset, or by `auto_offset_reset` when the
group has none; a seek inside `on_assigned` wins over both.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from client.assignors import assignors_named
from client.consumer_protocol import TopicPartition
from client.group_coordinator_client import CommitFailed, GroupCoordinatorClient
from client.group_member import GroupMember, MemberState
from client.protocol.errors import ErrorCode, KafkaError

if TYPE_CHECKING:
    from client.consumer import Consumer

log = logging.getLogger(__name__)

# One poll finishes a rebalance and, for cooperative assignors, the one that follows.
REBALANCES_PER_POLL = 3
CommitCallback = Callable[[dict[TopicPartition, int], BaseException | None], Any]


class ConsumerCoordinator:
    def __init__(
        self,
        consumer: Consumer,
        *,
        group_id: str,
        group_instance_id: str | None,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        max_poll_interval_ms: int,
        partition_assignment_strategy: Iterable[str],
        enable_auto_commit: bool,
        auto_commit_interval_ms: int,
    ) -> None:
        self.consumer = consumer
        self.offsets = GroupCoordinatorClient(consumer.cluster, group_id)
        self.member = GroupMember(
            self.offsets,
            assignors=assignors_named(list(partition_assignment_strategy)),
            group_instance_id=group_instance_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms,
        )
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.topics: tuple[str, ...] = ()
        self.pattern: re.Pattern[str] | None = None
        self.listener: Any = None
        self.subscribed = False
        self.owned: set[TopicPartition] = set()
        self._joined_topics: tuple[str, ...] = ()
        self._topics_checked_at = -1e9
        self._committed: dict[TopicPartition, int] = {}
        self._next_auto_commit: float | None = None  # the first poll sets it
        self._commit_lock = trio.Lock()

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, topics: Iterable[str] | str | re.Pattern[str], listener: Any) -> None:
        if isinstance(topics, re.Pattern):
            self.pattern, self.topics = topics, ()
        elif isinstance(topics, str):
            raise TypeError("subscribe takes a list of topics or a compiled pattern")
        else:
            self.pattern, self.topics = None, tuple(sorted(set(topics)))
            if not self.topics:
                raise ValueError("subscribe to at least one topic (or unsubscribe)")
        self.listener = listener
        if self.subscribed:
            self.member.rejoin_needed = True
        self.subscribed = True
        self._topics_checked_at = -1e9
        self.member.start_heartbeats()

    async def unsubscribe(self) -> None:
        if not self.subscribed:
            return
        await self._revoke_all()
        await self.member.leave()
        self.member.stop_heartbeats()
        self.subscribed = False
        self.topics, self.pattern = (), None

    @property
    def needs_rejoin(self) -> bool:
        return self.subscribed and (self.member.rejoin_needed or self.member.fatal is not None)

    async def _subscribed_topics(self) -> tuple[str, ...]:
        if self.pattern is None:
            return self.topics
        self._topics_checked_at = trio.current_time()
        response = await self.consumer.cluster.refresh(None)
        return tuple(
            sorted(
                t.name
                for t in response.topics
                if t.error_code == ErrorCode.NONE
                and not t.name.startswith("__")  # internal topics, as Kafka leaves them out
                and self.pattern.fullmatch(t.name)
            )
        )

    # ------------------------------------------------------------------ each poll

    async def maintain(self) -> None:
        """Before a poll fetches: raise a fatal error, auto-commit what the last poll
        returned, rejoin if the group rebalances."""
        member = self.member
        member.last_poll = trio.current_time()
        if member.fatal is not None:
            raise member.fatal
        await self._maybe_auto_commit()
        if not self.subscribed:
            return
        pattern_due = trio.current_time() - self._topics_checked_at > (
            self.consumer.cluster.metadata_max_age_s
        )
        if (
            self.pattern is not None
            and member.state is MemberState.STABLE
            and pattern_due
            and await self._subscribed_topics() != self._joined_topics
        ):
            member.rejoin_needed = True
        for _ in range(REBALANCES_PER_POLL):
            if member.lost:
                await self._drop_lost()
            if not member.rejoin_needed:
                break
            try:
                await self._rebalance()
            except KafkaError as error:
                if not error.retriable:
                    raise
                # The coordinator stayed away for a whole request timeout: this poll
                # returns nothing, and the next one tries again (as Java's keeps on).
                log.warning("group %s: rebalance: %s", member.group_id, error)
                return

    async def _rebalance(self) -> None:
        member = self.member
        if not member.cooperative and self.owned:
            await self._revoke_all()
        topics = await self._subscribed_topics()
        given = set(await member.join(topics, sorted(self.owned)))
        self._joined_topics = topics
        added = given - self.owned
        revoked = self.owned - given
        if revoked:  # cooperative only: eager revoked everything before joining
            if self.enable_auto_commit:
                await self._commit_quietly(self.consumer.consumed_positions(revoked))
            await self._call("on_revoked", revoked)
            member.rejoin_needed = True
        self.owned = given
        self.consumer.assign_owned(sorted(given))
        if added:
            committed = await self.offsets.fetch_offsets(sorted(added))
            for tp, offset in committed.items():
                self._committed.pop(tp, None)
                if offset is not None:
                    self.consumer.seek(tp, offset)
                    self._committed[tp] = offset
        await self._call("on_assigned", added)

    async def _revoke_all(self) -> None:
        owned, self.owned = self.owned, set()
        if owned:
            if self.enable_auto_commit:
                await self._commit_quietly(self.consumer.consumed_positions(owned))
            await self._call("on_revoked", owned)
        self.consumer.assign_owned([])

    async def _drop_lost(self) -> None:
        lost, self.owned = self.owned, set()
        self.member.lost = False
        self.consumer.assign_owned([])
        if lost:
            name = "on_lost" if hasattr(self.listener, "on_lost") else "on_revoked"
            await self._call(name, lost)

    async def _call(self, name: str, partitions: Iterable[TopicPartition]) -> None:
        callback = getattr(self.listener, name, None)
        if callback is None:
            return
        result = callback(sorted(partitions))
        if inspect.isawaitable(result):
            await result

    # ------------------------------------------------------------------ commits

    async def _maybe_auto_commit(self) -> None:
        if not self.enable_auto_commit:
            return
        if self._next_auto_commit is None:
            self._next_auto_commit = trio.current_time() + self.auto_commit_interval_s
        if trio.current_time() < self._next_auto_commit:
            return
        self._next_auto_commit = trio.current_time() + self.auto_commit_interval_s
        if self.subscribed and self.member.state is not MemberState.STABLE:
            return
        await self._commit_quietly(self.consumer.consumed_positions())

    async def _commit_quietly(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A commit the application did not ask for: a failure is logged (what it
        covers will be read again: at-least-once)."""
        try:
            await self.commit(offsets)
        except KafkaError as error:
            log.warning("group %s: auto-commit failed: %s", self.offsets.group_id, error)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit `offsets` (the next offset to read, per partition), or every
        position this consumer has; CommitFailed if the group moved on."""
        wanted = dict(self.consumer.consumed_positions() if offsets is None else offsets)
        wanted = {tp: o for tp, o in wanted.items() if self._committed.get(tp) != o}
        if not wanted:
            return
        member = self.member
        async with self._commit_lock:
            if self.subscribed:
                if member.state is not MemberState.STABLE:
                    raise CommitFailed(
                        ErrorCode.REBALANCE_IN_PROGRESS,
                        f"group {member.group_id}: not a member of a generation now",
                    )
                generation, member_id = member.generation_id, member.member_id
            else:
                generation, member_id = -1, ""
            try:
                await self.offsets.commit_offsets(
                    wanted,
                    generation_id=generation,
                    member_id=member_id,
                    group_instance_id=member.group_instance_id if self.subscribed else None,
                )
            except CommitFailed as error:
                if self.subscribed:
                    member.on_group_error(error)
                raise
            self._committed.update(wanted)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        callback: CommitCallback | None = None,
    ) -> None:
        wanted = dict(self.consumer.consumed_positions() if offsets is None else offsets)

        async def run() -> None:
            error: BaseException | None = None
            try:
                await self.commit(wanted)
            except Exception as failure:  # given to the callback, not raised
                error = failure
                log.info("group %s: async commit failed: %s", self.offsets.group_id, failure)
            if callback is not None:
                try:
                    callback(wanted, error)
                except Exception:
                    log.exception("group %s: commit callback", self.offsets.group_id)

        trio.lowlevel.spawn_system_task(run)

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        return await self.offsets.fetch_offsets(sorted(set(partitions)))

    async def close(self) -> None:
        """A last auto-commit, revoke, leave (a static member does not: it keeps its
        place for its session timeout, KIP-345)."""
        try:
            if self.enable_auto_commit and (
                not self.subscribed or self.member.state is MemberState.STABLE
            ):
                await self._commit_quietly(self.consumer.consumed_positions())
            if self.subscribed:
                owned, self.owned = self.owned, set()
                if owned:
                    await self._call("on_revoked", owned)
                if self.member.group_instance_id is None:
                    await self.member.leave()
        finally:
            self.member.stop_heartbeats()
            await self.offsets.forget()
