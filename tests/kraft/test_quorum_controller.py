"""The active controller's activation rules, against a scripted Raft node and loader.

No decision (and no timing judgement) before the new leader has replayed the
committed log through its own epoch start; then fresh sessions for every broker.
"""

from __future__ import annotations

import random

import trio

from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode
from kraft.controller.quorum_controller import QuorumController
from kraft.metadata.image import ELR_FEATURE, MetadataImage, replay
from kraft.metadata.records import (
    BrokerRegistrationChangeRecord,
    FeatureLevelRecord,
    NoOpRecord,
    decode_record,
)
from kraft.raft.core import LeaderAndEpoch, NotLeaderError, RaftConfig
from tests.kraft.test_replication_control import cluster

SESSION_MS = 9_000


class ScriptedNode:
    """Just what QuorumController uses of a RaftNode, with the clock in the test's hand."""

    def __init__(self) -> None:
        self.config = RaftConfig(local_id=1, voters=frozenset({1, 2, 3}), cluster_id="c")
        self.now = 1_000_000
        self.epoch_start: int | None = None
        self.epoch = 1
        self.log_end_offset = 0
        self.high_watermark = 0
        self.proposed: list[list[bytes]] = []

    def now_ms(self) -> int:
        return self.now

    def leader(self) -> LeaderAndEpoch:
        leader_id = 1 if self.epoch_start is not None else 2
        return LeaderAndEpoch(leader_id=leader_id, epoch=self.epoch)

    def leader_epoch_start(self) -> int | None:
        return self.epoch_start

    def propose(self, values: list[bytes]) -> int:
        if self.epoch_start is None:
            raise NotLeaderError(self.leader())
        self.proposed.append(values)
        self.log_end_offset += len(values)
        return self.log_end_offset - 1

    async def wait_committed(self, offset: int) -> None:
        self.high_watermark = max(self.high_watermark, offset + 1)

    async def wait_for_change(self) -> None:
        await trio.sleep_forever()

    def replica_progress(self) -> list:
        return []


class ScriptedLoader:
    def __init__(self, image: MetadataImage) -> None:
        self.image = image
        self.next_offset = image.offset + 1
        self.snapshots_written = self.snapshots_loaded = 0

    async def wait_applied(self, offset: int) -> None:
        self.next_offset = max(self.next_offset, offset + 1)


def setup() -> tuple[ScriptedNode, ScriptedLoader, QuorumController]:
    image = cluster(3)  # brokers 1-3, unfenced, records at offsets 0-2
    node = ScriptedNode()
    node.log_end_offset = node.high_watermark = image.offset + 1
    loader = ScriptedLoader(image)
    controller = QuorumController(
        node,  # type: ignore[arg-type]
        loader,  # type: ignore[arg-type]
        cluster_id="c",
        rng=random.Random(0),
        session_timeout_ms=SESSION_MS,
    )
    return node, loader, controller


# What a newly active controller writes first: its own record, and (this image does not
# have it yet) the KIP-966 feature level its configuration asks for.
ACTIVATION = [NoOpRecord(), FeatureLevelRecord(name=ELR_FEATURE, level=1)]


def proposed_records(node: ScriptedNode) -> list:
    return [decode_record(value) for batch in node.proposed for value in batch]


async def test_a_leader_decides_nothing_until_it_has_replayed_its_epoch_start() -> None:
    node, loader, controller = setup()
    # Elected, with the leader-change record at offset 10, but replayed only to 3.
    node.epoch_start, node.epoch = 10, 2
    node.log_end_offset = 11
    node.now += 60_000  # long after any broker last heartbeated (to the old controller)
    controller._update_activation()
    assert not controller.is_active
    answer = await controller.handle(
        ApiKey.CREATE_TOPICS,
        0,
        {"topics": [{"name": "t", "partitions": 1, "replication_factor": 1}]},
    )
    assert answer["error_code"] == ErrorCode.NOT_CONTROLLER
    controller._fence_expired()  # run() would not even call it; it must do nothing anyway
    assert node.proposed == []

    loader.next_offset = 11  # caught up through the epoch start
    controller._update_activation()
    assert controller.is_active and controller.activations == 1
    assert proposed_records(node) == ACTIVATION
    # Fresh sessions: nobody is fenced for silence that happened under the old controller.
    node.now += SESSION_MS // 2
    controller._fence_expired()
    assert proposed_records(node) == ACTIVATION
    # Brokers 1 and 2 heartbeat to the new controller; broker 3 stays silent.
    for broker in (1, 2):
        body = {
            "broker_id": broker,
            "broker_epoch": loader.image.brokers[broker].broker_epoch,
            "current_metadata_offset": 11,
        }
        answer = await controller.handle(ApiKey.BROKER_HEARTBEAT, 0, body)
        assert answer["error_code"] == ErrorCode.NONE and not answer["is_fenced"]
    node.now += SESSION_MS // 2 + 1
    controller._fence_expired()
    fenced = [
        r.broker_id
        for r in proposed_records(node)
        if isinstance(r, BrokerRegistrationChangeRecord) and r.fenced
    ]
    assert fenced == [3]
    assert controller._pending.brokers[3].fenced


async def test_leadership_lost_mid_way_answers_not_controller_and_drops_pending_state() -> None:
    node, loader, controller = setup()
    node.epoch_start = 3
    loader.next_offset = 4
    controller._update_activation()
    assert controller.is_active
    node.epoch_start, node.epoch = None, 3  # another node won epoch 3
    answer = await controller.handle(ApiKey.DELETE_TOPICS, 0, {"names": ["x"]})
    assert answer["error_code"] == ErrorCode.NOT_CONTROLLER and answer["controller_id"] == 2
    assert not controller.is_active
    # Winning again later starts from the committed image, not the old pending one.
    loader.image = replay(loader.image, list(enumerate(ACTIVATION, start=3)))
    node.epoch_start, node.epoch = 20, 4
    loader.next_offset = 21
    controller._update_activation()
    assert controller.is_active
    assert controller._pending.digest() == loader.image.digest()  # only its NoOp on top
    assert controller._pending.offset == node.log_end_offset - 1
