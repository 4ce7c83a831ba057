"""Which `__consumer_offsets` partition holds a group: Kafka's formula, bit for bit.

Kafka computes `Utils.abs(groupId.hashCode()) % partitions`: Java's `String.hashCode`
(31 * h + c over the UTF-16 code units, in 32-bit two's complement) and `Utils.abs`,
which maps Integer.MIN_VALUE to 0 rather than leaving it negative. A client that
computes it differently would look for its coordinator on the wrong broker.
"""

from __future__ import annotations

_INT_MIN = -(2**31)


def java_string_hash(text: str) -> int:
    """Java's String.hashCode: a signed 32-bit int."""
    data = text.encode("utf-16-be", errors="surrogatepass")
    value = 0
    for index in range(0, len(data), 2):
        value = (31 * value + ((data[index] << 8) | data[index + 1])) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def kafka_abs(value: int) -> int:
    """Kafka's Utils.abs: |value|, and 0 for Integer.MIN_VALUE."""
    return 0 if value == _INT_MIN else abs(value)


def partition_for(group_id: str, partitions: int) -> int:
    assert partitions > 0, partitions
    return kafka_abs(java_string_hash(group_id)) % partitions


__all__ = ["java_string_hash", "kafka_abs", "partition_for"]
