"""Kafka's admin clients and raw requests at every served version, against a 3-node
pykraft cluster (issue 15; decision 0011).

Raw requests through the codec check each version's fields of every served API;
confluent-kafka's and kafka-python's admin clients create, describe, alter and delete
topics and configs and ask for leader elections. One cluster of 3 combined nodes
(OS processes) serves the whole module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.local_cluster import LocalCluster
from client.protocol.kafka import messages
from storage.records import RecordInput, build_batch, iter_records
from tests.integration.kafka_support import (
    WAIT_S,
    _ask,
    _has_leaders,
    _topics_seen_by_every_client,
    _wait_until,
    create_topic,
)
from tests.integration.test_kafka_clients import FAILOVER_SETTINGS

kafka = pytest.importorskip("kafka")
confluent_kafka = pytest.importorskip("confluent_kafka")

from confluent_kafka import TopicPartition as CTopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from kafka import KafkaAdminClient  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("kafka-apis")
    with LocalCluster(str(root), combined=3) as running:
        running.start_all()
        yield running


def test_every_served_version_of_every_api(cluster: LocalCluster) -> None:
    """Raw requests at each version advertised: the version-dependent fields are right."""
    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "versions", 1)
    any_broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    M = messages
    Topic = M.MetadataRequest.MetadataRequestTopic
    for version in range(13):
        answer = _ask(any_broker, 3, version, M.MetadataRequest(topics=(Topic(name="versions"),)))
        (topic,) = answer.topics
        (part,) = topic.partitions
        assert (topic.error_code, topic.name, part.error_code) == (0, "versions", 0), version
        assert len(answer.brokers) == 3 and len(part.replica_nodes) == 3
        assert (topic.topic_id.int != 0) == (version >= 10)
        assert (part.leader_epoch >= 0) == (version >= 7)
        assert (answer.cluster_id == cluster.cluster_id) == (version >= 2)
        assert (answer.controller_id in cluster.broker_ids) == (version >= 1)
        leader = cluster.address(part.leader_id, "PLAINTEXT")
        leader_epoch = part.leader_epoch
    # Produce v3-9 to the leader: each appends one batch of one record.
    P = M.ProduceRequest
    for count, version in enumerate(range(3, 10)):
        batch = build_batch([RecordInput(timestamp=1_000 + version, value=b"v%d" % version)])
        answer = _ask(
            leader,
            0,
            version,
            P(
                acks=-1,
                timeout_ms=30_000,
                topic_data=(
                    P.TopicProduceData(
                        name="versions",
                        partition_data=(P.PartitionProduceData(index=0, records=batch),),
                    ),
                ),
            ),
        )
        (result,) = answer.responses[0].partition_responses
        assert (result.error_code, result.base_offset) == (0, count), version
    F = M.FetchRequest
    for version in range(4, 13):
        answer = _ask(
            leader,
            1,
            version,
            F(
                replica_id=-1,
                max_wait_ms=100,
                min_bytes=1,
                max_bytes=1 << 20,
                topics=(
                    F.FetchTopic(
                        topic="versions",
                        partitions=(
                            F.FetchPartition(
                                partition=0, fetch_offset=0, partition_max_bytes=1 << 20
                            ),
                        ),
                    ),
                ),
            ),
        )
        (data,) = answer.responses[0].partitions
        assert (data.error_code, data.high_watermark, data.last_stable_offset) == (0, 7, 7)
        assert data.log_start_offset == (0 if version >= 5 else -1)
        assert [r.value for r in iter_records(data.records)][:1] == [b"v3"], version
    L = M.ListOffsetsRequest
    for version in range(1, 8):
        # -3: the largest timestamp (KIP-734), v9's record at 1_009; refused before v7.
        specs = [(-2, 0), (-1, 7), (1_005, 2), (-3, 6 if version >= 7 else None)]
        answer = _ask(
            leader,
            2,
            version,
            L(
                replica_id=-1,
                topics=(
                    L.ListOffsetsTopic(
                        name="versions",
                        partitions=tuple(
                            L.ListOffsetsPartition(partition_index=0, timestamp=t) for t, _ in specs
                        ),
                    ),
                ),
            ),
        )
        got = [(p.error_code, p.offset) for p in answer.topics[0].partitions]
        expected = [(0, o) if o is not None else (35, -1) for _, o in specs]
        assert got == expected, version
    OE = M.OffsetForLeaderEpochRequest
    for version in range(2, 5):
        answer = _ask(
            leader,
            23,
            version,
            OE(
                replica_id=-1,
                topics=(
                    OE.OffsetForLeaderTopic(
                        topic="versions",
                        partitions=(
                            OE.OffsetForLeaderPartition(
                                partition=0,
                                current_leader_epoch=leader_epoch,
                                leader_epoch=leader_epoch,
                            ),
                        ),
                    ),
                ),
            ),
        )
        (result,) = answer.topics[0].partitions
        assert (result.error_code, result.leader_epoch, result.end_offset) == (
            0,
            leader_epoch,
            7,
        ), version
    for version in range(2):
        answer = _ask(any_broker, 60, version, M.DescribeClusterRequest())
        assert answer.error_code == 0 and answer.cluster_id == cluster.cluster_id
        assert sorted(b.broker_id for b in answer.brokers) == cluster.broker_ids
    D = M.DeleteRecordsRequest
    for version in range(3):
        answer = _ask(
            leader,
            21,
            version,
            D(
                timeout_ms=30_000,
                topics=(
                    D.DeleteRecordsTopic(
                        name="versions",
                        partitions=(
                            D.DeleteRecordsPartition(partition_index=0, offset=version + 1),
                        ),
                    ),
                ),
            ),
        )
        (result,) = answer.topics[0].partitions
        assert (result.error_code, result.low_watermark) == (0, version + 1)
    C = M.CreateTopicsRequest
    for version in range(2, 8):
        name = f"created-v{version}"
        answer = _ask(
            any_broker,
            19,
            version,
            C(
                timeout_ms=30_000,
                topics=(C.CreatableTopic(name=name, num_partitions=1, replication_factor=3),),
            ),
        )
        (result,) = answer.topics
        assert (result.name, result.error_code) == (name, 0), result
        assert (result.topic_id.int != 0) == (version >= 7)
        assert result.num_partitions == (1 if version >= 5 else -1)
    CP = M.CreatePartitionsRequest
    for version in range(4):
        answer = _ask(
            any_broker,
            37,
            version,
            CP(
                timeout_ms=30_000,
                topics=(CP.CreatePartitionsTopic(name=f"created-v{version + 2}", count=2),),
            ),
        )
        assert [r.error_code for r in answer.results] == [0], answer
    DT = M.DeleteTopicsRequest
    for version in range(1, 7):
        name = f"created-v{version + 1}"
        request = (
            DT(timeout_ms=30_000, topics=(DT.DeleteTopicState(name=name),))
            if version >= 6
            else DT(timeout_ms=30_000, topic_names=(name,))
        )
        answer = _ask(any_broker, 20, version, request)
        assert [(r.name, r.error_code) for r in answer.responses] == [(name, 0)], answer

    IA = M.IncrementalAlterConfigsRequest
    for version in range(2):
        answer = _ask(
            any_broker,
            44,
            version,
            IA(
                resources=(
                    IA.AlterConfigsResource(
                        resource_type=2,
                        resource_name="versions",
                        configs=(
                            IA.AlterableConfig(
                                name="retention.ms", config_operation=0, value="60000"
                            ),
                        ),
                    ),
                    IA.AlterConfigsResource(
                        resource_type=2,
                        resource_name="versions",
                        configs=(IA.AlterableConfig(name="no.such.config", value="1"),),
                    ),
                    IA.AlterConfigsResource(resource_type=8, resource_name="1"),  # broker logger
                )
            ),
        )
        assert [r.error_code for r in answer.responses] == [0, 40, 42], answer
    DQ = M.DescribeQuorumRequest
    for version in range(2):
        answer = _ask(
            any_broker,
            55,
            version,
            DQ(
                topics=(
                    DQ.TopicData(
                        topic_name="__cluster_metadata",
                        partitions=(DQ.PartitionData(partition_index=0),),
                    ),
                )
            ),
        )
        (quorum,) = answer.topics[0].partitions
        assert quorum.error_code == 0 and quorum.leader_id in cluster.controller_ids
        assert sorted(v.replica_id for v in quorum.current_voters) == cluster.controller_ids
        assert quorum.high_watermark > 0
        assert all((v.last_fetch_timestamp != -1) == (version >= 1) for v in quorum.current_voters)


def test_describe_configs_from_each_admin_client(cluster: LocalCluster) -> None:
    """DescribeConfigs: what was set, and Kafka's defaults for the rest."""
    from confluent_kafka.admin import ConfigResource
    from kafka.admin import ConfigResource as KafkaConfigResource
    from kafka.admin import ConfigResourceType

    bootstrap = cluster.bootstrap_servers()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        answer = admin.create_topics(
            [NewTopic("configured", 1, 3, topic_configs={"retention.ms": "3600000"})]
        )
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
        # Each broker answers DescribeConfigs from its own image: wait until all have it.
        deadline = time.monotonic() + WAIT_S
        for address in bootstrap.split(","):
            host, port = address.split(":")
            while not _has_leaders(host, int(port), "configured", 1):
                assert time.monotonic() < deadline, f"configured is not known on {address}"
                time.sleep(0.1)
        described = admin.describe_configs(
            [KafkaConfigResource(ConfigResourceType.TOPIC, "configured")], config_filter="all"
        )
        (entries,) = next(iter(described.values())).values()
        assert entries["retention.ms"]["value"] == "3600000", entries
        assert entries["cleanup.policy"]["value"] == "delete"  # a default
        assert entries["min.insync.replicas"]["value"] == "1"
    finally:
        admin.close()
    confluent = AdminClient({"bootstrap.servers": bootstrap})
    futures = confluent.describe_configs([ConfigResource("topic", "configured")])
    (configs,) = [future.result(timeout=WAIT_S) for future in futures.values()]
    assert configs["retention.ms"].value == "3600000" and not configs["retention.ms"].is_default
    assert configs["segment.bytes"].value == "1073741824" and configs["segment.bytes"].is_default
    missing = confluent.describe_configs([ConfigResource("topic", "no-such-topic")])
    with pytest.raises(confluent_kafka.KafkaException):
        next(iter(missing.values())).result(timeout=WAIT_S)


def test_elect_leaders_from_confluent_kafka_and_raw_requests(cluster: LocalCluster) -> None:
    """ElectLeaders v0-2, per partition. Leaders start as their preferred replicas, so
    a preferred election is not needed, nor an unclean one where a leader leads (the
    elections themselves are tests/kraft/test_elections.py's, on the controller)."""
    from confluent_kafka import ElectionType

    bootstrap = cluster.bootstrap_servers()
    create_topic(bootstrap, "elect", 3)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    asked = [CTopicPartition("elect", p) for p in range(3)] + [CTopicPartition("elect", 9)]
    for election in (ElectionType.PREFERRED, ElectionType.UNCLEAN):
        found = admin.elect_leaders(election, asked).result(timeout=WAIT_S)
        codes = {
            tp.partition: None if error is None else error.code() for tp, error in found.items()
        }
        assert codes == {0: 84, 1: 84, 2: 84, 9: 3}, (election, codes)  # 84 NOT_NEEDED
    # Every partition: the ones needing no election are left out.
    assert admin.elect_leaders(ElectionType.PREFERRED, None).result(timeout=WAIT_S) == {}

    M = messages
    Request = M.ElectLeadersRequest
    asked_raw = (Request.TopicPartitions(topic="elect", partitions=(0, 2)),)
    broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    for version in range(3):
        answer = _ask(broker, 43, version, Request(topic_partitions=asked_raw, timeout_ms=30_000))
        assert answer.error_code == 0
        ((topic, results),) = [
            (r.topic, r.partition_result) for r in answer.replica_election_results
        ]
        assert topic == "elect"
        assert [(r.partition_id, r.error_code) for r in results] == [(0, 84), (2, 84)], version
    refused = _ask(broker, 43, 2, Request(election_type=7, topic_partitions=asked_raw))
    assert refused.error_code == 42  # INVALID_REQUEST: no such election type


def test_alter_configs_replaces_the_dynamic_set(cluster: LocalCluster) -> None:
    """Legacy AlterConfigs v0-2: the configs given become the resource's whole dynamic
    set (every other one returns to its default), or are only checked (validate_only)."""
    from kafka.admin import ConfigResource as KafkaConfigResource
    from kafka.admin import ConfigResourceType

    bootstrap = cluster.bootstrap_servers()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    broker = cluster.address(cluster.broker_ids[0], "PLAINTEXT")
    M = messages
    Request = M.AlterConfigsRequest

    def described() -> dict[str, str]:
        answer = _ask(
            broker,
            32,
            4,
            M.DescribeConfigsRequest(
                resources=(
                    M.DescribeConfigsRequest.DescribeConfigsResource(
                        resource_type=2, resource_name="altered", configuration_keys=None
                    ),
                )
            ),
        )
        (result,) = answer.results
        assert result.error_code == 0, result
        return {c.name: c.value for c in result.configs if c.config_source == 1}  # dynamic

    def alter(version: int, configs: dict[str, str], validate_only: bool = False) -> Any:
        entries = tuple(Request.AlterableConfig(name=k, value=v) for k, v in configs.items())
        resource = Request.AlterConfigsResource(
            resource_type=2, resource_name="altered", configs=entries
        )
        answer = _ask(
            broker, 33, version, Request(resources=(resource,), validate_only=validate_only)
        )
        (response,) = answer.responses
        return response

    try:
        answer = admin.create_topics(
            [
                NewTopic(
                    "altered",
                    1,
                    3,
                    topic_configs={"retention.ms": "3600000", "max.message.bytes": "2000000"},
                )
            ]
        )
        assert all(t["error_code"] == 0 for t in answer["topics"]), answer
        wanted = {"retention.ms": "3600000", "max.message.bytes": "2000000"}
        _wait_until(lambda: _has_leaders(*broker, "altered", 1), "no topic altered")
        _wait_until(lambda: described() == wanted, "created configs not described")
        # Only checked: nothing changes.
        assert alter(0, {"retention.ms": "1000"}, validate_only=True).error_code == 0
        # A bad value refuses the whole resource.
        refused = alter(1, {"retention.ms": "7200000", "max.message.bytes": "lots"})
        assert refused.error_code == 40 and refused.error_message, refused  # INVALID_CONFIG
        assert described() == wanted
        # Only retention.ms given: max.message.bytes goes back to its default.
        assert alter(2, {"retention.ms": "7200000"}).error_code == 0
        _wait_until(lambda: described() == {"retention.ms": "7200000"}, "not replaced")
        # kafka-python forced onto AlterConfigs.
        result = admin.alter_configs(
            [
                KafkaConfigResource(
                    ConfigResourceType.TOPIC, "altered", configs={"segment.bytes": "1048576"}
                )
            ],
            incremental=False,
        )
        assert "altered" in str(result) and "Error" not in str(result), result
        _wait_until(lambda: described().get("segment.bytes") == "1048576", "kafka-python's set")
    finally:
        admin.close()


def test_admin_clients_create_describe_and_delete_topics(cluster: LocalCluster) -> None:
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import NewTopic as CNewTopic

    bootstrap = cluster.bootstrap_servers()
    confluent = AdminClient({"bootstrap.servers": bootstrap})
    futures = confluent.create_topics([CNewTopic("doomed-c", 2, 3)], operation_timeout=30)
    futures["doomed-c"].result(timeout=WAIT_S)
    create_topic(bootstrap, "doomed-k", 3)  # kafka-python's admin
    _wait_until(lambda: _has_leaders(*cluster.address(1, "PLAINTEXT"), "doomed-c", 2), "doomed-c")

    # Described by both admin clients.
    described = confluent.describe_topics(TopicCollection(["doomed-c", "doomed-k"]))
    found = {name: future.result(timeout=WAIT_S) for name, future in described.items()}
    assert {name: len(t.partitions) for name, t in found.items()} == {"doomed-c": 2, "doomed-k": 3}
    assert all(len(p.replicas) == 3 and p.leader is not None for p in found["doomed-c"].partitions)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        topics = {t["name"]: t for t in admin.describe_topics(["doomed-c", "doomed-k"])}
        assert {n: (t["error_code"], len(t["partitions"])) for n, t in topics.items()} == {
            "doomed-c": (0, 2),
            "doomed-k": (0, 3),
        }
        # Each admin client deletes one.
        admin.delete_topics(["doomed-k"], timeout_ms=30_000)
    finally:
        admin.close()
    confluent.delete_topics(["doomed-c"], operation_timeout=30)["doomed-c"].result(timeout=WAIT_S)

    def gone() -> bool:
        return all(
            not {"doomed-c", "doomed-k"} & seen for seen in _topics_seen_by_every_client(bootstrap)
        )

    _wait_until(gone, "a deleted topic is still in some client's metadata")
    missing = confluent.delete_topics(["doomed-c"], operation_timeout=30)["doomed-c"]
    with pytest.raises(confluent_kafka.KafkaException):
        missing.result(timeout=WAIT_S)


@pytest.mark.lab
def test_a_preferred_election_once_the_preferred_replica_is_back(tmp_path: Any) -> None:
    """SIGKILL of a partition's preferred leader; confluent-kafka's elect_leaders is
    refused while it is away or out of the ISR, moves leadership back once it has caught
    up, and is then not needed."""
    from confluent_kafka import ElectionType

    with LocalCluster(str(tmp_path), combined=3, **FAILOVER_SETTINGS) as failing:
        failing.start_all()
        bootstrap = failing.bootstrap_servers()
        create_topic(bootstrap, "elected", 1)
        addresses = {b: failing.address(b, "PLAINTEXT") for b in failing.broker_ids}
        first = partition_state(addresses[failing.broker_ids[0]], "elected")
        preferred = first.replica_nodes[0]
        assert first.leader_id == preferred
        witness = addresses[next(b for b in failing.broker_ids if b != preferred)]
        failing.kill(preferred)
        _wait_until(
            lambda: partition_state(witness, "elected").leader_id not in (-1, preferred),
            "no new leader",
        )
        survivors = ",".join(f"{h}:{p}" for b, (h, p) in addresses.items() if b != preferred)
        admin = AdminClient({"bootstrap.servers": survivors})
        asked = [CTopicPartition("elected", 0)]

        def elect() -> int | None:
            found = admin.elect_leaders(ElectionType.PREFERRED, asked).result(timeout=WAIT_S)
            (error,) = found.values()
            return None if error is None else error.code()

        assert elect() == 80  # PREFERRED_LEADER_NOT_AVAILABLE: fenced, out of the ISR
        failing.start(preferred)
        _wait_until(
            lambda: preferred in partition_state(witness, "elected").isr_nodes,
            "the preferred replica never rejoined the ISR",
        )
        assert elect() is None
        _wait_until(
            lambda: partition_state(witness, "elected").leader_id == preferred,
            "leadership did not move back",
        )
        assert elect() == 84  # ELECTION_NOT_NEEDED


def partition_state(address: tuple[str, int], topic: str) -> Any:
    Topic = messages.MetadataRequest.MetadataRequestTopic
    answer = _ask(address, 3, 12, messages.MetadataRequest(topics=(Topic(name=topic),)))
    return answer.topics[0].partitions[0]
