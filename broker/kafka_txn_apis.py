"""Kafka's transaction APIs on the client listener (issue 17): each handler maps Kafka's
generated messages onto `broker.transactions.messages` and the `TxnDriver`, and back.

InitProducerId 0-4 with a transactional id (the idempotent case stays in
`kafka_producer_apis`), AddPartitionsToTxn 0-5 (v4+: several transactions, and
`verify_only`, which partition leaders send: KIP-890 part 1), AddOffsetsToTxn 0-4,
EndTxn 0-5 (v5+: transaction version 2, the bumped epoch in the answer),
DescribeTransactions 0, ListTransactions 0-1. Clients older than KIP-588 learn
PRODUCER_FENCED as INVALID_PRODUCER_EPOCH. A request for an id this broker does not
coordinate is answered NOT_COORDINATOR (COORDINATOR_LOAD_IN_PROGRESS while loading).

`TransactionVerifier` is the partition leader's side of KIP-890 part 1: it asks the
transaction's coordinator whether a partition was added, locally if this broker is
the coordinator, else by AddPartitionsToTxn v4 `verify_only` over the Kafka protocol.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

from broker.transactions import messages as t
from broker.transactions.reads import by_topic
from broker.txn_driver import TRANSACTION_STATE_TOPIC, TxnDriver
from client.kafka_connection import KafkaConnection
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

log = logging.getLogger(__name__)

# Kafka's API keys (the native protocol has none of them).
INIT_PRODUCER_ID, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN = 22, 24, 25, 26
DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS = 65, 66
VERIFY_VERSION = 4  # AddPartitionsToTxn's first version with verify_only
VERIFY_TIMEOUT_S = 10.0

Handle = Callable[[Any, Any], Awaitable[Any]]
ErrorBuilder = Callable[[Any, int, int, str], Any]


def _fenced_known(api_key: int, version: int) -> bool:
    """KIP-588: from which version a client understands PRODUCER_FENCED."""
    return version >= (4 if api_key == INIT_PRODUCER_ID else 2)


class KafkaTxnApis:
    def __init__(self, driver: TxnDriver) -> None:
        self.driver = driver

    def served(self) -> dict[int, tuple[int, int, Handle, ErrorBuilder]]:
        return {
            ADD_PARTITIONS_TO_TXN: (0, 5, self._add_partitions, add_partitions_error),
            ADD_OFFSETS_TO_TXN: (0, 4, self._add_offsets, add_offsets_error),
            END_TXN: (0, 5, self._end_txn, end_txn_error),
            DESCRIBE_TRANSACTIONS: (0, 0, self._describe, describe_transactions_error),
            LIST_TRANSACTIONS: (0, 1, self._list, list_transactions_error),
        }

    # ------------------------------------------------------------------ InitProducerId

    async def init_producer_id(self, header: Any, request: Any) -> Any:
        """InitProducerId with a transactional id (KafkaProducerApis hands it here)."""
        version = header.request_api_version
        claimed = version >= 3
        native = t.InitProducerIdRequest(
            transactional_id=request.transactional_id,
            transaction_timeout_ms=request.transaction_timeout_ms,
            producer_id=request.producer_id if claimed else -1,
            producer_epoch=request.producer_epoch if claimed else -1,
        )
        answer = cast(
            t.InitProducerIdResponse,
            await self.driver.call(native.transactional_id, "init_producer_id", native),
        )
        return kafka.InitProducerIdResponse(
            error_code=t.for_client_version(answer.error_code, version >= 4),
            producer_id=answer.producer_id,
            producer_epoch=answer.producer_epoch,
        )

    # ------------------------------------------------------------------ AddPartitionsToTxn

    async def _add_partitions(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        Response = kafka.AddPartitionsToTxnResponse
        if version < 4:
            native = t.AddPartitionsToTxnRequest(
                transactional_id=request.v3_and_below_transactional_id,
                producer_id=request.v3_and_below_producer_id,
                producer_epoch=request.v3_and_below_producer_epoch,
                partitions=_partitions(request.v3_and_below_topics),
            )
            answer = await self._add_one(native)
            known = version >= 2
            return Response(results_by_topic_v3_and_below=_topic_results(answer, known))
        results = []
        for transaction in request.transactions:
            native = t.AddPartitionsToTxnRequest(
                transactional_id=transaction.transactional_id,
                producer_id=transaction.producer_id,
                producer_epoch=transaction.producer_epoch,
                partitions=_partitions(transaction.topics),
                verify_only=transaction.verify_only,
            )
            answer = await self._add_one(native)
            results.append(
                Response.AddPartitionsToTxnResult(
                    transactional_id=native.transactional_id,
                    topic_results=_topic_results(answer, True),
                )
            )
        return Response(error_code=ErrorCode.NONE, results_by_transaction=tuple(results))

    async def _add_one(self, native: t.AddPartitionsToTxnRequest) -> t.AddPartitionsToTxnResponse:
        """One transaction's answer; the driver's errors become every partition's code."""
        try:
            answer = await self.driver.call(
                native.transactional_id, "add_partitions_to_txn", native
            )
        except KafkaError as error:
            results = tuple(
                t.PartitionResult(topic=topic, partition=index, error_code=error.code)
                for topic, index in native.partitions
            )
            return t.AddPartitionsToTxnResponse(error_code=error.code, results=results)
        return cast(t.AddPartitionsToTxnResponse, answer)

    # ------------------------------------------------------------------ AddOffsetsToTxn

    async def _add_offsets(self, header: Any, request: Any) -> Any:
        native = t.AddOffsetsToTxnRequest(
            transactional_id=request.transactional_id,
            producer_id=request.producer_id,
            producer_epoch=request.producer_epoch,
            group_id=request.group_id,
        )
        answer = cast(
            t.AddOffsetsToTxnResponse,
            await self.driver.call(native.transactional_id, "add_offsets_to_txn", native),
        )
        known = _fenced_known(ADD_OFFSETS_TO_TXN, header.request_api_version)
        return kafka.AddOffsetsToTxnResponse(
            error_code=t.for_client_version(answer.error_code, known)
        )

    # ------------------------------------------------------------------ EndTxn

    async def _end_txn(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        native = t.EndTxnRequest(
            transactional_id=request.transactional_id,
            producer_id=request.producer_id,
            producer_epoch=request.producer_epoch,
            committed=request.committed,
            transaction_version_2=version >= 5,
        )
        answer = cast(
            t.EndTxnResponse, await self.driver.call(native.transactional_id, "end_txn", native)
        )
        code = t.for_client_version(answer.error_code, _fenced_known(END_TXN, version))
        if version < 5:
            return kafka.EndTxnResponse(error_code=code)
        return kafka.EndTxnResponse(
            error_code=code, producer_id=answer.producer_id, producer_epoch=answer.producer_epoch
        )

    # ------------------------------------------------------------------ reads

    async def _describe(self, header: Any, request: Any) -> Any:
        Response = kafka.DescribeTransactionsResponse
        states = []
        for transactional_id in request.transactional_ids:
            try:
                coordinator = self.driver.coordinator(transactional_id)
                (found,) = coordinator.describe_transactions([transactional_id])
            except KafkaError as error:
                found = t.DescribedTransaction(
                    transactional_id=transactional_id, error_code=error.code
                )
            states.append(
                Response.TransactionState(
                    error_code=found.error_code,
                    transactional_id=found.transactional_id,
                    transaction_state=found.state,
                    transaction_timeout_ms=found.transaction_timeout_ms,
                    transaction_start_time_ms=found.transaction_start_time_ms,
                    producer_id=found.producer_id,
                    producer_epoch=found.producer_epoch,
                    topics=tuple(
                        Response.TopicData(topic=topic, partitions=partitions)
                        for topic, partitions in found.topics
                    ),
                )
            )
        return Response(transaction_states=tuple(states))

    async def _list(self, header: Any, request: Any) -> Any:
        version = header.request_api_version
        Response = kafka.ListTransactionsResponse
        if self.driver.loading():
            return list_transactions_error(
                request, version, ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, ""
            )
        now = self.driver.now_ms()
        unknown: set[str] = set()
        listed: list[t.ListedTransaction] = []
        for coordinator in self.driver.loaded():
            answer = coordinator.list_transactions(
                request.state_filters,
                request.producer_id_filters,
                request.duration_filter if version >= 1 else -1,
                now,
            )
            unknown.update(answer.unknown_state_filters)
            listed.extend(answer.transactions)
        return Response(
            error_code=ErrorCode.NONE,
            unknown_state_filters=tuple(sorted(unknown)),
            transaction_states=tuple(
                Response.TransactionState(
                    transactional_id=item.transactional_id,
                    producer_id=item.producer_id,
                    transaction_state=item.state,
                )
                for item in sorted(listed, key=lambda item: item.transactional_id)
            ),
        )


# ---------------------------------------------------------------------- mapping


def _partitions(topics: Any) -> tuple[t.TopicPartition, ...]:
    return tuple((topic.name, index) for topic in topics for index in topic.partitions)


def _topic_results(answer: t.AddPartitionsToTxnResponse, fenced_known: bool) -> tuple[Any, ...]:
    Response = kafka.AddPartitionsToTxnResponse
    codes = {(r.topic, r.partition): r.error_code for r in answer.results}
    return tuple(
        Response.AddPartitionsToTxnTopicResult(
            name=topic,
            results_by_partition=tuple(
                Response.AddPartitionsToTxnPartitionResult(
                    partition_index=index,
                    partition_error_code=t.for_client_version(codes[(topic, index)], fenced_known),
                )
                for index in indexes
            ),
        )
        for topic, indexes in by_topic(frozenset(codes))
    )


# ---------------------------------------------------------------------- whole-request errors


def add_partitions_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.AddPartitionsToTxnResponse
    if version >= 4:
        return Response(error_code=code)
    partitions = _partitions(request.v3_and_below_topics)
    answer = t.AddPartitionsToTxnResponse(
        error_code=code,
        results=tuple(
            t.PartitionResult(topic=topic, partition=index, error_code=code)
            for topic, index in partitions
        ),
    )
    return Response(results_by_topic_v3_and_below=_topic_results(answer, version >= 2))


def add_offsets_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.AddOffsetsToTxnResponse(error_code=t.for_client_version(code, version >= 2))


def end_txn_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.EndTxnResponse(error_code=t.for_client_version(code, version >= 2))


def describe_transactions_error(request: Any, version: int, code: int, message: str) -> Any:
    Response = kafka.DescribeTransactionsResponse
    return Response(
        transaction_states=tuple(
            Response.TransactionState(error_code=code, transactional_id=tid, transaction_state="")
            for tid in request.transactional_ids
        )
    )


def list_transactions_error(request: Any, version: int, code: int, message: str) -> Any:
    return kafka.ListTransactionsResponse(error_code=code)


# ---------------------------------------------------------------------- KIP-890 part 1


# A coordinator that cannot answer now: the producer retries its batch (Kafka answers
# these as NOT_ENOUGH_REPLICAS too, which every client retries).
_RETRIABLE = frozenset(
    {
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.CONCURRENT_TRANSACTIONS,
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.NETWORK_EXCEPTION,
    }
)


class TransactionVerifier:
    """`DataApis`' verify_transaction: (transactional id, producer id, epoch, topic,
    partition) -> the error code the Produce answers (NONE: the partition was added)."""

    def __init__(self, driver: TxnDriver) -> None:
        self.driver = driver
        self._connections: dict[int, KafkaConnection] = {}

    async def __call__(
        self, transactional_id: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> int:
        try:
            if self.driver.leads(transactional_id):
                code = await self.driver.verify_local(
                    transactional_id, producer_id, epoch, topic, partition
                )
            else:
                code = await self._verify_remote(
                    transactional_id, producer_id, epoch, topic, partition
                )
        except KafkaError as error:
            code = error.code
        if code in _RETRIABLE:
            return ErrorCode.NOT_ENOUGH_REPLICAS
        if code == ErrorCode.PRODUCER_FENCED:
            return ErrorCode.INVALID_PRODUCER_EPOCH  # what Produce answers a zombie
        return code

    async def _verify_remote(
        self, transactional_id: str, producer_id: int, epoch: int, topic: str, partition: int
    ) -> int:
        node, host, port, code, _message = await self.driver.find_coordinator(transactional_id)
        if code != ErrorCode.NONE:
            return code
        connection = self._connections.get(node)
        if connection is None or (connection.host, connection.port) != (host, port):
            if connection is not None:
                await connection.aclose()
            connection = self._connections[node] = KafkaConnection(
                host,
                port,
                client_id=f"txn-verify-{self.driver.replicas.broker_id}",
                rng=random.Random(self.driver.rng.random()),
            )
        Request = kafka.AddPartitionsToTxnRequest
        request = Request(
            transactions=(
                Request.AddPartitionsToTxnTransaction(
                    transactional_id=transactional_id,
                    producer_id=producer_id,
                    producer_epoch=epoch,
                    verify_only=True,
                    topics=(Request.AddPartitionsToTxnTopic(name=topic, partitions=(partition,)),),
                ),
            )
        )
        answer = await connection.request(
            request, version=VERIFY_VERSION, timeout_s=VERIFY_TIMEOUT_S
        )
        for result in answer.results_by_transaction:
            for topic_result in result.topic_results:
                for item in topic_result.results_by_partition:
                    if topic_result.name == topic and item.partition_index == partition:
                        return int(item.partition_error_code)
        return ErrorCode.INVALID_TXN_STATE

    async def aclose(self) -> None:
        for connection in self._connections.values():
            await connection.aclose()
        self._connections.clear()


__all__ = [
    "INIT_PRODUCER_ID",
    "TRANSACTION_STATE_TOPIC",
    "KafkaTxnApis",
    "TransactionVerifier",
]
