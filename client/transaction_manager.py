"""A transactional producer's side of Kafka's transaction protocol (KIP-98, KIP-447).

The transactional id names the producer across restarts: InitProducerId at the id's
transaction coordinator (FindCoordinator key type 1) fences every older producer of
the id and aborts what it left open. Inside a transaction each partition is added
with AddPartitionsToTxn before its first batch goes out (a leader refuses
transactional batches of partitions the coordinator does not know, KIP-890 part 1);
consumed offsets join with AddOffsetsToTxn, then TxnOffsetCommit at the group's
coordinator; EndTxn commits or aborts, and the coordinator writes the markers.

Errors: PRODUCER_FENCED, INVALID_PRODUCER_EPOCH, TRANSACTIONAL_ID_AUTHORIZATION_FAILED
and their kin are fatal (`ProducerFenced`, `TransactionFatal`): every later call
raises. A batch that failed inside a transaction makes it abortable only
(`TransactionAbortable` from commit): abort it and carry on.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from client.cluster import RETRY_BACKOFF_MS, ClusterClient
from client.group_coordinator_client import TRANSACTION_KEY_TYPE, GroupCoordinatorClient
from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.kafka import messages as kafka

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
INIT_PRODUCER_ID, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN = 22, 24, 25, 26
TXN_OFFSET_COMMIT = 28
# Answers after which the same request is asked again, after a backoff.
ASK_AGAIN = frozenset(
    {
        ErrorCode.CONCURRENT_TRANSACTIONS,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.NETWORK_EXCEPTION,
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    }
)
FENCED = frozenset({ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH})
FATAL = FENCED | {
    ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    ErrorCode.INVALID_PRODUCER_ID_MAPPING,
    ErrorCode.INVALID_TXN_STATE,
    ErrorCode.TRANSACTION_COORDINATOR_FENCED,
    ErrorCode.INVALID_TRANSACTION_TIMEOUT,
}
ASK_FOR_S = 60.0  # how long a coordinator that keeps saying "again" is asked


class TransactionError(KafkaError):
    """A transaction call failed (Kafka's code in `code`)."""


class TransactionFatal(TransactionError):
    """The producer can do nothing more: close it (and make a new one)."""

    @property
    def retriable(self) -> bool:
        return False


class ProducerFenced(TransactionFatal):
    """A newer producer with the same transactional id took over (this one is a zombie)."""


class TransactionAbortable(TransactionError):
    """The open transaction cannot commit: abort it; the producer stays usable."""

    @property
    def retriable(self) -> bool:
        return False


def transaction_error(code: int, message: str) -> TransactionError:
    if code in FENCED:
        return ProducerFenced(code, message)
    if code in FATAL:
        return TransactionFatal(code, message)
    return TransactionError(code, message)


@attrs.frozen
class GroupMetadata:
    """Kafka's ConsumerGroupMetadata: who commits the offsets of a transaction, so
    that the group coordinator refuses a zombie member's commit (KIP-447)."""

    group_id: str
    generation_id: int = -1
    member_id: str = ""
    group_instance_id: str | None = None


def consumer_group_metadata(consumer: Any) -> GroupMetadata:
    """A pykraft Consumer's group, generation and member id, as they are now."""
    member = consumer._require_group().member
    return GroupMetadata(
        member.group_id, member.generation_id, member.member_id, member.group_instance_id
    )


class TxnState(enum.Enum):
    UNINITIALIZED = "uninitialized"
    READY = "ready"
    IN_TRANSACTION = "in transaction"
    FATAL = "fatal"


class TransactionManager:
    def __init__(
        self, cluster: ClusterClient, transactional_id: str, transaction_timeout_ms: int
    ) -> None:
        if not transactional_id:
            raise ValueError("a transactional id must not be empty")
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.cluster = cluster
        self.coordinator = GroupCoordinatorClient(
            cluster, transactional_id, key_type=TRANSACTION_KEY_TYPE
        )
        self.state = TxnState.UNINITIALIZED
        self.fatal: TransactionError | None = None
        self.abortable: KafkaError | None = None  # a batch of the open transaction failed
        self.added: set[TopicPartition] = set()
        self.started = False  # a partition or offsets added: the coordinator knows of it
        self.opened: set[TopicPartition] = set()  # a batch acknowledged in this transaction
        self._adding = trio.Lock()
        self.producer_id = -1
        self.epoch = -1

    # ------------------------------------------------------------------ state

    def require(self, *states: TxnState) -> None:
        if self.fatal is not None:
            raise TransactionFatal(self.fatal.code, f"the producer failed before: {self.fatal}")
        if self.state not in states:
            raise TransactionError(
                ErrorCode.INVALID_TXN_STATE,
                f"{self.transactional_id}: {self.state.value}, "
                f"needs {' or '.join(s.value for s in states)}",
            )

    def batch_failed(self, error: KafkaError) -> None:
        """A transactional batch failed for good: fatal if fenced, else abortable."""
        if error.code in FATAL:
            self._fail(transaction_error(error.code, error.message))
        elif self.abortable is None:
            self.abortable = error

    def _fail(self, error: TransactionError) -> None:
        if self.fatal is None:
            log.warning("transactional id %s: fatal: %s", self.transactional_id, error)
            self.fatal = error
            self.state = TxnState.FATAL

    async def _ask(self, build: Callable[[int], Any], api_key: int, what: str) -> Any:
        """At the coordinator, asked again while it says so; fatal codes are kept."""
        deadline = trio.current_time() + ASK_FOR_S
        while True:
            try:
                return await self.coordinator.call(build, api_key)
            except KafkaError as error:
                if error.code in ASK_AGAIN and trio.current_time() < deadline:
                    log.debug("%s %s: asked again: %s", what, self.transactional_id, error)
                    await trio.sleep(RETRY_BACKOFF_MS / 1000)
                    continue
                failure = transaction_error(error.code, f"{what} {self.transactional_id}")
                if isinstance(failure, TransactionFatal):
                    self._fail(failure)
                raise failure from error

    # ------------------------------------------------------------------ the calls

    async def init(self, bump: bool = False) -> tuple[int, int]:
        """InitProducerId at the coordinator; `bump` names the current id and epoch."""
        self.require(TxnState.UNINITIALIZED, TxnState.READY)

        def build(version: int) -> Any:
            named = bump and version >= 3
            return kafka.InitProducerIdRequest(
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self.transaction_timeout_ms,
                producer_id=self.producer_id if named else -1,
                producer_epoch=self.epoch if named else -1,
            )

        response = await self._ask(build, INIT_PRODUCER_ID, "InitProducerId")
        self.producer_id, self.epoch = response.producer_id, response.producer_epoch
        self.state = TxnState.READY
        return self.producer_id, self.epoch

    def begin(self) -> None:
        self.require(TxnState.READY)
        self.state = TxnState.IN_TRANSACTION
        self.added.clear()
        self.opened.clear()
        self.started = False
        self.abortable = None

    async def add_partition(self, tp: TopicPartition) -> None:
        """AddPartitionsToTxn, once per partition and transaction."""
        if tp in self.added:
            return
        self.require(TxnState.IN_TRANSACTION)
        async with self._adding:
            if tp in self.added:
                return
            topic = kafka.AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(
                name=tp[0], partitions=(tp[1],)
            )

            def build(version: int) -> Any:
                return kafka.AddPartitionsToTxnRequest(
                    v3_and_below_transactional_id=self.transactional_id,
                    v3_and_below_producer_id=self.producer_id,
                    v3_and_below_producer_epoch=self.epoch,
                    v3_and_below_topics=(topic,),
                )

            deadline = trio.current_time() + ASK_FOR_S
            while True:
                response = await self._ask(build, ADD_PARTITIONS_TO_TXN, "AddPartitionsToTxn")
                codes = {
                    p.partition_error_code
                    for t in response.results_by_topic_v3_and_below
                    for p in t.results_by_partition
                } - {ErrorCode.NONE}
                if not codes:
                    self.added.add(tp)
                    self.started = True
                    return
                code = min(codes)
                if code in ASK_AGAIN and trio.current_time() < deadline:
                    await trio.sleep(RETRY_BACKOFF_MS / 1000)
                    continue
                failure = transaction_error(code, f"AddPartitionsToTxn {tp[0]}-{tp[1]}")
                if isinstance(failure, TransactionFatal):
                    self._fail(failure)
                raise failure

    async def send_offsets(
        self, offsets: Mapping[TopicPartition, int], group: GroupMetadata
    ) -> None:
        """AddOffsetsToTxn at the transaction coordinator, TxnOffsetCommit at the group's."""
        self.require(TxnState.IN_TRANSACTION)
        await self._ask(
            lambda version: kafka.AddOffsetsToTxnRequest(
                transactional_id=self.transactional_id,
                producer_id=self.producer_id,
                producer_epoch=self.epoch,
                group_id=group.group_id,
            ),
            ADD_OFFSETS_TO_TXN,
            "AddOffsetsToTxn",
        )
        self.started = True
        Topic = kafka.TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic
        Partition = kafka.TxnOffsetCommitRequest.TxnOffsetCommitRequestPartition
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), offset in sorted(offsets.items()):
            by_topic.setdefault(topic, []).append(
                Partition(partition_index=partition, committed_offset=offset)
            )
        topics = tuple(Topic(name=t, partitions=tuple(p)) for t, p in by_topic.items())

        def build(version: int) -> Any:
            return kafka.TxnOffsetCommitRequest(
                transactional_id=self.transactional_id,
                group_id=group.group_id,
                producer_id=self.producer_id,
                producer_epoch=self.epoch,
                generation_id=group.generation_id,
                member_id=group.member_id,
                group_instance_id=group.group_instance_id,
                topics=topics,
            )

        offsets_coordinator = GroupCoordinatorClient(self.cluster, group.group_id)
        deadline = trio.current_time() + ASK_FOR_S
        try:
            while True:
                response = await offsets_coordinator.call(build, TXN_OFFSET_COMMIT)
                codes = {p.error_code for t in response.topics for p in t.partitions}
                codes -= {ErrorCode.NONE}
                if not codes:
                    return
                code = min(codes)
                if code in ASK_AGAIN and trio.current_time() < deadline:
                    await offsets_coordinator.forget()
                    await trio.sleep(RETRY_BACKOFF_MS / 1000)
                    continue
                failure = transaction_error(code, f"TxnOffsetCommit for group {group.group_id}")
                if isinstance(failure, TransactionFatal):
                    self._fail(failure)
                else:
                    self.abortable = failure  # a zombie member's offsets: abort
                raise failure
        finally:
            await offsets_coordinator.forget()

    async def end(self, commit: bool) -> tuple[int, int] | None:
        """EndTxn; the transaction is over once the coordinator has it. At v5 (KIP-890
        part 2) the answer names the producer id and epoch the next transaction uses:
        returned when they differ from this one's (None otherwise)."""
        self.require(TxnState.IN_TRANSACTION)
        if not self.started:  # nothing reached the coordinator: nothing to end there
            self.state = TxnState.READY
            return None
        response = await self._ask(
            lambda version: kafka.EndTxnRequest(
                transactional_id=self.transactional_id,
                producer_id=self.producer_id,
                producer_epoch=self.epoch,
                committed=commit,
            ),
            END_TXN,
            "EndTxn",
        )
        self.state = TxnState.READY
        self.added.clear()
        self.opened.clear()
        self.started = False
        self.abortable = None
        identity = (response.producer_id, response.producer_epoch)
        if identity[0] < 0 or identity == (self.producer_id, self.epoch):
            return None  # before v5, or a coordinator that did not bump
        self.producer_id, self.epoch = identity
        return identity

    async def aclose(self) -> None:
        await self.coordinator.forget()
