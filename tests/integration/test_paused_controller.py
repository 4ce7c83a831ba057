"""Three combined nodes as OS processes: SIGSTOP each in turn while admin requests run.

A paused process accepts connections and never answers. The surviving two elect a new
active controller within about a fetch timeout plus an election; admin requests sent
through them must not wait on the paused one for their whole deadline (issue 13): each
comes back within about twice the request timeout, with an answer or a retriable error.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio

from broker.local_cluster import LocalCluster
from client.admin import Admin, NewTopic
from client.protocol.apis import ApiKey
from client.protocol.errors import ErrorCode, KafkaError
from kraft.quorum_state_file import FILE_NAME as QUORUM_STATE

# Kafka's controller.quorum.fetch.timeout.ms and request.timeout.ms (2 s each); a
# faster election (Kafka: 1 s), so that a split vote costs less than a request timeout.
SETTINGS = {
    "election_timeout_ms": 500,
    "fetch_timeout_ms": 2000,
    "request_timeout_ms": 2000,
    "broker_session_timeout_ms": 6000,
    "broker_heartbeat_interval_ms": 500,
}
REQUEST_TIMEOUT_S = SETTINGS["request_timeout_ms"] / 1000
PAUSE_S = 2 * SETTINGS["fetch_timeout_ms"] / 1000
# What a request may take while a node is paused: twice the request timeout.
LATENCY_MAX_S = 2 * REQUEST_TIMEOUT_S
REQUESTS_PER_ROUND_MAX = 40
# Requests go on this long after the resume too (the old leader comes back deposed).
AFTER_RESUME_S = 1.0


def bootstrap(cluster: LocalCluster, node_id: int) -> str:
    return "{}:{}".format(*cluster.address(node_id, "PLAINTEXT"))


async def one_admin_request(
    cluster: LocalCluster, via: int, index: int, round_: int
) -> tuple[str, float, str]:
    """Like one `pykraft --bootstrap <via> ...` command: (what, seconds, outcome)."""
    started = trio.current_time()
    # The CLI's own request timeout (Kafka's 30 s): a stall would show, not be cut short.
    async with Admin(bootstrap(cluster, via)) as admin:
        try:
            if index % 2 == 0:
                what = "topic create"
                await admin.create_topics([NewTopic(f"p{round_}-{index}", 1, 2)])
            else:
                what = "quorum describe"
                quorum = await admin.describe_quorum()
                assert quorum.leader_id in cluster.configs
            outcome = "ok"
        except KafkaError as error:
            # A create retried after a timeout may find its own topic (Kafka does too).
            assert error.retriable or error.code == ErrorCode.TOPIC_ALREADY_EXISTS, error
            outcome = ErrorCode(error.code).name
    return what, trio.current_time() - started, outcome


async def admin_loop(
    cluster: LocalCluster,
    live: list[int],
    round_: int,
    until: list[float],
    done: list[tuple[int, str, float, str]],
) -> None:
    """Requests one after another through the live brokers in turn, until `until`."""
    for index in range(REQUESTS_PER_ROUND_MAX):
        if until and trio.current_time() > until[0]:
            break
        via = live[index % len(live)]
        what, took_s, outcome = await one_admin_request(cluster, via, index, round_)
        done.append((via, what, took_s, outcome))


async def quorum_leader(cluster: LocalCluster, via: int) -> tuple[int, int]:
    answer = await cluster.request(via, ApiKey.DESCRIBE_QUORUM, {}, timeout_s=30)
    return answer["leader_id"], answer["leader_epoch"]


def stored_election(cluster: LocalCluster, node_id: int) -> tuple[int, int]:
    path = os.path.join(cluster.configs[node_id].data_dir, QUORUM_STATE)
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    return data["leader_id"], data["leader_epoch"]


async def wait_one_leader(cluster: LocalCluster) -> tuple[int, int]:
    """Until every node names the same leader in the same epoch, by every account."""
    everyone = sorted(cluster.configs)
    while True:
        views: set[Any] = {stored_election(cluster, n) for n in everyone}
        for node_id in everyone:
            views.add(await quorum_leader(cluster, node_id))
            answer = await cluster.request(node_id, ApiKey.METADATA, {"topics": []})
            views.add(("controller", answer["controller_id"]))
        if len(views) == 2:
            (leader, epoch) = next(v for v in views if v[0] != "controller")
            if leader >= 0 and ("controller", leader) in views:
                return leader, epoch
        await trio.sleep(0.1)


async def wait_unfenced(cluster: LocalCluster, count: int) -> None:
    while True:
        answer = await cluster.request(1, ApiKey.DESCRIBE_CLUSTER, {})
        if len([b for b in answer["brokers"] if not b["fenced"]]) >= count:
            return
        await trio.sleep(0.1)


@pytest.mark.lab  # a CI step of its own: the default suite's budget
async def test_admin_requests_do_not_stall_on_a_paused_node(tmp_path) -> None:
    with LocalCluster(str(tmp_path), combined=3, **SETTINGS) as cluster:
        cluster.start_all()
        everyone = sorted(cluster.configs)
        paused: list[int] = []
        worst: list[tuple[float, int, str, int, str]] = []
        with trio.fail_after(240):
            await wait_unfenced(cluster, 3)
            leader, epoch = await wait_one_leader(cluster)
            for round_ in range(len(everyone)):
                # The quorum's leader while there is one not yet paused; then the rest.
                victim = leader if leader not in paused else min(set(everyone) - set(paused))
                paused.append(victim)
                live = [n for n in everyone if n != victim]
                until: list[float] = []
                results: list[tuple[int, str, float, str]] = []
                async with trio.open_nursery() as nursery:
                    cluster.pause(victim)
                    try:
                        nursery.start_soon(admin_loop, cluster, live, round_, until, results)
                        await trio.sleep(PAUSE_S)
                    finally:
                        cluster.resume(victim)
                    until.append(trio.current_time() + AFTER_RESUME_S)
                slowest = max(results, key=lambda r: r[2])
                worst.append((slowest[2], victim, slowest[1], slowest[0], slowest[3]))
                print(
                    f"paused {victim} (leader {leader}): {len(results)} requests, slowest {slowest}"
                )
                assert all(took <= LATENCY_MAX_S for _, _, took, _ in results), results
                assert any(outcome == "ok" for _, _, _, outcome in results), results
                new_leader, new_epoch = await wait_one_leader(cluster)
                if victim == leader:
                    assert new_epoch > epoch
                leader, epoch = new_leader, new_epoch
            assert sorted(paused) == everyone
            # Everyone answers again, and the images agree.
            await wait_unfenced(cluster, 3)
            await cluster.wait_images_agree(everyone)
        print(f"worst per round (s, victim, what, via, outcome): {worst}")
        for node_id in everyone:
            assert cluster.is_running(node_id), f"node {node_id} died; see its log"
