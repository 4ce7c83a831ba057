"""What an operator asks about transactions and producers, like kafka-transactions.sh.

    list_transactions(cluster)              every broker's coordinators (ListTransactions)
    describe_transactions(cluster, ids)     each id at its transaction coordinator
    describe_producers(cluster, topic, p)   the partition leader's producer state

`Admin` offers these as methods; `pykraft transactions list | describe ID` and
`pykraft producers TOPIC PARTITION` print them.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from client.cluster import ClusterClient
from client.group_coordinator_client import TRANSACTION_KEY_TYPE, GroupCoordinatorClient
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

DESCRIBE_PRODUCERS, DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS = 61, 65, 66


@attrs.frozen
class TransactionListing:
    transactional_id: str
    producer_id: int
    state: str


@attrs.frozen
class TransactionDescription:
    transactional_id: str
    state: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    start_time_ms: int  # -1 when no transaction is open
    partitions: tuple[tuple[str, int], ...]
    coordinator_id: int


@attrs.frozen
class ProducerDescription:
    producer_id: int
    epoch: int
    last_sequence: int
    last_timestamp: int
    coordinator_epoch: int
    current_txn_start_offset: int  # -1 when no transaction of it is open here


async def list_transactions(cluster: ClusterClient) -> list[TransactionListing]:
    """Every broker lists the transactional ids its coordinators hold."""
    await cluster.refresh([])
    found: dict[str, TransactionListing] = {}
    for broker in sorted(cluster.brokers):
        response = await cluster.request_broker(broker, kafka.ListTransactionsRequest())
        for item in response.transaction_states:
            found[item.transactional_id] = TransactionListing(
                item.transactional_id, item.producer_id, item.transaction_state
            )
    return [found[t] for t in sorted(found)]


async def describe_transactions(
    cluster: ClusterClient, transactional_ids: Sequence[str]
) -> list[TransactionDescription]:
    described = []
    for transactional_id in transactional_ids:
        coordinator = GroupCoordinatorClient(
            cluster, transactional_id, key_type=TRANSACTION_KEY_TYPE
        )
        try:
            response = await coordinator.call(
                lambda version, t=transactional_id: kafka.DescribeTransactionsRequest(
                    transactional_ids=(t,)
                ),
                DESCRIBE_TRANSACTIONS,
            )
            coordinator_id = coordinator.coordinator_id
        finally:
            await coordinator.forget()
        (state,) = response.transaction_states
        if state.error_code != ErrorCode.NONE:
            raise KafkaError(state.error_code, f"transactional id {transactional_id!r}")
        described.append(
            TransactionDescription(
                transactional_id=state.transactional_id,
                state=state.transaction_state,
                producer_id=state.producer_id,
                producer_epoch=state.producer_epoch,
                timeout_ms=state.transaction_timeout_ms,
                start_time_ms=state.transaction_start_time_ms,
                partitions=tuple(
                    (topic.topic, partition)
                    for topic in state.topics
                    for partition in sorted(topic.partitions)
                ),
                coordinator_id=coordinator_id,
            )
        )
    return described


async def describe_producers(
    cluster: ClusterClient, topic: str, partition: int
) -> list[ProducerDescription]:
    """The active producers of one partition, as its leader keeps them."""
    await cluster.refresh([topic])
    leader = cluster.leader(topic, partition)
    if leader is None:
        raise KafkaError(
            ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader in the metadata"
        )
    request = kafka.DescribeProducersRequest(
        topics=(
            kafka.DescribeProducersRequest.TopicRequest(name=topic, partition_indexes=(partition,)),
        )
    )
    response = await cluster.request_broker(leader.leader, request)
    (answer,) = response.topics[0].partitions
    if answer.error_code != ErrorCode.NONE:
        raise KafkaError(answer.error_code, answer.error_message or f"{topic}-{partition}")
    return [
        ProducerDescription(
            producer_id=p.producer_id,
            epoch=p.producer_epoch,
            last_sequence=p.last_sequence,
            last_timestamp=p.last_timestamp,
            coordinator_epoch=p.coordinator_epoch,
            current_txn_start_offset=p.current_txn_start_offset,
        )
        for p in answer.active_producers
    ]
