"""The transactional producer's state machine (client/transaction_manager.py), scripted
against a fake coordinator: no cluster, no network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from client.cluster import ClusterClient
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka
from client.transaction_manager import (
    ADD_PARTITIONS_TO_TXN,
    END_TXN,
    INIT_PRODUCER_ID,
    ProducerFenced,
    TransactionError,
    TransactionFatal,
    TransactionManager,
    TxnState,
)

Answer = Any  # a response, or a KafkaError to raise


class ScriptedCoordinator:
    """Answers each call with the next scripted answer for its api; records what was
    asked (built at the version the script names)."""

    def __init__(self, script: dict[int, list[Answer]], version: int = 5) -> None:
        self.script = script
        self.version = version
        self.asked: list[tuple[int, Any]] = []

    async def call(self, build: Callable[[int], Any], api_key: int, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.asked.append((api_key, build(self.version)))
        answer = self.script[api_key].pop(0)
        if isinstance(answer, KafkaError):
            raise answer
        return answer

    async def forget(self) -> None:
        pass


def manager(script: dict[int, list[Answer]], version: int = 5) -> TransactionManager:
    tm = TransactionManager(ClusterClient("127.0.0.1:1"), "tx", 60_000)
    tm.coordinator = ScriptedCoordinator(script, version)  # type: ignore[assignment]
    return tm


def init_answer(pid: int = 7, epoch: int = 0) -> Any:
    return kafka.InitProducerIdResponse(producer_id=pid, producer_epoch=epoch)


def added(code: int = ErrorCode.NONE) -> Any:
    Result = kafka.AddPartitionsToTxnResponse.AddPartitionsToTxnTopicResult
    Partition = kafka.AddPartitionsToTxnResponse.AddPartitionsToTxnPartitionResult
    return kafka.AddPartitionsToTxnResponse(
        results_by_topic_v3_and_below=(
            Result(
                name="t",
                results_by_partition=(Partition(partition_index=0, partition_error_code=code),),
            ),
        )
    )


async def test_an_end_at_v5_hands_the_next_epoch_and_the_next_transaction_uses_it() -> None:
    tm = manager(
        {
            INIT_PRODUCER_ID: [init_answer(7, 3)],
            ADD_PARTITIONS_TO_TXN: [added(), added()],
            END_TXN: [
                kafka.EndTxnResponse(producer_id=7, producer_epoch=4),
                kafka.EndTxnResponse(producer_id=7, producer_epoch=5),
            ],
        }
    )
    assert await tm.init() == (7, 3)
    tm.begin()
    await tm.add_partition(("t", 0))
    assert await tm.end(commit=True) == (7, 4)
    assert tm.state is TxnState.READY and not tm.added
    tm.begin()
    await tm.add_partition(("t", 0))
    assert await tm.end(commit=False) == (7, 5)
    asked = tm.coordinator.asked  # type: ignore[attr-defined]
    epochs = [
        (key, getattr(r, "producer_epoch", getattr(r, "v3_and_below_producer_epoch", None)))
        for key, r in asked
    ]
    assert epochs == [
        (INIT_PRODUCER_ID, -1),
        (ADD_PARTITIONS_TO_TXN, 3),
        (END_TXN, 3),
        (ADD_PARTITIONS_TO_TXN, 4),
        (END_TXN, 4),
    ]


async def test_an_end_that_names_the_same_epoch_keeps_it() -> None:
    # A broker that serves EndTxn below v5 answers no producer id (-1): nothing changes.
    for answer in (kafka.EndTxnResponse(), kafka.EndTxnResponse(producer_id=7, producer_epoch=3)):
        tm = manager(
            {
                INIT_PRODUCER_ID: [init_answer(7, 3)],
                ADD_PARTITIONS_TO_TXN: [added()],
                END_TXN: [answer],
            }
        )
        await tm.init()
        tm.begin()
        await tm.add_partition(("t", 0))
        assert await tm.end(commit=True) is None
        assert (tm.producer_id, tm.epoch) == (7, 3)


async def test_nothing_added_ends_without_asking_the_coordinator() -> None:
    tm = manager({INIT_PRODUCER_ID: [init_answer()], END_TXN: []})
    await tm.init()
    tm.begin()
    assert await tm.end(commit=True) is None
    assert tm.state is TxnState.READY
    assert [key for key, _ in tm.coordinator.asked] == [INIT_PRODUCER_ID]  # type: ignore[attr-defined]


async def test_concurrent_transactions_is_asked_again_then_succeeds(autojump_clock: Any) -> None:
    busy = KafkaError(ErrorCode.CONCURRENT_TRANSACTIONS, "markers still going")
    tm = manager(
        {
            INIT_PRODUCER_ID: [busy, busy, init_answer(9, 0)],
            ADD_PARTITIONS_TO_TXN: [added(ErrorCode.CONCURRENT_TRANSACTIONS), added()],
        }
    )
    assert await tm.init() == (9, 0)
    tm.begin()
    await tm.add_partition(("t", 0))
    assert ("t", 0) in tm.added and tm.started


async def test_a_fenced_producer_is_fatal_for_every_later_call() -> None:
    tm = manager(
        {
            INIT_PRODUCER_ID: [init_answer()],
            ADD_PARTITIONS_TO_TXN: [added(ErrorCode.PRODUCER_FENCED)],
        }
    )
    await tm.init()
    tm.begin()
    with pytest.raises(ProducerFenced):
        await tm.add_partition(("t", 0))
    assert tm.state is TxnState.FATAL
    with pytest.raises(TransactionFatal):
        tm.require(TxnState.IN_TRANSACTION)
    with pytest.raises(TransactionFatal):
        await tm.end(commit=False)


async def test_calls_out_of_order_are_refused_with_invalid_txn_state() -> None:
    tm = manager({INIT_PRODUCER_ID: [init_answer()]})
    with pytest.raises(TransactionError) as before_init:
        tm.begin()
    assert before_init.value.code == ErrorCode.INVALID_TXN_STATE
    await tm.init()
    with pytest.raises(TransactionError):
        await tm.end(commit=True)  # no transaction begun
    tm.begin()
    with pytest.raises(TransactionError):
        tm.begin()  # one at a time
