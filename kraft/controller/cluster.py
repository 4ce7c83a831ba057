"""Broker registration, heartbeats and liveness (Kafka's ClusterControlManager).

A broker registers and gets as its broker epoch the offset of its registration
record, which fences every older incarnation: a request stamped with another epoch is
refused with STALE_BROKER_EPOCH. It starts fenced, and is unfenced by a heartbeat once
it has replayed the metadata log up to its own registration. One that misses heartbeats
for `broker_session_timeout_ms` is fenced and loses its leaderships and ISR places.

Sessions are soft state of the active controller, not metadata: a controller that
takes over gives every broker a fresh session before it judges anyone
(`BrokerSessions.start_all`), so a failover never fences the whole cluster.
"""

from __future__ import annotations

import attrs

from client.protocol.errors import ErrorCode
from kraft.controller.replication import (
    ControllerResult,
    elect_for_returning_broker,
    move_away_from,
    remove_unclean_replica,
)
from kraft.metadata.image import MetadataImage, replay
from kraft.metadata.records import (
    BrokerRegistrationChangeRecord,
    Listener,
    MetadataRecord,
    RegisterBrokerRecord,
)

# Kafka's broker.session.timeout.ms and broker.heartbeat.interval.ms.
BROKER_SESSION_TIMEOUT_MS = 9_000
BROKER_HEARTBEAT_INTERVAL_MS = 2_000


@attrs.frozen(kw_only=True)
class BrokerRegistrationRequest:
    broker_id: int
    incarnation_id: str
    listeners: tuple[Listener, ...]
    rack: str | None = None
    # KIP-966: the broker epoch this node had when it last shut down cleanly, from its
    # clean-shutdown marker; -1 when it did not (it may have lost unsynced writes).
    previous_broker_epoch: int = -1


@attrs.frozen(kw_only=True)
class BrokerRegistrationOutcome:
    error_code: int
    broker_epoch: int = -1
    message: str = ""


@attrs.frozen(kw_only=True)
class BrokerHeartbeatRequest:
    broker_id: int
    broker_epoch: int
    current_metadata_offset: int
    want_fence: bool = False
    want_shutdown: bool = False


@attrs.frozen(kw_only=True)
class BrokerHeartbeatOutcome:
    error_code: int
    is_caught_up: bool = False
    is_fenced: bool = True
    should_shut_down: bool = False
    message: str = ""


class BrokerSessions:
    """When each broker was last heard from (the active controller's soft state)."""

    def __init__(self, session_timeout_ms: int = BROKER_SESSION_TIMEOUT_MS) -> None:
        self.session_timeout_ms = session_timeout_ms
        self._last_heard_ms: dict[int, int] = {}

    def start_all(self, image: MetadataImage, now_ms: int) -> None:
        """A new active controller: every registered broker starts a fresh session now."""
        self._last_heard_ms = dict.fromkeys(image.brokers, now_ms)

    def touch(self, broker_id: int, now_ms: int) -> None:
        self._last_heard_ms[broker_id] = now_ms

    def is_alive(self, broker_id: int, now_ms: int) -> bool:
        heard = self._last_heard_ms.get(broker_id)
        return heard is not None and now_ms - heard <= self.session_timeout_ms

    def expired(self, image: MetadataImage, now_ms: int) -> list[int]:
        return [b for b in image.unfenced_brokers() if not self.is_alive(b, now_ms)]


def _chain(image: MetadataImage, records: list[MetadataRecord]) -> MetadataImage:
    """The image these records would make: later decisions in one batch build on it."""
    return replay(image, [(image.offset + 1 + i, r) for i, r in enumerate(records)])


def register_broker(
    image: MetadataImage,
    request: BrokerRegistrationRequest,
    record_offset: int,
    sessions: BrokerSessions,
    now_ms: int,
) -> ControllerResult:
    """`record_offset` is where the registration record will land: the new broker epoch."""
    current = image.brokers.get(request.broker_id)
    if current is not None and current.incarnation_id == request.incarnation_id:
        # A retry of a registration that already committed: same answer, no new epoch.
        sessions.touch(request.broker_id, now_ms)
        outcome = BrokerRegistrationOutcome(
            error_code=ErrorCode.NONE, broker_epoch=current.broker_epoch
        )
        return ControllerResult(records=(), response=outcome)
    if current is not None and sessions.is_alive(request.broker_id, now_ms):
        return ControllerResult(
            records=(),
            response=BrokerRegistrationOutcome(
                error_code=ErrorCode.DUPLICATE_BROKER_REGISTRATION,
                message=f"broker {request.broker_id} is registered by another live process",
            ),
        )
    records: list[MetadataRecord] = []
    if current is not None and not current.fenced:
        # The old incarnation died without being fenced yet: its leaderships go first.
        records += move_away_from(image, request.broker_id)
    clean = current is not None and request.previous_broker_epoch == current.broker_epoch
    if not clean:
        records += remove_unclean_replica(_chain(image, records), request.broker_id)
    records.append(
        RegisterBrokerRecord(
            broker_id=request.broker_id,
            broker_epoch=record_offset + len(records),
            incarnation_id=request.incarnation_id,
            listeners=request.listeners,
            rack=request.rack,
            fenced=True,
        )
    )
    sessions.touch(request.broker_id, now_ms)
    epoch = record_offset + len(records) - 1
    return ControllerResult(
        records=tuple(records),
        response=BrokerRegistrationOutcome(error_code=ErrorCode.NONE, broker_epoch=epoch),
    )


def heartbeat(
    image: MetadataImage, request: BrokerHeartbeatRequest, sessions: BrokerSessions, now_ms: int
) -> ControllerResult:
    registration = image.brokers.get(request.broker_id)
    if registration is None or registration.broker_epoch != request.broker_epoch:
        return ControllerResult(
            records=(),
            response=BrokerHeartbeatOutcome(
                error_code=ErrorCode.STALE_BROKER_EPOCH,
                message=f"broker {request.broker_id} epoch {request.broker_epoch} is not current",
            ),
        )
    sessions.touch(request.broker_id, now_ms)
    broker_id, epoch = request.broker_id, request.broker_epoch
    caught_up = request.current_metadata_offset >= registration.broker_epoch
    records: list[MetadataRecord] = []
    fenced = registration.fenced
    if request.want_shutdown:
        if not registration.in_controlled_shutdown:
            records.append(
                BrokerRegistrationChangeRecord(
                    broker_id=broker_id, broker_epoch=epoch, in_controlled_shutdown=True
                )
            )
        records += move_away_from(_chain(image, records), broker_id)
    elif request.want_fence and not fenced:
        records.append(
            BrokerRegistrationChangeRecord(broker_id=broker_id, broker_epoch=epoch, fenced=True)
        )
        records += move_away_from(_chain(image, records), broker_id)
        fenced = True
    elif fenced and caught_up and not request.want_fence:
        records.append(
            BrokerRegistrationChangeRecord(broker_id=broker_id, broker_epoch=epoch, fenced=False)
        )
        records += elect_for_returning_broker(_chain(image, records), broker_id)
        fenced = False
    after = _chain(image, records)
    leads_nothing = not any(
        part.leader == broker_id
        for topic in after.topics.values()
        for part in topic.partitions.values()
    )
    return ControllerResult(
        records=tuple(records),
        response=BrokerHeartbeatOutcome(
            error_code=ErrorCode.NONE,
            is_caught_up=caught_up,
            is_fenced=fenced,
            should_shut_down=request.want_shutdown and leads_nothing,
        ),
    )


def fence_expired_brokers(
    image: MetadataImage, sessions: BrokerSessions, now_ms: int
) -> ControllerResult:
    """Fence every unfenced broker whose session ran out, moving its leaderships."""
    records: list[MetadataRecord] = []
    fenced = []
    for broker_id in sessions.expired(image, now_ms):
        epoch = _chain(image, records).brokers[broker_id].broker_epoch
        records.append(
            BrokerRegistrationChangeRecord(broker_id=broker_id, broker_epoch=epoch, fenced=True)
        )
        records += move_away_from(_chain(image, records), broker_id)
        fenced.append(broker_id)
    return ControllerResult(records=tuple(records), response=tuple(fenced))
