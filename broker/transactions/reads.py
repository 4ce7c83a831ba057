"""DescribeTransactions and ListTransactions: what a coordinator's state looks like to
an operator (`kafka-transactions describe | list`), read without changing anything."""

from __future__ import annotations

from collections.abc import Iterable

from broker.transactions.messages import (
    DescribedTransaction,
    ListedTransaction,
    ListTransactionsResponse,
    TopicPartition,
    TxnErrorCode,
)
from broker.transactions.state import TransactionMetadata, TransactionState
from client.protocol.errors import ErrorCode


def describe(
    meta: TransactionMetadata | None, transactional_id: str, id_error: int | None
) -> DescribedTransaction:
    code = id_error
    if code is None and meta is None:
        code = TxnErrorCode.TRANSACTIONAL_ID_NOT_FOUND
    if code is not None:
        return DescribedTransaction(transactional_id=transactional_id, error_code=code)
    assert meta is not None
    return DescribedTransaction(
        transactional_id=transactional_id,
        error_code=ErrorCode.NONE,
        state=meta.state.value,
        transaction_timeout_ms=meta.timeout_ms,
        transaction_start_time_ms=meta.start_timestamp_ms,
        producer_id=meta.producer_id,
        producer_epoch=meta.producer_epoch,
        topics=by_topic(meta.partitions),
    )


def list_transactions(
    transactions: Iterable[TransactionMetadata],
    state_filters: Iterable[str] = (),
    producer_id_filters: Iterable[int] = (),
    duration_filter_ms: int = -1,
    now_ms: int = 0,
) -> ListTransactionsResponse:
    """ListTransactions v0-1: every filter given must match (an empty one matches all);
    the duration filter (v1, KIP-994) keeps transactions started longer ago than that.
    State names Kafka does not know are returned as unknown, not refused."""
    known = {state.value for state in TransactionState}
    states = set(state_filters)
    producer_ids = set(producer_id_filters)
    listed = []
    for meta in sorted(transactions, key=lambda m: m.transactional_id):
        if states and meta.state.value not in states:
            continue
        if producer_ids and meta.producer_id not in producer_ids:
            continue
        if duration_filter_ms >= 0 and (
            meta.start_timestamp_ms < 0 or now_ms - meta.start_timestamp_ms <= duration_filter_ms
        ):
            continue
        listed.append(
            ListedTransaction(
                transactional_id=meta.transactional_id,
                producer_id=meta.producer_id,
                state=meta.state.value,
            )
        )
    return ListTransactionsResponse(
        error_code=ErrorCode.NONE,
        unknown_state_filters=tuple(sorted(states - known)),
        transactions=tuple(listed),
    )


def by_topic(partitions: frozenset[TopicPartition]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    grouped: dict[str, list[int]] = {}
    for topic, number in sorted(partitions):
        grouped.setdefault(topic, []).append(number)
    return tuple((topic, tuple(numbers)) for topic, numbers in grouped.items())


__all__ = ["by_topic", "describe", "list_transactions"]
