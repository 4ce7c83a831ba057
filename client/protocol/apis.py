"""API keys: Kafka's numbers where Kafka has the API, 1000+ for pykraft's own."""

from __future__ import annotations

import enum


class ApiKey(enum.IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    CREATE_TOPICS = 19
    DELETE_RECORDS = 21
    DELETE_TOPICS = 20
    CREATE_PARTITIONS = 37
    ELECT_LEADERS = 43
    INCREMENTAL_ALTER_CONFIGS = 44
    DESCRIBE_QUORUM = 55
    ALTER_PARTITION = 56
    DESCRIBE_CLUSTER = 60
    BROKER_REGISTRATION = 62
    BROKER_HEARTBEAT = 63
    ALLOCATE_PRODUCER_IDS = 67
    # Broker to broker only, on the partition leader's REPLICATION listener: body
    # `broker.transactions.messages.markers_body(...)`, answered by
    # `client.protocol.messages.WriteTxnMarkersResponse` (served by
    # `broker.txn_markers.TxnMarkerWriter`, called from `ReplicationApis`).
    WRITE_TXN_MARKERS = 27
    # pykraft's own: a node's metadata image offset and digest (tests, jepsen_like).
    DESCRIBE_IMAGE = 1000


API_VERSION = 0
