"""The client's Kafka connection: ApiVersions negotiation, pipelining by correlation id,
acks=0, timeouts, reconnects and bounded responses, against a scripted fake broker;
then against a real in-process pykraft node."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import trio

from client.kafka_connection import CLIENT_VERSIONS, KafkaConnection
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import KafkaFrameDecoder, decode_request, encode_response
from client.protocol.kafka import messages as kafka

TIMEOUT_S = 60
ApiVersion = kafka.ApiVersionsResponse.ApiVersion
# What the fake broker serves unless a test says otherwise.
SERVED = {18: (0, 3), 3: (0, 12), 0: (3, 9), 60: (0, 1)}

Script = Callable[[Any, Any], Any]  # (header, request) -> (version, response) | None


def api_versions(served: dict[int, tuple[int, int]], code: int = 0) -> Any:
    return kafka.ApiVersionsResponse(
        error_code=code,
        api_keys=tuple(
            ApiVersion(api_key=k, min_version=lo, max_version=hi)
            for k, (lo, hi) in sorted(served.items())
        ),
    )


class FakeBroker:
    """Answers from a script, in order; records each (api key, version) asked."""

    def __init__(self, script: Script, served: dict[int, tuple[int, int]] = SERVED) -> None:
        self.script = script
        self.served = served
        self.asked: list[tuple[int, int]] = []
        self.connections = 0
        self.port = 0
        self.handshake_delay_s = 0.0

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(trio.serve_tcp, self._serve, 0)
        self.port = listeners[0].socket.getsockname()[1]
        return f"127.0.0.1:{self.port}"

    def connection(self) -> KafkaConnection:
        return KafkaConnection("127.0.0.1", self.port, client_id="t", rng=random.Random(1))

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        decoder = KafkaFrameDecoder()
        async with stream:
            while data := await stream.receive_some(65536):
                for frame in decoder.feed(data):
                    header, request = decode_request(frame)
                    key, version = header.request_api_key, header.request_api_version
                    self.asked.append((key, version))
                    if key == 18:
                        await trio.sleep(self.handshake_delay_s)
                        high = self.served[18][1]
                        if version > high:  # Kafka's answer: a v0 body with its ranges
                            out = (0, api_versions(self.served, ErrorCode.UNSUPPORTED_VERSION))
                        else:
                            out = (version, api_versions(self.served))
                    else:
                        out = await self.script(header, request)
                    if out is None:
                        continue
                    answer_version, response = out
                    reply = kafka.ResponseHeader(correlation_id=header.correlation_id)
                    if answer_version == "wrong id":
                        reply = kafka.ResponseHeader(correlation_id=header.correlation_id + 7)
                        answer_version = version
                    await stream.send_all(encode_response(reply, key, answer_version, response))


async def metadata_answer(header: Any, request: Any) -> Any:
    return header.request_api_version, kafka.MetadataResponse(cluster_id="fake")


async def test_a_broker_without_api_versions_v3_is_asked_again_in_its_range(nursery) -> None:
    broker = FakeBroker(metadata_answer, {**SERVED, 18: (0, 2), 3: (0, 9)})
    await broker.start(nursery)
    connection = broker.connection()
    with trio.fail_after(TIMEOUT_S):
        response = await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
    assert response.cluster_id == "fake"
    assert broker.asked == [(18, 3), (18, 2), (3, 9)]  # min(broker max 9, client max 12)
    assert connection.broker_versions[3] == (0, 9)
    await connection.aclose()


async def test_callers_that_arrive_during_the_handshake_wait_for_it(nursery) -> None:
    """A first connection's callers all go at negotiated versions: none is answered
    "does not serve" from the empty table of a handshake still under way (seen after
    a leader kill, when several senders reached a broker at once)."""
    broker = FakeBroker(metadata_answer)
    broker.handshake_delay_s = 0.2
    await broker.start(nursery)
    connection = broker.connection()
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as callers:
            callers.start_soon(ask)
            while not broker.asked:  # the first caller is in its handshake now
                await trio.sleep(0.01)
            for _ in range(4):
                callers.start_soon(ask)
    assert [a.cluster_id for a in answers] == ["fake"] * 5
    assert broker.asked.count((18, 3)) == 1 and broker.connections == 1
    await connection.aclose()


async def test_no_common_version_is_unsupported_version_and_nothing_is_sent(nursery) -> None:
    broker = FakeBroker(metadata_answer, {**SERVED, 3: (13, 13)})
    await broker.start(nursery)
    connection = broker.connection()
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(KafkaError) as caught:
            await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
        assert caught.value.code == ErrorCode.UNSUPPORTED_VERSION
        with pytest.raises(KafkaError) as caught:  # an API the broker does not list
            await connection.request(kafka.ListOffsetsRequest(), timeout_s=10)
        assert caught.value.code == ErrorCode.UNSUPPORTED_VERSION
    assert broker.asked == [(18, 3)]
    await connection.aclose()


async def test_pipelined_requests_get_their_own_answers_and_acks_0_gets_none(nursery) -> None:
    async def echo_topic(header: Any, request: Any) -> Any:
        if header.request_api_key == 0:
            return None  # acks=0: no answer
        await trio.sleep(0.01 * (3 - len(request.topics[0].name)))
        Response = kafka.MetadataResponse
        name = request.topics[0].name
        return 12, Response(topics=(Response.MetadataResponseTopic(name=name),))

    broker = FakeBroker(echo_topic)
    await broker.start(nursery)
    connection = broker.connection()
    Topic = kafka.MetadataRequest.MetadataRequestTopic
    got: dict[str, str] = {}

    async def ask(name: str) -> None:
        answer = await connection.request(
            kafka.MetadataRequest(topics=(Topic(name=name),)), timeout_s=10
        )
        got[name] = answer.topics[0].name

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as inner:
            for name in ("a", "bb", "ccc"):
                inner.start_soon(ask, name)
        silent = kafka.ProduceRequest(acks=0, timeout_ms=1000)
        assert await connection.request(silent, timeout_s=10) is None
        await ask("d")  # the acks=0 request left nothing in line
    assert got == {"a": "a", "bb": "bb", "ccc": "ccc", "d": "d"}
    assert broker.connections == 1
    await connection.aclose()


async def test_a_wrong_correlation_id_closes_the_connection_and_the_next_reconnects(
    nursery,
) -> None:
    answers = iter(["wrong id", 12])

    async def script(header: Any, request: Any) -> Any:
        return next(answers), kafka.MetadataResponse(cluster_id="second")

    broker = FakeBroker(script)
    await broker.start(nursery)
    connection = broker.connection()
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(KafkaError) as caught:
            await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
        assert caught.value.code == ErrorCode.NETWORK_EXCEPTION
        answer = await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
    assert answer.cluster_id == "second" and broker.connections == 2
    await connection.aclose()


async def test_a_timed_out_request_closes_its_connection(nursery) -> None:
    calls = []

    async def script(header: Any, request: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await trio.sleep_forever()
        return 12, kafka.MetadataResponse(cluster_id="later")

    broker = FakeBroker(script)
    await broker.start(nursery)
    connection = broker.connection()
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(KafkaError) as caught:
            await connection.request(kafka.MetadataRequest(topics=None), timeout_s=0.5)
        assert caught.value.code == ErrorCode.REQUEST_TIMED_OUT
        answer = await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
    assert answer.cluster_id == "later" and broker.connections == 2
    await connection.aclose()


async def test_a_response_over_the_size_bound_closes_the_connection(nursery) -> None:
    async def big(header: Any, request: Any) -> Any:
        return 12, kafka.MetadataResponse(cluster_id="x" * 5000)

    broker = FakeBroker(big)
    await broker.start(nursery)
    connection = KafkaConnection(
        "127.0.0.1", broker.port, client_id="t", rng=random.Random(1), response_bytes_max=4096
    )
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(KafkaError) as caught:
            await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
    assert caught.value.code == ErrorCode.NETWORK_EXCEPTION
    await connection.aclose()


async def test_a_whole_request_error_is_raised_once_as_kafka_error(nursery) -> None:
    async def refuse(header: Any, request: Any) -> Any:
        return header.request_api_version, kafka.DescribeClusterResponse(
            error_code=ErrorCode.INVALID_REQUEST, error_message="no"
        )

    broker = FakeBroker(refuse)
    await broker.start(nursery)
    connection = broker.connection()
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(KafkaError) as caught:
            await connection.request(kafka.DescribeClusterRequest(), timeout_s=10)
    assert caught.value.code == ErrorCode.INVALID_REQUEST and "no" in str(caught.value)
    await connection.aclose()


async def test_nothing_listening_is_network_exception_with_backoff() -> None:
    connection = KafkaConnection("127.0.0.1", 1, client_id="t", rng=random.Random(1))
    with trio.fail_after(TIMEOUT_S):
        for _ in range(3):
            with pytest.raises(KafkaError) as caught:
                await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
            assert caught.value.code == ErrorCode.NETWORK_EXCEPTION


async def test_against_a_real_node_every_api_the_client_builds_is_negotiated(
    nursery, tmp_path
) -> None:
    from tests.broker.test_data_plane import started

    with trio.fail_after(TIMEOUT_S):
        cluster = await started(nursery, tmp_path, combined=1)
        (node,) = cluster.configs
        host, port = cluster.configs[node].listeners["PLAINTEXT"]
        connection = KafkaConnection(host, port, client_id="t", rng=random.Random(1))
        answer = await connection.request(kafka.MetadataRequest(topics=None), timeout_s=10)
        assert [b.node_id for b in answer.brokers] == [node]
        assert connection.version_for(3) == 12
        for key, (low, high) in CLIENT_VERSIONS.items():
            if key in connection.broker_versions:
                assert low <= connection.version_for(key) <= high
        described = await connection.request(kafka.DescribeClusterRequest(), timeout_s=10)
        assert described.cluster_id == answer.cluster_id
        await connection.aclose()


async def test_cluster_client_keeps_what_metadata_says_and_skips_a_dead_bootstrap(
    nursery,
) -> None:
    from client.cluster import ClusterClient

    Response = kafka.MetadataResponse

    async def described(header: Any, request: Any) -> Any:
        assert request.allow_auto_topic_creation is False
        assert [t.name for t in request.topics] == ["orders", "unknown"]
        partition = Response.MetadataResponsePartition
        return header.request_api_version, Response(
            brokers=(Response.MetadataResponseBroker(node_id=7, host="127.0.0.1", port=port),),
            cluster_id="c",
            controller_id=7,
            topics=(
                Response.MetadataResponseTopic(
                    name="orders",
                    partitions=(
                        partition(partition_index=1, leader_id=-1, leader_epoch=4,
                                  replica_nodes=(7, 8), isr_nodes=(), offline_replicas=(7, 8)),
                        partition(partition_index=0, leader_id=7, leader_epoch=3,
                                  replica_nodes=(7, 8), isr_nodes=(7,), offline_replicas=(8,)),
                    ),
                ),
                Response.MetadataResponseTopic(
                    name="unknown", error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                ),
            ),
        )  # fmt: skip

    broker = FakeBroker(described)
    await broker.start(nursery)
    port = broker.port
    cluster = ClusterClient(f"127.0.0.1:1,127.0.0.1:{port}", rng=random.Random(3))
    with trio.fail_after(TIMEOUT_S):
        await cluster.refresh(["orders", "unknown"])
    assert cluster.brokers == {7: ("127.0.0.1", port)} and cluster.controller_id == 7
    assert [p.partition for p in cluster.partitions["orders"].values()] == [0, 1]
    leader = cluster.leader("orders", 0)
    assert leader is not None and (leader.leader, leader.leader_epoch, leader.isr) == (7, 3, (7,))
    assert leader.offline_replicas == (8,)  # type: ignore[attr-defined]
    assert cluster.leader("orders", 1) is None  # leaderless
    assert cluster.topic_errors == {"unknown": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
    await cluster.aclose()
