"""Where a keyed record belongs: Kafka's default partitioner (murmur2), as the Java client computes it.

Per-key state, dedupe and ordering hold only when every record of a key sits on the one partition
``murmur2(key) % partitions`` puts it on, which is what the Java, Go and .NET clients and
librdkafka's ``murmur2_random`` do (and every producer of ours, see the product brief).
librdkafka's *default*, ``consistent_random``, hashes with CRC32 instead and puts most keys
elsewhere; a null key goes anywhere. confluent-kafka has no public helper for the Java hash, so it
is here, checked against Kafka's own test vectors and against librdkafka (tests/unit, tests/integration).
"""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_CACHE_LIMIT = 65536
_cache: dict[bytes, int] = {}


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the signed 32-bit hash the Java client returns for ``data``."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[whole + 2] << 16
        if rest >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``:
    ``toPositive(murmur2(key)) % partitions`` (the sign bit masked off, as Java does)."""
    positive = _cache.get(key)
    if positive is None:
        positive = murmur2(key) & 0x7FFFFFFF
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        if len(key) <= 256:  # keys repeat along a flow; a huge foreign key is not worth keeping
            _cache[key] = positive
    return positive % partitions


__all__ = ["murmur2", "partition_for"]
