"""ControllerChannel against fake controllers and a fake Raft view, on trio's mock clock.

A paused controller is a fake that never answers. The channel must give no attempt
more than its per-attempt limit, follow the Raft node's leader (and its epoch) over
a controller learned in an older view, and leave an outstanding attempt as soon as
the Raft node names another leader.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
import trio

from broker.controller_channel import ControllerChannel
from client.protocol.errors import ErrorCode, KafkaError
from kraft.raft.core import LeaderAndEpoch

ATTEMPT_TIMEOUT_MS = 2000
DEADLINE_S = 10.0


@attrs.define
class FakeConfig:
    request_timeout_ms: int = ATTEMPT_TIMEOUT_MS


class FakeNode:
    """The part of RaftNode the channel uses: the leader view and its changes."""

    def __init__(self, leader_id: int, epoch: int) -> None:
        self.config = FakeConfig()
        self._view = LeaderAndEpoch(leader_id=leader_id, epoch=epoch)
        self._changed = trio.Event()

    def leader(self) -> LeaderAndEpoch:
        return self._view

    def elect(self, leader_id: int, epoch: int) -> None:
        self._view = LeaderAndEpoch(leader_id=leader_id, epoch=epoch)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_leader_change(self, known: LeaderAndEpoch) -> LeaderAndEpoch:
        while self._view == known:
            await self._changed.wait()
        return self._view


class FakeController:
    """One voter: answers as `answer(node)` says; None means never (paused)."""

    def __init__(self, node_id: int, node: FakeNode) -> None:
        self.node_id = node_id
        self.node = node
        self.asked: list[float] = []
        self.paused = False

    async def request(self, api_key: int, version: int, body: Any, *, timeout_s: float) -> Any:
        self.asked.append(trio.current_time())
        with trio.move_on_after(timeout_s):
            if self.paused:
                await trio.sleep_forever()
            await trio.sleep(0.001)
            leader = self.node.leader().leader_id
            if leader != self.node_id:
                return {
                    "error_code": ErrorCode.NOT_CONTROLLER,
                    "error_message": "",
                    "controller_id": leader,
                }
            return {"error_code": 0, "answered_by": self.node_id}
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"{self.node_id} after {timeout_s}s")

    async def aclose(self) -> None:
        pass


def make_channel(node: FakeNode) -> tuple[ControllerChannel, dict[int, FakeController]]:
    voters = {i: ("127.0.0.1", 9000 + i) for i in (1, 2, 3)}
    channel = ControllerChannel(voters, node, client_id="test", rng=random.Random(7))  # type: ignore[arg-type]
    fakes = {i: FakeController(i, node) for i in voters}
    channel._clients.update(fakes)  # type: ignore[arg-type]
    return channel, fakes


async def test_no_attempt_waits_the_whole_deadline_on_a_paused_controller(
    autojump_clock: Any,
) -> None:
    """The quorum has moved on, the broker's own view not yet: others are asked."""
    node = FakeNode(leader_id=1, epoch=1)
    channel, fakes = make_channel(node)
    assert (await channel.request(1, {}, timeout_s=DEADLINE_S))["answered_by"] == 1
    fakes[1].paused = True
    # The others know better: 2 leads epoch 2. This broker's view still says 1.
    for fake in (fakes[2], fakes[3]):
        fake.node = FakeNode(leader_id=2, epoch=2)
    started = trio.current_time()
    answer = await channel.request(1, {}, timeout_s=DEADLINE_S)
    took_s = trio.current_time() - started
    assert answer["answered_by"] == 2
    assert took_s <= ATTEMPT_TIMEOUT_MS / 1000 + 0.5
    assert channel.statistics()["attempts_timed_out"] == 1
    # Learned in this view, 2 is asked next, not the paused 1 again.
    asked_1 = len(fakes[1].asked)
    assert (await channel.request(1, {}, timeout_s=DEADLINE_S))["answered_by"] == 2
    assert len(fakes[1].asked) == asked_1


async def test_an_outstanding_attempt_is_abandoned_when_the_leader_changes(
    autojump_clock: Any,
) -> None:
    node = FakeNode(leader_id=1, epoch=1)
    channel, fakes = make_channel(node)
    await channel.request(1, {}, timeout_s=DEADLINE_S)
    fakes[1].paused = True
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await channel.request(1, {}, timeout_s=DEADLINE_S))

    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(ask)
        await trio.sleep(0.3)
        assert not answers
        node.elect(3, 2)
    took_s = trio.current_time() - started
    assert answers[0]["answered_by"] == 3
    assert took_s < 0.5  # not the attempt's 2 s
    assert channel.statistics()["attempts_abandoned"] == 1
    assert channel.statistics()["attempts_timed_out"] == 0


async def test_the_raft_leader_of_a_newer_epoch_wins_over_a_learned_controller(
    autojump_clock: Any,
) -> None:
    node = FakeNode(leader_id=1, epoch=1)
    channel, fakes = make_channel(node)
    await channel.request(1, {}, timeout_s=DEADLINE_S)
    # 1 is paused; the quorum elects 2 in epoch 2 before the next request.
    fakes[1].paused = True
    node.elect(2, 2)
    started = trio.current_time()
    assert (await channel.request(1, {}, timeout_s=DEADLINE_S))["answered_by"] == 2
    assert trio.current_time() - started < 0.1
    assert len(fakes[1].asked) == 1


async def test_the_caller_deadline_bounds_the_whole_request(autojump_clock: Any) -> None:
    node = FakeNode(leader_id=1, epoch=1)
    channel, fakes = make_channel(node)
    for fake in fakes.values():
        fake.paused = True
    started = trio.current_time()
    with pytest.raises(KafkaError) as caught:
        await channel.request(1, {}, timeout_s=5.0)
    assert caught.value.code == ErrorCode.REQUEST_TIMED_OUT
    assert 5.0 <= trio.current_time() - started < 5.1
    # No attempt had more than its own limit: three fit in the deadline, not one.
    assert channel.statistics()["attempts"] == 3
    assert channel.statistics()["attempts_timed_out"] == 2  # the third was cut short
