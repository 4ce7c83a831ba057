"""Requests from a broker to the active controller, wherever it is now.

Like Kafka's NodeToControllerChannelManager: ask the node the metadata quorum names
as leader (the Raft node's own view, with its epoch); a NOT_CONTROLLER answer names
the one to ask instead; retry until the caller's deadline.

A controller may accept a connection and never answer (a paused process: SIGSTOP,
a long GC pause, a hung disk). So no attempt waits on one voter for the caller's
whole deadline: each gets at most the quorum's request timeout
(controller.quorum.request.timeout.ms, as Kafka's channel gives each try its request
timeout), a voter that did not answer is skipped for a while, and an attempt is
abandoned as soon as the Raft node learns of a leader other than the one asked
(Kafka's channel drops its connection when the active controller changes). A
controller id learned from an answer is only trusted while the Raft node's view is
the one it was learned in: a newer leader or epoch wins over it.

An abandoned or timed-out CreateTopics may still have been carried out: its retry
then answers TOPIC_ALREADY_EXISTS, as Kafka's does (KAFKA-13574's "maybe").
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from client.protocol.apis import API_VERSION
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.rpc import RpcClient
from kraft.raft.core import LeaderAndEpoch
from kraft.runtime import RaftNode

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.05  # Kafka's retry.backoff.ms
# A voter that did not answer is skipped this long, unless no other is left.
AVOID_S = 1.0


class _Abandoned:
    """The Raft node named another leader while an attempt was outstanding."""


ABANDONED = _Abandoned()


class ControllerChannel:
    def __init__(
        self,
        voters: dict[int, tuple[str, int]],
        node: RaftNode,
        *,
        client_id: str,
        rng: random.Random,
        attempt_timeout_ms: int | None = None,
    ) -> None:
        self.voters = voters
        self.node = node
        self.client_id = client_id
        self.rng = rng
        # One attempt's limit: the quorum's own request timeout unless given.
        self.attempt_timeout_s = (
            attempt_timeout_ms if attempt_timeout_ms is not None else node.config.request_timeout_ms
        ) / 1000
        assert self.attempt_timeout_s > 0
        self._clients: dict[int, RpcClient] = {}
        # The controller an answer named (or that answered), and the Raft node's view
        # when it was learned: trusted only while that view is still the current one.
        self._learned: tuple[int, LeaderAndEpoch] | None = None
        self._failed_at: dict[int, float] = {}
        self.attempts = 0
        self.attempts_timed_out = 0
        self.attempts_abandoned = 0

    def statistics(self) -> dict[str, int]:
        return {
            "attempts": self.attempts,
            "attempts_timed_out": self.attempts_timed_out,
            "attempts_abandoned": self.attempts_abandoned,
        }

    def _target(self) -> int:
        now = trio.current_time()
        usable = [v for v in sorted(self.voters) if self._failed_at.get(v, -1e9) + AVOID_S < now]
        quorum = self.node.leader()
        learned = -1
        if self._learned is not None and self._learned[1] == quorum:
            learned = self._learned[0]
        for candidate in (learned, quorum.leader_id):
            if candidate in usable:
                return candidate
        # The quorum's view may name a dead node for a while: ask the others, who know.
        return self.rng.choice(usable or sorted(self.voters))

    def _client(self, node_id: int) -> RpcClient:
        client = self._clients.get(node_id)
        if client is None:
            host, port = self.voters[node_id]
            client = RpcClient(host, port, client_id=self.client_id, rng=self.rng)
            self._clients[node_id] = client
        return client

    async def request(self, api_key: int, body: Any, *, timeout_s: float) -> Any:
        """The active controller's answer; KafkaError(REQUEST_TIMED_OUT) if none in time."""
        last_problem = "no controller answered"
        deadline = trio.current_time() + timeout_s
        with trio.move_on_at(deadline):
            while True:
                target = self._target()
                view = self.node.leader()
                # The deadline may pass between checkpoints (a busy loop): the cancel
                # scope fires at the next one, and a negative timeout must not come first.
                attempt_s = max(0.0, min(self.attempt_timeout_s, deadline - trio.current_time()))
                answer = await self._attempt(target, api_key, body, attempt_s)
                if answer is ABANDONED:
                    last_problem = f"controller {target} was replaced while asked"
                    continue  # the new leader at once
                if isinstance(answer, KafkaError):
                    last_problem = f"controller {target}: {answer}"
                    if self._learned is not None and self._learned[0] == target:
                        self._learned = None
                    self._failed_at[target] = trio.current_time()
                    await trio.sleep(RETRY_BACKOFF_S)
                    continue
                if (
                    isinstance(answer, dict)
                    and answer.get("error_code") == ErrorCode.NOT_CONTROLLER
                ):
                    named = answer.get("controller_id", -1)
                    self._learned = (named, view) if named not in (target, -1) else None
                    last_problem = f"node {target} is not the controller"
                    await trio.sleep(RETRY_BACKOFF_S)
                    continue
                self._learned = (target, view)
                self._failed_at.pop(target, None)
                return answer
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, f"{last_problem} in {timeout_s}s")

    async def _attempt(
        self, target: int, api_key: int, body: Any, timeout_s: float
    ) -> Any | KafkaError | _Abandoned:
        """One try at `target`: its answer, the error, or ABANDONED on a new leader."""
        self.attempts += 1
        outcome: Any | KafkaError | _Abandoned = ABANDONED
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cancel_on_other_leader, nursery.cancel_scope, target)
            try:
                outcome = await self._client(target).request(
                    api_key, API_VERSION, body, timeout_s=timeout_s
                )
            except KafkaError as error:
                if error.code == ErrorCode.REQUEST_TIMED_OUT:
                    self.attempts_timed_out += 1
                outcome = error
            nursery.cancel_scope.cancel()
        if outcome is ABANDONED:
            self.attempts_abandoned += 1
        return outcome

    async def _cancel_on_other_leader(self, scope: trio.CancelScope, target: int) -> None:
        """Cancel `scope` once the Raft node names a leader other than `target`."""
        known = self.node.leader()
        while True:
            known = await self.node.wait_leader_change(known)
            if known.leader_id not in (-1, target):
                log.info(
                    "%s: controller %d replaced by %d (epoch %d) while asked",
                    self.client_id,
                    target,
                    known.leader_id,
                    known.epoch,
                )
                scope.cancel()
                return

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
