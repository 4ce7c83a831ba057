"""The metadata workload: create and delete topics and add partitions while nodes fail.

Each process owns its topic names ("m<process>-<n>", never reused), so every outcome
is attributable. A request goes to one broker chosen at random, which forwards it to
the active controller; so the same change travels through different nodes and across
controller failovers. Outcomes are recorded as for sends: ok, fail (the controller
certainly refused it) or info (a timeout or a lost connection: it may have happened).

At the end, once the nodes are back, every broker is asked for its topics: the
`final-topics` operation carries each broker's view, {broker: {topic: partitions}},
for `checkers.check_metadata`.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any

import trio

from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from jepsen_like.cluster_control import ClusterControl
from jepsen_like.history import FAIL, INFO, INVOKE, OK, History

log = logging.getLogger(__name__)

PREFIX = "m"
# Answers after which the change certainly did not happen. Brokers forward to the
# active controller and retry on NOT_CONTROLLER (as Kafka's forwarding does), so a
# change that an old controller wrote just before it lost office can be answered on
# retry by TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION or INVALID_PARTITIONS:
# for names used once, those mean "maybe it happened", not "refused".
DEFINITE_REFUSALS = frozenset(
    {
        ErrorCode.INVALID_REPLICATION_FACTOR,
        ErrorCode.INVALID_TOPIC_EXCEPTION,
        ErrorCode.INVALID_REQUEST,
    }
)
REQUEST_TIMEOUT_S = 5.0


def is_workload_topic(name: str) -> bool:
    return name.startswith(PREFIX) and "-" in name and name[len(PREFIX) :].split("-")[0].isdigit()


class MetadataWorkload:
    def __init__(
        self,
        cluster: ClusterControl,
        history: History,
        *,
        processes: int,
        rate: float,
        rng: random.Random,
        replication_factor: int,
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.processes = processes
        self.rate = rate
        self.rng = rng
        self.replication_factor = replication_factor

    async def run(self, duration_s: float) -> None:
        async with trio.open_nursery() as nursery:
            for process in range(self.processes):
                nursery.start_soon(self._process, f"meta-{process}", process, duration_s)

    async def _process(self, name: str, index: int, duration_s: float) -> None:
        interval = self.processes / self.rate
        deadline = trio.current_time() + duration_s
        live: dict[str, int] = {}  # topics this process may still change -> partitions
        created = 0
        while trio.current_time() + interval < deadline:
            await trio.sleep(interval * (0.5 + self.rng.random()))
            roll = self.rng.random()
            if not live or roll < 0.5:
                topic = f"{PREFIX}{index}-{created}"
                created += 1
                partitions = self.rng.randint(1, 3)
                body = {
                    "topics": [
                        {
                            "name": topic,
                            "partitions": partitions,
                            "replication_factor": self.replication_factor,
                            "configs": [],
                        }
                    ],
                    "validate_only": False,
                }
                if await self._change(
                    name, ApiKey.CREATE_TOPICS, "create", topic, partitions, body
                ):
                    live[topic] = partitions
            elif roll < 0.75:
                topic = self.rng.choice(sorted(live))
                total = live[topic] + 1
                body = {"topics": [{"name": topic, "total": total}]}
                if await self._change(
                    name, ApiKey.CREATE_PARTITIONS, "add-partitions", topic, total, body
                ):
                    live[topic] = total
            else:
                topic = self.rng.choice(sorted(live))
                del live[topic]  # whatever the outcome: a maybe-deleted topic is left alone
                await self._change(
                    name, ApiKey.DELETE_TOPICS, "delete", topic, None, {"names": [topic]}
                )

    async def _change(
        self, process: str, api_key: ApiKey, f: str, topic: str, count: int | None, body: Any
    ) -> bool:
        """One request through a random running broker; True if it certainly happened."""
        value = [topic, count]
        invoked = self.history.now()
        self.history.add(process, INVOKE, f, value)
        running = [n for n in self.cluster.broker_ids if self.cluster.is_running(n)]
        if not running:
            self.history.add(process, FAIL, f, value, invoked=invoked, error="no broker running")
            return False
        node = self.rng.choice(running)
        try:
            answer = await self.cluster.request(node, api_key, body, timeout_s=REQUEST_TIMEOUT_S)
            code = answer["topics"][0]["error_code"]
        except KafkaError as error:
            code = error.code
        except (trio.TooSlowError, OSError):
            code = ErrorCode.REQUEST_TIMED_OUT
        if code == ErrorCode.NONE:
            self.history.add(process, OK, f, value, invoked=invoked, via=node)
            return True
        outcome = FAIL if code in DEFINITE_REFUSALS else INFO
        error = ErrorCode(code).name if code in ErrorCode._value2member_map_ else code
        self.history.add(process, outcome, f, value, invoked=invoked, via=node, error=error)
        return False

    async def final_read(self, timeout_s: float = 20.0) -> None:
        """Every broker's topics, once every node has replayed the same metadata (a
        change is acknowledged once the controller has applied it; brokers follow a
        moment later), or when the time is up: then as they are."""
        views: dict[str, dict[str, int]] = {}
        with trio.move_on_after(timeout_s):
            with contextlib.suppress(KafkaError, OSError):
                await self.cluster.wait_images_agree()
            while True:
                views = {}
                for node in self.cluster.broker_ids:
                    try:
                        answer = await self.cluster.request(
                            node, ApiKey.METADATA, {"topics": None}, timeout_s=2
                        )
                    except (KafkaError, trio.TooSlowError, OSError):
                        continue
                    views[str(node)] = {
                        t["name"]: len(t["partitions"])
                        for t in answer["topics"]
                        if is_workload_topic(t["name"]) and t["error_code"] == ErrorCode.NONE
                    }
                if len(views) == len(self.cluster.broker_ids) and _all_equal(views):
                    break
                await trio.sleep(0.3)
        self.history.add("final", OK, "final-topics", views)


def _all_equal(views: dict[str, dict[str, int]]) -> bool:
    first = next(iter(views.values()), None)
    return all(view == first for view in views.values())
