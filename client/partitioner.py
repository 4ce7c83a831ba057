"""Kafka's default partitioner for keyed records: murmur2 of the key bytes.

Same function and constants as the Java client's `Utils.murmur2` (seed 0x9747b28c),
so a keyed record lands on the partition any other Kafka client would choose:
partition = (murmur2(key) & 0x7fffffff) % partition_count.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """32-bit murmur2 of `data`, as an unsigned int (Java's value & 0xffffffff)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def to_positive(value: int) -> int:
    return value & 0x7FFFFFFF


def partition_for_key(key: bytes, partition_count: int) -> int:
    if partition_count <= 0:
        raise ValueError(f"partition count must be > 0, got {partition_count}")
    return to_positive(murmur2(key)) % partition_count
