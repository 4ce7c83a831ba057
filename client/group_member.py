"""One member of a consumer group: join, sync, heartbeat and leave, as Kafka's client does.

    UNJOINED --join--> REBALANCING --sync--> STABLE --(heartbeat says rebalance)--> rejoin

A join is JoinGroup then SyncGroup. A new member's first JoinGroup is refused with
MEMBER_ID_REQUIRED naming its id (KIP-394), and it joins again with it. The member
the coordinator names leader runs the chosen assignor over everyone's subscription
and sends the assignments in its SyncGroup; the others send none. Errors, as Kafka's
client handles them:

- REBALANCE_IN_PROGRESS (a heartbeat, a sync): join again, keeping what it owns.
- ILLEGAL_GENERATION: the generation moved on without this member: its partitions are
  lost (another may have them), and it joins again with its member id.
- UNKNOWN_MEMBER_ID: the coordinator forgot it (its session expired): lost, and it
  joins again as a new member.
- FENCED_INSTANCE_ID: another process took its `group.instance.id` (KIP-345): fatal,
  raised to the application.

The heartbeat task sends a Heartbeat every `heartbeat_interval_ms` while the member is
stable, and leaves the group if the application has not polled for
`max_poll_interval_ms` (its partitions go to the others; its next poll joins again).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

import trio

from client.assignors import ASSIGNORS, Assignor, GroupMemberSubscription
from client.cluster import RETRY_BACKOFF_MS
from client.consumer_protocol import (
    Assignment,
    ConsumerProtocolError,
    Subscription,
    TopicPartition,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from client.group_coordinator_client import GroupCoordinatorClient
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

log = logging.getLogger(__name__)

PROTOCOL_TYPE = "consumer"
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
# Kafka's client waits this much beyond the rebalance timeout for a JoinGroup answer.
JOIN_GRACE_S = 5.0
JOIN_ATTEMPTS_MAX = 20  # one join: a bounded number of refusals before giving up


class MemberState(enum.Enum):
    UNJOINED = "unjoined"
    REBALANCING = "rebalancing"
    STABLE = "stable"


class GroupMember:
    def __init__(
        self,
        coordinator: GroupCoordinatorClient,
        *,
        assignors: Sequence[Assignor],
        group_instance_id: str | None,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        max_poll_interval_ms: int,
    ) -> None:
        if heartbeat_interval_ms >= session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be lower than session_timeout_ms")
        self.coordinator = coordinator
        self.group_id = coordinator.group_id
        self.assignors = list(assignors)
        self.group_instance_id = group_instance_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.max_poll_interval_ms = max_poll_interval_ms
        self.member_id = ""
        self.generation_id = -1
        self.protocol_name: str | None = None
        self.leader_id = ""
        self.state = MemberState.UNJOINED
        self.rejoin_needed = True
        self.lost = False  # what it owned may be another's now; the consumer drops it
        self.fatal: KafkaError | None = None
        self.last_poll = 0.0  # trio's clock; set by every poll and join
        self.rebalances = 0
        self._heartbeats: trio.CancelScope | None = None

    @property
    def cooperative(self) -> bool:
        """KIP-429's protocol only when every assignor offered can do it (as Kafka picks)."""
        return all(a.cooperative for a in self.assignors)

    @property
    def is_leader(self) -> bool:
        return bool(self.member_id) and self.member_id == self.leader_id

    # ------------------------------------------------------------------ joining

    async def join(
        self, topics: Sequence[str], owned: Sequence[TopicPartition]
    ) -> tuple[TopicPartition, ...]:
        """Join (or rejoin) and sync; the partitions this member is given."""
        if self.fatal is not None:
            raise self.fatal
        self.state = MemberState.REBALANCING
        subscription = Subscription(
            topics=tuple(sorted(topics)),
            owned_partitions=tuple(sorted(owned)) if self.cooperative else (),
        )
        metadata = encode_subscription(subscription)
        protocols = tuple(
            kafka.JoinGroupRequest.JoinGroupRequestProtocol(name=a.name, metadata=metadata)
            for a in self.assignors
        )
        for _ in range(JOIN_ATTEMPTS_MAX):
            joined = await self._join_once(protocols)
            if joined is None:
                continue
            assignment = await self._sync(joined)
            if assignment is None:
                await trio.sleep(RETRY_BACKOFF_MS / 1000)
                continue
            self.state = MemberState.STABLE
            self.rejoin_needed = False
            self.rebalances += 1
            self.last_poll = trio.current_time()
            log.info(
                "group %s: member %s generation %d assigned %s",
                self.group_id,
                self.member_id,
                self.generation_id,
                assignment.partitions,
            )
            return assignment.partitions
        raise KafkaError(
            ErrorCode.REBALANCE_IN_PROGRESS,
            f"group {self.group_id}: no join in {JOIN_ATTEMPTS_MAX} attempts",
        )

    async def _join_once(self, protocols: tuple[object, ...]) -> object | None:
        def build(version: int) -> object:
            return kafka.JoinGroupRequest(
                group_id=self.group_id,
                session_timeout_ms=self.session_timeout_ms,
                rebalance_timeout_ms=self.max_poll_interval_ms,
                member_id=self.member_id,
                group_instance_id=self.group_instance_id if version >= 5 else None,
                protocol_type=PROTOCOL_TYPE,
                protocols=protocols,
            )

        try:
            response = await self.coordinator.call(
                build,
                JOIN_GROUP,
                timeout_s=self.max_poll_interval_ms / 1000 + JOIN_GRACE_S,
            )
        except KafkaError as error:
            log.debug("group %s: join as %r: %s", self.group_id, self.member_id, error)
            if error.code == ErrorCode.MEMBER_ID_REQUIRED:
                self.member_id = error.response.member_id  # type: ignore[attr-defined]
                return None
            if self._refused(error):
                await trio.sleep(RETRY_BACKOFF_MS / 1000)
                return None
            raise
        self.member_id = response.member_id
        self.generation_id = response.generation_id
        self.protocol_name = response.protocol_name
        self.leader_id = response.leader
        return response

    def _refused(self, error: KafkaError) -> bool:
        """Whether a join or sync may be tried again after `error` (state adjusted)."""
        if error.code == ErrorCode.FENCED_INSTANCE_ID:
            self.fatal = error
            self.state = MemberState.UNJOINED
            return False
        if error.code == ErrorCode.UNKNOWN_MEMBER_ID:
            self.member_id = ""
            self.generation_id = -1
            return True
        return error.code in (ErrorCode.ILLEGAL_GENERATION, ErrorCode.REBALANCE_IN_PROGRESS)

    async def _sync(self, joined: object) -> Assignment | None:
        assignments: tuple[object, ...] = ()
        if self.is_leader:
            assignments = await self._lead(joined)
        protocol_name = self.protocol_name

        def build(version: int) -> object:
            return kafka.SyncGroupRequest(
                group_id=self.group_id,
                generation_id=self.generation_id,
                member_id=self.member_id,
                group_instance_id=self.group_instance_id if version >= 3 else None,
                protocol_type=PROTOCOL_TYPE if version >= 5 else None,
                protocol_name=protocol_name if version >= 5 else None,
                assignments=assignments,
            )

        try:
            response = await self.coordinator.call(build, SYNC_GROUP)
        except KafkaError as error:
            log.debug(
                "group %s: sync of generation %d: %s", self.group_id, self.generation_id, error
            )
            if self._refused(error):
                return None
            raise
        try:
            return decode_assignment(response.assignment)
        except ConsumerProtocolError as error:
            raise KafkaError(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL, f"group {self.group_id}: {error}"
            ) from None

    async def _lead(self, joined: object) -> tuple[object, ...]:
        """Run the chosen assignor over every member's subscription."""
        assignor = ASSIGNORS.get(self.protocol_name or "")
        if assignor is None:
            raise KafkaError(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                f"group {self.group_id}: the coordinator chose {self.protocol_name!r}",
            )
        members = []
        for member in joined.members:  # type: ignore[attr-defined]
            try:
                subscription = decode_subscription(member.metadata)
            except ConsumerProtocolError as error:
                log.warning("group %s: member %s: %s", self.group_id, member.member_id, error)
                subscription = Subscription(topics=())
            members.append(
                GroupMemberSubscription(member.member_id, member.group_instance_id, subscription)
            )
        wanted = sorted({t for m in members for t in m.subscription.topics})
        cluster = self.coordinator.cluster
        if wanted:
            await cluster.refresh(wanted)
        counts = {t: len(cluster.partitions[t]) for t in wanted if t in cluster.partitions}
        plan = assignor.assign(counts, members)
        Request = kafka.SyncGroupRequest
        return tuple(
            Request.SyncGroupRequestAssignment(
                member_id=member_id, assignment=encode_assignment(Assignment(tuple(partitions)))
            )
            for member_id, partitions in sorted(plan.items())
        )

    # ------------------------------------------------------------------ staying

    def lose(self, *, forget_member_id: bool) -> None:
        self.lost = True
        self.rejoin_needed = True
        self.state = MemberState.UNJOINED
        self.generation_id = -1
        if forget_member_id:
            self.member_id = ""

    def on_group_error(self, error: KafkaError) -> None:
        """What a heartbeat's or a commit's error says about this member."""
        if error.code == ErrorCode.REBALANCE_IN_PROGRESS:
            self.rejoin_needed = True
        elif error.code == ErrorCode.ILLEGAL_GENERATION:
            self.lose(forget_member_id=False)
        elif error.code == ErrorCode.UNKNOWN_MEMBER_ID:
            self.lose(forget_member_id=True)
        elif error.code == ErrorCode.FENCED_INSTANCE_ID:
            self.fatal = error
            self.lose(forget_member_id=True)

    async def heartbeat(self) -> None:
        def build(version: int) -> object:
            return kafka.HeartbeatRequest(
                group_id=self.group_id,
                generation_id=self.generation_id,
                member_id=self.member_id,
                group_instance_id=self.group_instance_id if version >= 3 else None,
            )

        try:
            await self.coordinator.call(build, HEARTBEAT, retry_for_s=self.heartbeat_interval_s)
        except KafkaError as error:
            log.debug("group %s: heartbeat: %s", self.group_id, error)
            self.on_group_error(error)

    def start_heartbeats(self) -> None:
        if self._heartbeats is None:
            self._heartbeats = trio.CancelScope()
            trio.lowlevel.spawn_system_task(self._heartbeat_loop, self._heartbeats)

    async def _heartbeat_loop(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(self.heartbeat_interval_s)
                if self.state is not MemberState.STABLE or self.rejoin_needed:
                    continue
                idle_ms = (trio.current_time() - self.last_poll) * 1000
                try:
                    if idle_ms > self.max_poll_interval_ms:
                        log.warning(
                            "group %s: no poll in %d ms (max_poll_interval_ms): leaving",
                            self.group_id,
                            idle_ms,
                        )
                        await self.leave()
                        self.lost = True
                    else:
                        await self.heartbeat()
                except Exception:  # a system task must not crash the run
                    log.exception("group %s: heartbeat task", self.group_id)

    def stop_heartbeats(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            self._heartbeats = None

    async def leave(self) -> None:
        """LeaveGroup, so the others rebalance at once rather than after a session
        timeout; the next join is as a new member."""
        if self.member_id:

            def build(version: int) -> object:
                if version >= 3:
                    identity = kafka.LeaveGroupRequest.MemberIdentity(
                        member_id=self.member_id, group_instance_id=self.group_instance_id
                    )
                    return kafka.LeaveGroupRequest(group_id=self.group_id, members=(identity,))
                return kafka.LeaveGroupRequest(group_id=self.group_id, member_id=self.member_id)

            try:
                await self.coordinator.call(build, LEAVE_GROUP)
            except KafkaError as error:
                log.info("group %s: leave: %s", self.group_id, error)
        self.member_id = ""
        self.generation_id = -1
        self.state = MemberState.UNJOINED
        self.rejoin_needed = True
