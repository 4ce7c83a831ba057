"""A broker's life as the controller sees it: register, heartbeat, unfence, shut down.

Kafka's BrokerLifecycleManager: register with a fresh incarnation id, take the
broker epoch the controller gives (the offset of the registration record), then
heartbeat every `broker_heartbeat_interval_ms` with how far this node has replayed
the metadata log. The controller unfences the broker once that reaches its own
registration. A STALE_BROKER_EPOCH answer means this incarnation was replaced or
forgotten: register again. Controlled shutdown is a heartbeat flag; the broker
stops once the controller says it leads nothing.
"""

from __future__ import annotations

import enum
import logging
import uuid
from typing import Any

import trio

from broker.controller_channel import ControllerChannel
from client.protocol import environment
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.schema import from_body, to_body
from kraft.controller.cluster import (
    BrokerHeartbeatOutcome,
    BrokerHeartbeatRequest,
    BrokerRegistrationOutcome,
    BrokerRegistrationRequest,
)
from kraft.metadata.loader import MetadataLoader
from kraft.metadata.records import Listener

log = logging.getLogger(__name__)

REGISTRATION_RETRY_S = 0.2


class BrokerState(enum.Enum):
    STARTING = "starting"
    FENCED = "fenced"  # registered, catching up with the metadata log
    RUNNING = "running"  # unfenced: may lead and follow partitions
    PENDING_CONTROLLED_SHUTDOWN = "pending_controlled_shutdown"
    SHUTTING_DOWN = "shutting_down"


class BrokerLifecycle:
    def __init__(
        self,
        *,
        broker_id: int,
        listeners: tuple[Listener, ...],
        rack: str | None,
        channel: ControllerChannel,
        loader: MetadataLoader,
        heartbeat_interval_ms: int,
        request_timeout_ms: int,
        previous_broker_epoch: int = -1,
    ) -> None:
        self.broker_id = broker_id
        self.listeners = listeners
        self.rack = rack
        self.channel = channel
        self.loader = loader
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.request_timeout_s = request_timeout_ms / 1000
        self.incarnation_id = uuid.UUID(int=environment.current().new_rng().getrandbits(128)).hex
        self.state = BrokerState.STARTING
        self.broker_epoch = -1
        # What the first registration reports of the last shutdown (-1: unclean); a
        # later one in this process reports its own epoch, its logs being intact.
        self.previous_broker_epoch = previous_broker_epoch
        self.registrations = 0
        self._wake = trio.Event()
        self._shutdown_wanted = False
        self.shut_down_allowed = trio.Event()
        self.unfenced = trio.Event()

    async def run(self) -> None:
        while True:
            await self._register()
            await self._heartbeat_while_current()

    async def controlled_shutdown(self, timeout_s: float) -> bool:
        """Ask the controller to move leaderships away; True once it says we lead nothing."""
        if self.state is BrokerState.STARTING:
            return True
        self._shutdown_wanted = True
        self.state = BrokerState.PENDING_CONTROLLED_SHUTDOWN
        self._wake.set()
        with trio.move_on_after(timeout_s):
            await self.shut_down_allowed.wait()
            self.state = BrokerState.SHUTTING_DOWN
            return True
        return False

    async def _call(self, api_key: ApiKey, request: Any) -> Any:
        return await self.channel.request(
            api_key, to_body(request), timeout_s=self.request_timeout_s
        )

    async def _register(self) -> None:
        request = BrokerRegistrationRequest(
            broker_id=self.broker_id,
            incarnation_id=self.incarnation_id,
            listeners=self.listeners,
            rack=self.rack,
            previous_broker_epoch=(
                self.broker_epoch if self.registrations else self.previous_broker_epoch
            ),
        )
        while True:
            try:
                outcome = from_body(
                    BrokerRegistrationOutcome,
                    await self._call(ApiKey.BROKER_REGISTRATION, request),
                )
            except KafkaError as error:
                log.info("broker %d: registration failed: %s", self.broker_id, error)
                await trio.sleep(REGISTRATION_RETRY_S)
                continue
            if outcome.error_code == ErrorCode.NONE:
                self.broker_epoch = outcome.broker_epoch
                self.registrations += 1
                self.state = BrokerState.FENCED
                log.info("broker %d: registered with epoch %d", self.broker_id, self.broker_epoch)
                return
            # DUPLICATE_BROKER_REGISTRATION: our previous incarnation's session has not
            # run out yet; it will.
            log.info("broker %d: registration refused: %s", self.broker_id, outcome)
            await trio.sleep(REGISTRATION_RETRY_S)

    async def _heartbeat_while_current(self) -> None:
        while True:
            request = BrokerHeartbeatRequest(
                broker_id=self.broker_id,
                broker_epoch=self.broker_epoch,
                current_metadata_offset=self.loader.next_offset - 1,
                want_shutdown=self._shutdown_wanted,
            )
            try:
                outcome = from_body(
                    BrokerHeartbeatOutcome, await self._call(ApiKey.BROKER_HEARTBEAT, request)
                )
            except KafkaError as error:
                log.info("broker %d: heartbeat failed: %s", self.broker_id, error)
                outcome = None
            if outcome is not None:
                if outcome.error_code == ErrorCode.STALE_BROKER_EPOCH:
                    log.warning("broker %d: epoch %d is stale", self.broker_id, self.broker_epoch)
                    self.state = BrokerState.STARTING
                    self.unfenced = trio.Event()
                    return
                self._on_heartbeat(outcome)
            # Heartbeat sooner while waiting to be unfenced or let go, and after one
            # that no controller answered (its controller paused or replaced): Kafka's
            # lifecycle manager retries a failed heartbeat after a backoff, not an interval.
            interval = self.heartbeat_interval_s
            if self.state is not BrokerState.RUNNING or outcome is None:
                interval = min(interval, 0.1)
            with trio.move_on_after(interval):
                await self._wake.wait()
            self._wake = trio.Event()

    def _on_heartbeat(self, outcome: BrokerHeartbeatOutcome) -> None:
        if outcome.error_code != ErrorCode.NONE:
            log.info("broker %d: heartbeat answered %s", self.broker_id, outcome)
            return
        if outcome.should_shut_down:
            self.shut_down_allowed.set()
        if self._shutdown_wanted:
            return
        if outcome.is_fenced:
            if self.state is BrokerState.RUNNING:
                log.warning("broker %d: fenced by the controller", self.broker_id)
                self.unfenced = trio.Event()
            self.state = BrokerState.FENCED
        else:
            if self.state is not BrokerState.RUNNING:
                log.info("broker %d: unfenced", self.broker_id)
            self.state = BrokerState.RUNNING
            self.unfenced.set()
