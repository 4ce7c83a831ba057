"""Producer id blocks for idempotent and transactional producers (KIP-730).

A broker asks for a block and hands its ids out locally; the controller only records
where the next block starts. Ids are never reused: the record is committed before
the block is returned, and replay refuses a block that does not move forward.
"""

from __future__ import annotations

import attrs

from client.protocol.errors import ErrorCode
from kraft.controller.result import ControllerResult
from kraft.metadata.image import MetadataImage
from kraft.metadata.records import ProducerIdsRecord

# Kafka's ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE.
PRODUCER_ID_BLOCK_SIZE = 1000
# Producer ids are int64 in the wire protocol; stop well before they could wrap.
PRODUCER_ID_LIMIT = 2**63 - 1


@attrs.frozen(kw_only=True)
class ProducerIdsOutcome:
    error_code: int
    first_producer_id: int = -1
    size: int = 0
    message: str = ""


def allocate_producer_ids(
    image: MetadataImage, broker_id: int, broker_epoch: int
) -> ControllerResult:
    registration = image.brokers.get(broker_id)
    if registration is None or registration.broker_epoch != broker_epoch:
        return ControllerResult(
            records=(),
            response=ProducerIdsOutcome(
                error_code=ErrorCode.STALE_BROKER_EPOCH,
                message=f"broker {broker_id} epoch {broker_epoch} is not current",
            ),
        )
    first = image.next_producer_id
    if first + PRODUCER_ID_BLOCK_SIZE > PRODUCER_ID_LIMIT:
        return ControllerResult(
            records=(),
            response=ProducerIdsOutcome(
                error_code=ErrorCode.UNKNOWN_SERVER_ERROR, message="producer ids are exhausted"
            ),
        )
    record = ProducerIdsRecord(
        broker_id=broker_id,
        broker_epoch=broker_epoch,
        next_producer_id=first + PRODUCER_ID_BLOCK_SIZE,
    )
    return ControllerResult(
        records=(record,),
        response=ProducerIdsOutcome(
            error_code=ErrorCode.NONE, first_producer_id=first, size=PRODUCER_ID_BLOCK_SIZE
        ),
    )
