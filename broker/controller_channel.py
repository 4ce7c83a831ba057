"""Requests from a broker to the active controller, wherever it is now.

Like Kafka's NodeToControllerChannelManager: ask the node the metadata quorum names
as leader; a NOT_CONTROLLER answer names the one to ask instead; a node that does
not answer is skipped for the next voter. Retries until the caller's deadline.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from client.protocol.apis import API_VERSION
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.rpc import RpcClient
from kraft.runtime import RaftNode

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.05  # Kafka's retry.backoff.ms
# A voter that did not answer is skipped this long, unless no other is left.
AVOID_S = 1.0


class ControllerChannel:
    def __init__(
        self,
        voters: dict[int, tuple[str, int]],
        node: RaftNode,
        *,
        client_id: str,
        rng: random.Random,
    ) -> None:
        self.voters = voters
        self.node = node
        self.client_id = client_id
        self.rng = rng
        self._clients: dict[int, RpcClient] = {}
        self._controller_id = -1
        self._failed_at: dict[int, float] = {}

    def _target(self) -> int:
        now = trio.current_time()
        usable = [v for v in sorted(self.voters) if self._failed_at.get(v, -1e9) + AVOID_S < now]
        for candidate in (self._controller_id, self.node.leader().leader_id):
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
        with trio.move_on_after(timeout_s):
            while True:
                target = self._target()
                try:
                    answer = await self._client(target).request(
                        api_key, API_VERSION, body, timeout_s=timeout_s
                    )
                except KafkaError as error:
                    last_problem = f"controller {target}: {error}"
                    self._controller_id = -1
                    self._failed_at[target] = trio.current_time()
                    await trio.sleep(RETRY_BACKOFF_S)
                    continue
                if (
                    isinstance(answer, dict)
                    and answer.get("error_code") == ErrorCode.NOT_CONTROLLER
                ):
                    named = answer.get("controller_id", -1)
                    self._controller_id = named if named != target else -1
                    last_problem = f"node {target} is not the controller"
                    await trio.sleep(RETRY_BACKOFF_S)
                    continue
                self._controller_id = target
                return answer
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, last_problem)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
