"""The transaction coordinator's pure core: Kafka's transactions (KIP-98, KIP-360,
KIP-588, KIP-890) over the records of `__transaction_state` (no trio, no I/O, no
clock: the broker's driver wires it in, as `broker.groups` is wired by group_driver)."""

from broker.transactions.coordinator import (
    OFFSETS_TOPIC,
    Effects,
    TransactionCoordinator,
    TxnConfig,
)
from broker.transactions.records import TxnLogValue, TxnRecord, TxnRecordError
from broker.transactions.state import ALLOWED_TRANSITIONS, TransactionMetadata, TransactionState

__all__ = [
    "ALLOWED_TRANSITIONS",
    "OFFSETS_TOPIC",
    "Effects",
    "TransactionCoordinator",
    "TransactionMetadata",
    "TransactionState",
    "TxnConfig",
    "TxnLogValue",
    "TxnRecord",
    "TxnRecordError",
]
