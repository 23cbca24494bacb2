"""Kafka's default partitioner as the Java client computes it (the real-broker parity with
librdkafka's murmur2_random is in tests/integration/test_hostile_routing.py)."""

from __future__ import annotations

import pytest

from processors.partitioner import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize("data,expected", JAVA_MURMUR2)
def test_murmur2_is_the_java_clients_hash(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_masks_the_sign_bit_as_java_to_positive_does() -> None:
    # toPositive(-790332482) = 1357151166; 1357151166 % 50 = 16
    assert partition_for(b"foobar", 50) == 16
    assert all(0 <= partition_for(key, 7) < 7 for key, _ in JAVA_MURMUR2)


def test_every_tail_length_and_the_empty_key() -> None:
    # lengths 0..3 past a whole word each take another branch of the tail
    assert murmur2(b"") == 275646681
    seen = {murmur2(b"x" * n) for n in range(9)}
    assert len(seen) == 9


def test_cached_and_uncached_answers_agree() -> None:
    huge = b"k" * 10_000  # not cached
    assert partition_for(huge, 12) == (murmur2(huge) & 0x7FFFFFFF) % 12
    assert partition_for(b"order-1", 6) == partition_for(b"order-1", 6) == (murmur2(b"order-1") & 0x7FFFFFFF) % 6
