"""Whole-request error answers of the Kafka listener, one per API.

Each puts `code` at every topic or partition the request named (Kafka's
getErrorResponse), and at the top where the API has a place for it; the shapes differ
per API, so each has its builder.
"""

from __future__ import annotations

import uuid
from typing import Any

from client.protocol.kafka import messages as kafka

ZERO_UUID = uuid.UUID(int=0)  # "no topic id", in versions that carry one


def message_in(version: int, since: int, message: str) -> str | None:
    """An error message, in versions that carry one (null when there is none)."""
    return message if version >= since and message else None


def metadata_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.MetadataResponse
    return Response(
        topics=tuple(
            Response.MetadataResponseTopic(
                error_code=code,
                name=topic.name,
                topic_id=topic.topic_id if version >= 10 else ZERO_UUID,
            )
            for topic in request.topics or ()
        )
    )


def produce_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.ProduceResponse
    if request.acks == 0:
        return None
    return Response(
        responses=tuple(
            Response.TopicProduceResponse(
                name=topic.name,
                partition_responses=tuple(
                    Response.PartitionProduceResponse(
                        index=p.index,
                        error_code=code,
                        base_offset=-1,
                        error_message=message_in(version, 8, message),
                    )
                    for p in topic.partition_data
                ),
            )
            for topic in request.topic_data
        )
    )


def fetch_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.FetchResponse
    return Response(
        error_code=code if version >= 7 else 0,
        responses=tuple(
            Response.FetchableTopicResponse(
                topic=topic.topic,
                partitions=tuple(
                    Response.PartitionData(
                        partition_index=p.partition, error_code=code, high_watermark=-1
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        ),
    )


def list_offsets_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.ListOffsetsResponse
    return Response(
        topics=tuple(
            Response.ListOffsetsTopicResponse(
                name=topic.name,
                partitions=tuple(
                    Response.ListOffsetsPartitionResponse(
                        partition_index=p.partition_index, error_code=code
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        )
    )


def delete_records_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DeleteRecordsResponse
    return Response(
        topics=tuple(
            Response.DeleteRecordsTopicResult(
                name=topic.name,
                partitions=tuple(
                    Response.DeleteRecordsPartitionResult(
                        partition_index=p.partition_index, low_watermark=-1, error_code=code
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        )
    )


def create_topics_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.CreateTopicsResponse
    return Response(
        topics=tuple(
            Response.CreatableTopicResult(name=t.name, error_code=code, error_message=message)
            for t in request.topics
        )
    )


def delete_topics_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DeleteTopicsResponse
    if version >= 6:
        named = [(t.name, t.topic_id) for t in request.topics]
    else:
        named = [(name, ZERO_UUID) for name in request.topic_names]
    return Response(
        responses=tuple(
            Response.DeletableTopicResult(
                name=name,
                topic_id=topic_id,
                error_code=code,
                error_message=message_in(version, 5, message),
            )
            for name, topic_id in named
        )
    )


def create_partitions_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.CreatePartitionsResponse
    return Response(
        results=tuple(
            Response.CreatePartitionsTopicResult(
                name=t.name, error_code=code, error_message=message or None
            )
            for t in request.topics
        )
    )


def describe_cluster_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.DescribeClusterResponse(error_code=code, error_message=message or None)


def offset_for_leader_epoch_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.OffsetForLeaderEpochResponse
    return Response(
        topics=tuple(
            Response.OffsetForLeaderTopicResult(
                topic=topic.topic,
                partitions=tuple(
                    Response.EpochEndOffset(partition=p.partition, error_code=code)
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        )
    )


def incremental_alter_configs_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.IncrementalAlterConfigsResponse
    return Response(
        responses=tuple(
            Response.AlterConfigsResourceResponse(
                error_code=code,
                error_message=message or None,
                resource_type=r.resource_type,
                resource_name=r.resource_name,
            )
            for r in request.resources
        )
    )


def alter_configs_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.AlterConfigsResponse
    return Response(
        responses=tuple(
            Response.AlterConfigsResourceResponse(
                error_code=code,
                error_message=message or None,
                resource_type=r.resource_type,
                resource_name=r.resource_name,
            )
            for r in request.resources
        )
    )


def elect_leaders_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.ElectLeadersResponse
    return Response(
        error_code=code if version >= 1 else 0,
        replica_election_results=tuple(
            Response.ReplicaElectionResult(
                topic=topic.topic,
                partition_result=tuple(
                    Response.PartitionResult(
                        partition_id=p, error_code=code, error_message=message or None
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topic_partitions or ()
        ),
    )


def describe_quorum_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.DescribeQuorumResponse(error_code=code)


def describe_configs_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DescribeConfigsResponse
    return Response(
        results=tuple(
            Response.DescribeConfigsResult(
                error_code=code,
                error_message=message_in(version, 0, message),
                resource_type=r.resource_type,
                resource_name=r.resource_name,
                configs=(),
            )
            for r in request.resources
        )
    )


# ---------------------------------------------------------------------- groups (issue 16)


def find_coordinator_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.FindCoordinatorResponse
    if version >= 4:
        return Response(
            coordinators=tuple(
                Response.Coordinator(
                    key=key, node_id=-1, port=-1, error_code=code, error_message=message or None
                )
                for key in request.coordinator_keys
            )
        )
    return Response(
        error_code=code, error_message=message_in(version, 1, message), node_id=-1, port=-1
    )


def join_group_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.JoinGroupResponse(
        error_code=code,
        member_id=request.member_id,
        protocol_name=None if version >= 7 else "",
    )


def sync_group_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.SyncGroupResponse(error_code=code)


def heartbeat_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.HeartbeatResponse(error_code=code)


def leave_group_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.LeaveGroupResponse(error_code=code)


def offset_commit_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.OffsetCommitResponse
    return Response(
        topics=tuple(
            Response.OffsetCommitResponseTopic(
                name=topic.name,
                partitions=tuple(
                    Response.OffsetCommitResponsePartition(
                        partition_index=p.partition_index, error_code=code
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        )
    )


def offset_fetch_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.OffsetFetchResponse
    if version >= 8:
        return Response(
            groups=tuple(
                Response.OffsetFetchResponseGroup(group_id=group.group_id, error_code=code)
                for group in request.groups
            )
        )
    return Response(
        error_code=code if version >= 2 else 0,
        topics=tuple(
            Response.OffsetFetchResponseTopic(
                name=topic.name,
                partitions=tuple(
                    Response.OffsetFetchResponsePartition(
                        partition_index=index, committed_offset=-1, error_code=code
                    )
                    for index in topic.partition_indexes
                ),
            )
            for topic in request.topics or ()
        ),
    )


def describe_groups_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DescribeGroupsResponse
    return Response(
        groups=tuple(
            Response.DescribedGroup(error_code=code, group_id=group_id)
            for group_id in request.groups
        )
    )


def list_groups_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.ListGroupsResponse(error_code=code)


def delete_groups_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DeleteGroupsResponse
    return Response(
        results=tuple(
            Response.DeletableGroupResult(group_id=group_id, error_code=code)
            for group_id in request.groups_names
        )
    )
