"""What the transaction coordinator is told (its settings) and what each of its calls
decides (`Effects`), in the order the driver must carry it out: see
`broker.transactions.coordinator`."""

from __future__ import annotations

import attrs

from broker.transactions.messages import Response, Token, TxnMarkers
from broker.transactions.records import TxnRecord


@attrs.frozen(kw_only=True)
class TxnConfig:
    """The broker's transaction settings; defaults are Kafka's."""

    transaction_state_partitions: int = 50  # transaction.state.log.num.partitions
    offsets_topic_partitions: int = 50  # offsets.topic.num.partitions
    transaction_max_timeout_ms: int = 900_000  # transaction.max.timeout.ms
    transactional_id_expiration_ms: int = 7 * 24 * 3600 * 1000  # transactional.id.expiration.ms


@attrs.define
class Effects:
    """What one call decided: records to append, then replies, then markers to send."""

    records: list[TxnRecord] = attrs.field(factory=list)
    replies: list[tuple[Token, Response]] = attrs.field(factory=list)
    markers: list[TxnMarkers] = attrs.field(factory=list)
    producer_id_needed: bool = False  # nothing decided: call again with a fresh id

    def write(self, record: TxnRecord) -> None:
        self.records.append(record)

    def reply(self, token: Token, response: Response) -> None:
        assert all(held != token for held, _ in self.replies), f"two replies to {token!r}"
        self.replies.append((token, response))

    def reply_to(self, token: Token) -> Response | None:
        for held, response in self.replies:
            if held == token:
                return response
        return None


__all__ = ["Effects", "TxnConfig"]
