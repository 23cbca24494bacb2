"""Partition metadata reads that tolerate a topic's first seconds.

Right after a topic is created, a broker may answer NOT_LEADER_FOR_PARTITION or
LEADER_NOT_AVAILABLE until leadership has propagated; a worker assigned such a partition (a fresh
changelog, say) must wait that out rather than die.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
    }
)


def watermarks(client: Any, topic: str, partition: int, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) watermark offsets of one partition from the broker, retrying for up to
    `timeout` seconds while leadership settles; other errors are raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = client.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.code() in _SETTLING or error.retriable()) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
