"""Broker registration, heartbeats, session fencing and controlled shutdown."""

from __future__ import annotations

import random

from client.protocol.errors import ErrorCode
from kraft.controller.cluster import (
    BrokerHeartbeatRequest,
    BrokerRegistrationRequest,
    BrokerSessions,
    fence_expired_brokers,
    heartbeat,
    register_broker,
)
from kraft.controller.replication import CreateTopic, create_topics
from kraft.metadata.image import EMPTY_IMAGE, MetadataImage, replay
from kraft.metadata.records import Listener

SESSION_MS = 9_000


def commit(image: MetadataImage, result) -> MetadataImage:
    return replay(image, [(image.offset + 1 + i, r) for i, r in enumerate(result.records)])


def register(
    image: MetadataImage, sessions: BrokerSessions, broker_id: int, now: int, incarnation: str = "a"
):
    request = BrokerRegistrationRequest(
        broker_id=broker_id,
        incarnation_id=f"{incarnation}-{broker_id}",
        listeners=(Listener(name="PLAINTEXT", host="127.0.0.1", port=9090 + broker_id),),
    )
    result = register_broker(image, request, image.offset + 1, sessions, now)
    return commit(image, result), result.response


def beat(image, sessions, broker_id, now, **flags):
    reg = image.brokers[broker_id]
    request = BrokerHeartbeatRequest(
        broker_id=broker_id,
        broker_epoch=reg.broker_epoch,
        current_metadata_offset=image.offset,
        **flags,
    )
    result = heartbeat(image, request, sessions, now)
    return commit(image, result), result.response


def running_cluster(now: int = 0):
    sessions = BrokerSessions(SESSION_MS)
    image = EMPTY_IMAGE
    for broker_id in (1, 2, 3):
        image, outcome = register(image, sessions, broker_id, now)
        assert outcome.error_code == ErrorCode.NONE
        assert image.brokers[broker_id].broker_epoch == outcome.broker_epoch == image.offset
        assert image.brokers[broker_id].fenced
    for broker_id in (1, 2, 3):
        image, outcome = beat(image, sessions, broker_id, now)
        assert outcome.is_caught_up and not outcome.is_fenced
    image = commit(
        image,
        create_topics(
            image, [CreateTopic(name="t", partitions=3, replication_factor=3)], random.Random(2)
        ),
    )
    return image, sessions


def test_registration_epochs_retries_and_duplicates() -> None:
    image, sessions = running_cluster()
    epoch = image.brokers[2].broker_epoch
    again, outcome = register(image, sessions, 2, now=10)  # a retry of the same incarnation
    assert again == image and outcome.broker_epoch == epoch
    _, duplicate = register(image, sessions, 2, now=10, incarnation="b")
    assert duplicate.error_code == ErrorCode.DUPLICATE_BROKER_REGISTRATION
    later = SESSION_MS + 100  # the old process is silent: a new one may take the id
    image, outcome = register(image, sessions, 2, now=later, incarnation="b")
    assert outcome.error_code == ErrorCode.NONE and outcome.broker_epoch > epoch
    assert image.brokers[2].fenced
    assert all(p.leader != 2 for p in image.topic("t").partitions.values())


def test_a_stale_epoch_is_refused_and_a_lagging_broker_stays_fenced() -> None:
    sessions = BrokerSessions(SESSION_MS)
    image, _ = register(EMPTY_IMAGE, sessions, 1, now=0)
    stale = BrokerHeartbeatRequest(
        broker_id=1, broker_epoch=image.brokers[1].broker_epoch + 1, current_metadata_offset=99
    )
    assert heartbeat(image, stale, sessions, 0).response.error_code == ErrorCode.STALE_BROKER_EPOCH
    behind = BrokerHeartbeatRequest(
        broker_id=1, broker_epoch=image.brokers[1].broker_epoch, current_metadata_offset=-1
    )
    result = heartbeat(image, behind, sessions, 0)
    assert result.records == () and result.response.is_fenced and not result.response.is_caught_up


def test_a_silent_broker_is_fenced_and_loses_its_leaderships() -> None:
    image, sessions = running_cluster()
    led_by_3 = [i for i, p in image.topic("t").partitions.items() if p.leader == 3]
    assert led_by_3
    for broker_id in (1, 2):
        image, _ = beat(image, sessions, broker_id, now=SESSION_MS + 1)
    result = fence_expired_brokers(image, sessions, SESSION_MS + 1)
    assert result.response == (3,)
    image = commit(image, result)
    assert image.brokers[3].fenced
    for index in led_by_3:
        part = image.topic("t").partitions[index]
        assert part.leader in (1, 2) and 3 not in part.isr


def test_a_new_controller_gives_every_broker_a_fresh_session() -> None:
    image, _ = running_cluster(now=0)
    successor = BrokerSessions(SESSION_MS)  # knows nothing of the old sessions
    successor.start_all(image, now_ms=60_000)
    assert fence_expired_brokers(image, successor, 60_000 + SESSION_MS).records == ()
    assert fence_expired_brokers(image, successor, 60_000 + SESSION_MS + 1).response == (
        1,
        2,
        3,
    )


def test_controlled_shutdown_moves_leadership_before_the_broker_stops() -> None:
    image, sessions = running_cluster()
    assert any(p.leader == 1 for p in image.topic("t").partitions.values())
    image, outcome = beat(image, sessions, 1, now=5, want_shutdown=True)
    assert image.brokers[1].in_controlled_shutdown
    assert all(p.leader != 1 for p in image.topic("t").partitions.values())
    assert outcome.should_shut_down


def test_a_fenced_broker_returns_and_leads_its_leaderless_partitions_again() -> None:
    image, sessions = running_cluster()
    image, _ = beat(image, sessions, 2, now=1, want_fence=True)
    image, _ = beat(image, sessions, 3, now=1, want_fence=True)
    image, _ = beat(image, sessions, 1, now=1, want_fence=True)
    assert all(p.leader == -1 for p in image.topic("t").partitions.values())
    image, outcome = beat(image, sessions, 1, now=2)
    assert not outcome.is_fenced
    assert all(p.leader == 1 for p in image.topic("t").partitions.values())
