"""InitProducerId (v0-4) on the Kafka listener: producer ids for idempotent producers.

An idempotent producer (transactional_id null, KIP-679: every Kafka client's default)
asks any broker for a producer id and gets a fresh one from the broker's block, with
epoch 0. From v3 (KIP-360) it may name its current id and epoch to have the epoch
bumped after an error that left its sequences uncertain: it is answered with the same
id and the next epoch, from which partitions take its batches at sequence 0 again
(decision 0018; Kafka's coordinator hands such a producer a fresh id instead). An id
that was never allocated, or an epoch that would pass the int16 range, gets a fresh
id.

A transactional id goes to the transaction coordinator (`kafka_txn_apis`, over the
broker's `TxnDriver`). A broker built without one answers
TRANSACTIONAL_ID_AUTHORIZATION_FAILED, final in every client, as Kafka says it to a
principal without access; an empty transactional id is INVALID_REQUEST.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from broker.producer_ids import ProducerIdManager
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from kraft.metadata.image import MetadataImage
from storage.producer_state import EPOCH_MAX

log = logging.getLogger(__name__)

INIT_PRODUCER_ID = 22  # Kafka's API key (the native protocol has none)
INIT_PRODUCER_ID_VERSIONS = (0, 4)
NO_PRODUCER_ID, NO_PRODUCER_EPOCH = -1, -1


def init_producer_id_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.InitProducerIdResponse(
        error_code=code, producer_id=NO_PRODUCER_ID, producer_epoch=NO_PRODUCER_EPOCH
    )


class KafkaProducerApis:
    def __init__(
        self,
        producer_ids: ProducerIdManager,
        image: Callable[[], MetadataImage],
        transactional: Callable[[Any, Any], Awaitable[Any]] | None = None,
    ):
        self.producer_ids = producer_ids
        self.image = image
        self.transactional = transactional  # InitProducerId with a transactional id

    async def init_producer_id(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        if request.transactional_id and self.transactional is not None:
            return await self.transactional(header, request)
        if request.transactional_id is not None:
            log.warning(
                "InitProducerId for transactional id %r refused: transactions are not served",
                request.transactional_id,
            )
            code = (
                ErrorCode.INVALID_REQUEST
                if request.transactional_id == ""
                else ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            )
            return init_producer_id_error(request, version, code, "")
        if version >= 3 and self._may_bump(request.producer_id, request.producer_epoch):
            producer_id, epoch = request.producer_id, request.producer_epoch + 1
        else:
            try:
                producer_id, epoch = await self.producer_ids.next_id(), 0
            except KafkaError as error:
                return init_producer_id_error(request, version, error.code, error.message)
        return kafka.InitProducerIdResponse(
            error_code=ErrorCode.NONE, producer_id=producer_id, producer_epoch=epoch
        )

    def _may_bump(self, producer_id: int, epoch: int) -> bool:
        """Is this an id some broker handed out, with an epoch that can still grow?"""
        allocated = 0 <= producer_id < self.image().next_producer_id
        return allocated and 0 <= epoch < EPOCH_MAX


# DescribeProducers (KIP-664): the active producers of partitions this broker leads.
DESCRIBE_PRODUCERS = 61
DESCRIBE_PRODUCERS_VERSIONS = (0, 0)


def describe_producers_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DescribeProducersResponse
    return Response(
        topics=tuple(
            Response.TopicResponse(
                name=topic.name,
                partitions=tuple(
                    Response.PartitionResponse(
                        partition_index=index, error_code=code, error_message=message
                    )
                    for index in topic.partition_indexes
                ),
            )
            for topic in request.topics
        )
    )


class DescribeProducersApi:
    """Each named partition's producer state, read on its leader (as Kafka answers it:
    a follower says NOT_LEADER_OR_FOLLOWER, and the client asks the leader)."""

    def __init__(self, partition: Callable[[str, int], Any]) -> None:
        self.partition = partition  # ReplicaManager.partition: raises KafkaError

    async def describe_producers(self, header: Any, request: Any) -> Any:
        Response = kafka.DescribeProducersResponse
        Partition = Response.PartitionResponse
        topics = []
        for topic in request.topics:
            partitions = []
            for index in topic.partition_indexes:
                try:
                    partition = self.partition(topic.name, index)
                    if not partition.is_leader:
                        raise KafkaError(
                            ErrorCode.NOT_LEADER_OR_FOLLOWER,
                            f"{topic.name}-{index}: this broker does not lead it",
                        )
                except KafkaError as error:
                    partitions.append(
                        Partition(
                            partition_index=index,
                            error_code=error.code,
                            error_message=error.message,
                        )
                    )
                    continue
                producers = partition.producer_state.state.producers
                partitions.append(
                    Partition(
                        partition_index=index,
                        active_producers=tuple(
                            Response.ProducerState(
                                producer_id=entry.producer_id,
                                producer_epoch=entry.epoch,
                                last_sequence=entry.last_sequence,
                                last_timestamp=entry.last_timestamp,
                                coordinator_epoch=entry.coordinator_epoch,
                                current_txn_start_offset=entry.txn_first_offset,
                            )
                            for entry in sorted(producers.values(), key=lambda e: e.producer_id)
                        ),
                    )
                )
            topics.append(Response.TopicResponse(name=topic.name, partitions=tuple(partitions)))
        return Response(topics=tuple(topics))
