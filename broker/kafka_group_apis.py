"""Kafka's group APIs on the client listener (issue 16): each handler maps Kafka's
generated messages onto `broker.groups.messages` and the `GroupDriver`, and back.

FindCoordinator 0-4 (group keys; v4 batched), JoinGroup 0-7, SyncGroup 0-5,
Heartbeat 0-4, LeaveGroup 0-4, OffsetCommit 2-8, OffsetFetch 1-8 (v8: batched groups), DescribeGroups 0-5,
ListGroups 0-4, DeleteGroups 0-2, OffsetDelete 0 (KIP-496). A request for a group this broker does not
coordinate is answered NOT_COORDINATOR (COORDINATOR_LOAD_IN_PROGRESS while loading)
through the API's whole-request error answer in `kafka_errors`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from broker import kafka_errors
from broker.group_driver import OFFSETS_TOPIC, GroupDriver
from broker.groups import messages as g
from broker.listeners import BROKER_LISTENER
from broker.txn_driver import TxnDriver
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from kraft.metadata.image import MetadataImage

GROUP_KEY_TYPE = 0
TXN_KEY_TYPE = 1
# Kafka's API keys of the group APIs (the native protocol has none of them).
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT = 8, 9, 10, 11, 12
LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS = 13, 14, 15, 16, 42
OFFSET_DELETE = 47

Handle = Callable[[Any, Any], Awaitable[Any]]
ErrorBuilder = Callable[[Any, int, int, str], Any]


class KafkaGroupApis:
    def __init__(self, driver: GroupDriver, transactions: TxnDriver | None = None) -> None:
        self.driver = driver
        self.transactions = transactions  # FindCoordinator key_type 1

    def served(self) -> dict[int, tuple[int, int, Handle, ErrorBuilder]]:
        e = kafka_errors
        return {
            FIND_COORDINATOR: (0, 4, self._find_coordinator, e.find_coordinator_error),
            JOIN_GROUP: (0, 7, self._join_group, e.join_group_error),
            SYNC_GROUP: (0, 5, self._sync_group, e.sync_group_error),
            HEARTBEAT: (0, 4, self._heartbeat, e.heartbeat_error),
            LEAVE_GROUP: (0, 4, self._leave_group, e.leave_group_error),
            OFFSET_COMMIT: (2, 8, self._offset_commit, e.offset_commit_error),
            OFFSET_FETCH: (1, 8, self._offset_fetch, e.offset_fetch_error),
            DESCRIBE_GROUPS: (0, 5, self._describe_groups, e.describe_groups_error),
            LIST_GROUPS: (0, 4, self._list_groups, e.list_groups_error),
            DELETE_GROUPS: (0, 2, self._delete_groups, e.delete_groups_error),
            OFFSET_DELETE: (0, 0, self._offset_delete, offset_delete_error),
        }

    # ------------------------------------------------------------------ FindCoordinator

    async def _coordinator_of(self, key: str, key_type: int) -> tuple[int, str, int, int, str]:
        """(node id, host, port, error code, message) for one key."""
        none = (-1, "", -1)
        if key_type == TXN_KEY_TYPE and self.transactions is not None:
            return await self.transactions.find_coordinator(key)
        if key_type != GROUP_KEY_TYPE:
            return (*none, ErrorCode.INVALID_REQUEST, "only group coordinators are built")
        if not key:
            return (*none, ErrorCode.INVALID_GROUP_ID, "the group id is empty")
        driver = self.driver
        image: MetadataImage = driver.replicas.image
        topic = image.topic(OFFSETS_TOPIC)
        if topic is None:
            await driver.ensure_topic()
            return (*none, ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{OFFSETS_TOPIC} is being created")
        registration = topic.partitions.get(driver.partition_of(key))
        leader = registration.leader if registration is not None else -1
        broker = image.brokers.get(leader)
        listener = broker.listener(BROKER_LISTENER) if broker is not None else None
        if broker is None or broker.fenced or listener is None:
            return (*none, ErrorCode.COORDINATOR_NOT_AVAILABLE, "the coordinator has no leader")
        return leader, listener.host, listener.port, ErrorCode.NONE, ""

    async def _find_coordinator(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        Response = kafka.FindCoordinatorResponse
        if version >= 4:
            coordinators = []
            for key in request.coordinator_keys:
                node, host, port, code, message = await self._coordinator_of(key, request.key_type)
                coordinators.append(
                    Response.Coordinator(
                        key=key,
                        node_id=node,
                        host=host,
                        port=port,
                        error_code=code,
                        error_message=message or None,
                    )
                )
            return Response(coordinators=tuple(coordinators))
        key_type = request.key_type if version >= 1 else GROUP_KEY_TYPE
        node, host, port, code, message = await self._coordinator_of(request.key, key_type)
        return Response(
            error_code=code,
            error_message=kafka_errors.message_in(version, 1, message),
            node_id=node,
            host=host,
            port=port,
        )

    # ------------------------------------------------------------------ membership

    async def _join_group(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        answer = cast(
            g.JoinGroupResponse,
            await self.driver.call(
                request.group_id,
                "join_group",
                g.JoinGroupRequest(
                    group_id=request.group_id,
                    member_id=request.member_id,
                    group_instance_id=request.group_instance_id if version >= 5 else None,
                    client_id=header.client_id or "",
                    client_host="/127.0.0.1",
                    session_timeout_ms=request.session_timeout_ms,
                    rebalance_timeout_ms=(
                        request.rebalance_timeout_ms if version >= 1 else request.session_timeout_ms
                    ),
                    protocol_type=request.protocol_type,
                    protocols=tuple((p.name, p.metadata) for p in request.protocols),
                    require_known_member_id=version >= 4,
                ),
            ),
        )
        Response = kafka.JoinGroupResponse
        return Response(
            error_code=answer.error_code,
            generation_id=answer.generation_id,
            protocol_type=answer.protocol_type,
            protocol_name=(answer.protocol_name if version >= 7 else (answer.protocol_name or "")),
            leader=answer.leader,
            member_id=answer.member_id,
            members=tuple(
                Response.JoinGroupResponseMember(
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    metadata=m.metadata,
                )
                for m in answer.members
            ),
        )

    async def _sync_group(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        answer = cast(
            g.SyncGroupResponse,
            await self.driver.call(
                request.group_id,
                "sync_group",
                g.SyncGroupRequest(
                    group_id=request.group_id,
                    generation_id=request.generation_id,
                    member_id=request.member_id,
                    group_instance_id=request.group_instance_id if version >= 3 else None,
                    protocol_type=request.protocol_type if version >= 5 else None,
                    protocol_name=request.protocol_name if version >= 5 else None,
                    assignments=tuple((a.member_id, a.assignment) for a in request.assignments),
                ),
            ),
        )
        return kafka.SyncGroupResponse(
            error_code=answer.error_code,
            protocol_type=answer.protocol_type,
            protocol_name=answer.protocol_name,
            assignment=answer.assignment,
        )

    async def _heartbeat(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        answer = cast(
            g.HeartbeatResponse,
            await self.driver.call(
                request.group_id,
                "heartbeat",
                g.HeartbeatRequest(
                    group_id=request.group_id,
                    generation_id=request.generation_id,
                    member_id=request.member_id,
                    group_instance_id=request.group_instance_id if version >= 3 else None,
                ),
            ),
        )
        return kafka.HeartbeatResponse(error_code=answer.error_code)

    async def _leave_group(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        if version >= 3:
            members = tuple(
                g.LeavingMember(member_id=m.member_id, group_instance_id=m.group_instance_id)
                for m in request.members
            )
        else:
            members = (g.LeavingMember(member_id=request.member_id),)
        answer = cast(
            g.LeaveGroupResponse,
            await self.driver.call(
                request.group_id,
                "leave_group",
                g.LeaveGroupRequest(group_id=request.group_id, members=members),
            ),
        )
        Response = kafka.LeaveGroupResponse
        if version < 3:
            code = answer.error_code
            if code == ErrorCode.NONE and answer.members:
                code = answer.members[0].error_code
            return Response(error_code=code)
        return Response(
            error_code=answer.error_code,
            members=tuple(
                Response.MemberResponse(
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    error_code=m.error_code,
                )
                for m in answer.members
            ),
        )

    # ------------------------------------------------------------------ offsets

    async def _offset_commit(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        answer = cast(
            g.OffsetCommitResponse,
            await self.driver.call(
                request.group_id,
                "commit_offsets",
                g.OffsetCommitRequest(
                    group_id=request.group_id,
                    generation_id=request.generation_id_or_member_epoch,
                    member_id=request.member_id,
                    group_instance_id=request.group_instance_id if version >= 7 else None,
                    partitions=tuple(
                        g.CommitPartition(
                            topic=t.name,
                            partition=p.partition_index,
                            offset=p.committed_offset,
                            leader_epoch=p.committed_leader_epoch if version >= 6 else -1,
                            metadata=p.committed_metadata,
                        )
                        for t in request.topics
                        for p in t.partitions
                    ),
                ),
            ),
        )
        Response = kafka.OffsetCommitResponse
        by_topic: dict[str, list[Any]] = {}
        for result in answer.partitions:
            by_topic.setdefault(result.topic, []).append(
                Response.OffsetCommitResponsePartition(
                    partition_index=result.partition, error_code=result.error_code
                )
            )
        return Response(
            topics=tuple(
                Response.OffsetCommitResponseTopic(name=name, partitions=tuple(parts))
                for name, parts in by_topic.items()
            )
        )

    async def _offset_fetch(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        if version >= 8:
            return self._offset_fetch_groups(request)
        if not request.group_id:
            raise KafkaError(ErrorCode.INVALID_GROUP_ID, "the group id is empty")
        wanted = (
            None
            if request.topics is None
            else [(t.name, index) for t in request.topics for index in t.partition_indexes]
        )
        answer = self.driver.coordinator(request.group_id).fetch_offsets(request.group_id, wanted)
        if version >= 7 and request.require_stable:  # KIP-447
            answer = self.driver.stable_only(request.group_id, answer)
        Response = kafka.OffsetFetchResponse
        by_topic: dict[str, list[Any]] = {}
        for item in answer.partitions:
            by_topic.setdefault(item.topic, []).append(
                Response.OffsetFetchResponsePartition(
                    partition_index=item.partition,
                    committed_offset=item.offset,
                    committed_leader_epoch=item.leader_epoch if version >= 5 else -1,
                    metadata=item.metadata,
                    error_code=item.error_code,
                )
            )
        return Response(
            topics=tuple(
                Response.OffsetFetchResponseTopic(name=name, partitions=tuple(parts))
                for name, parts in by_topic.items()
            ),
            error_code=answer.error_code if version >= 2 else ErrorCode.NONE,
        )

    def _offset_fetch_groups(self, request: Any) -> Any:
        """OffsetFetch v8 (KIP-709): many groups, each answered (or refused) alone."""
        Response = kafka.OffsetFetchResponse
        groups = []
        for asked in request.groups:
            wanted = (
                None
                if asked.topics is None
                else [(t.name, index) for t in asked.topics for index in t.partition_indexes]
            )
            try:
                if not asked.group_id:
                    raise KafkaError(ErrorCode.INVALID_GROUP_ID, "the group id is empty")
                coordinator = self.driver.coordinator(asked.group_id)
            except KafkaError as error:
                groups.append(
                    Response.OffsetFetchResponseGroup(
                        group_id=asked.group_id, error_code=error.code
                    )
                )
                continue
            answer = coordinator.fetch_offsets(asked.group_id, wanted)
            if request.require_stable:  # KIP-447
                answer = self.driver.stable_only(asked.group_id, answer)
            by_topic: dict[str, list[Any]] = {}
            for item in answer.partitions:
                by_topic.setdefault(item.topic, []).append(
                    Response.OffsetFetchResponsePartitions(
                        partition_index=item.partition,
                        committed_offset=item.offset,
                        committed_leader_epoch=item.leader_epoch,
                        metadata=item.metadata,
                        error_code=item.error_code,
                    )
                )
            groups.append(
                Response.OffsetFetchResponseGroup(
                    group_id=asked.group_id,
                    error_code=answer.error_code,
                    topics=tuple(
                        Response.OffsetFetchResponseTopics(name=name, partitions=tuple(parts))
                        for name, parts in by_topic.items()
                    ),
                )
            )
        return Response(groups=tuple(groups))

    # ------------------------------------------------------------------ groups

    async def _describe_groups(self, header: Any, request: Any) -> Any:
        Response = kafka.DescribeGroupsResponse
        groups = []
        for group_id in request.groups:
            try:
                (found,) = self.driver.coordinator(group_id).describe_groups([group_id])
            except KafkaError as error:
                groups.append(Response.DescribedGroup(error_code=error.code, group_id=group_id))
                continue
            groups.append(
                Response.DescribedGroup(
                    error_code=found.error_code,
                    group_id=found.group_id,
                    group_state=found.state,
                    protocol_type=found.protocol_type,
                    protocol_data=found.protocol,
                    members=tuple(
                        Response.DescribedGroupMember(
                            member_id=m.member_id,
                            group_instance_id=m.group_instance_id,
                            client_id=m.client_id,
                            client_host=m.client_host,
                            member_metadata=m.metadata,
                            member_assignment=m.assignment,
                        )
                        for m in found.members
                    ),
                )
            )
        return Response(groups=tuple(groups))

    async def _list_groups(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        Response = kafka.ListGroupsResponse
        states = tuple(request.states_filter) if version >= 4 else ()
        listed = [
            group
            for coordinator in self.driver.loaded()
            for group in coordinator.list_groups(states)
        ]
        return Response(
            error_code=(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS if self.driver.loading() else ErrorCode.NONE
            ),
            groups=tuple(
                Response.ListedGroup(
                    group_id=group.group_id,
                    protocol_type=group.protocol_type,
                    group_state=group.state if version >= 4 else "",
                )
                for group in sorted(listed, key=lambda group: group.group_id)
            ),
        )

    async def _delete_groups(self, header: Any, request: Any) -> Any:
        Response = kafka.DeleteGroupsResponse
        results = []
        for group_id in request.groups_names:
            try:
                answer = cast(
                    tuple[g.DeletedGroup, ...],
                    await self.driver.call(group_id, "delete_groups", [group_id]),
                )
                code = answer[0].error_code
            except KafkaError as error:
                code = error.code
            results.append(Response.DeletableGroupResult(group_id=group_id, error_code=code))
        return Response(results=tuple(results))

    async def _offset_delete(self, header: Any, request: Any) -> Any:
        """Kafka's rules: GROUP_ID_NOT_FOUND for no such group, NON_EMPTY_GROUP for a
        group with members that is not a consumer group; per partition
        GROUP_SUBSCRIBED_TO_TOPIC while a member consumes its topic, and
        UNKNOWN_TOPIC_OR_PARTITION for one the metadata does not have."""
        Response = kafka.OffsetDeleteResponse
        image: MetadataImage = self.driver.replicas.image
        codes: dict[tuple[str, int], int] = {}
        for topic in request.topics:
            known = image.topic(topic.name)
            for item in topic.partitions:
                missing = known is None or item.partition_index not in known.partitions
                if missing:
                    codes[(topic.name, item.partition_index)] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        wanted = [
            (t.name, p.partition_index)
            for t in request.topics
            for p in t.partitions
            if (t.name, p.partition_index) not in codes
        ]
        answer = cast(
            g.OffsetDeleteResponse,
            await self.driver.call(request.group_id, "delete_offsets", request.group_id, wanted),
        )
        if answer.error_code != ErrorCode.NONE:
            return Response(error_code=answer.error_code)
        codes.update({(r.topic, r.partition): r.error_code for r in answer.partitions})
        by_topic: dict[str, list[Any]] = {}
        for t in request.topics:
            for p in t.partitions:
                by_topic.setdefault(t.name, []).append(
                    Response.OffsetDeleteResponsePartition(
                        partition_index=p.partition_index,
                        error_code=codes[(t.name, p.partition_index)],
                    )
                )
        return Response(
            error_code=ErrorCode.NONE,
            topics=tuple(
                Response.OffsetDeleteResponseTopic(name=name, partitions=tuple(partitions))
                for name, partitions in by_topic.items()
            ),
        )


def offset_delete_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.OffsetDeleteResponse(error_code=code)
