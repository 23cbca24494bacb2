"""Watermark reads wait out leadership settling after topic creation, and nothing else."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from processors.runtime.topics import watermarks


class FlakyClient:
    def __init__(self, errors: list[int]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, tp, timeout, cached):
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return (3, 42)


def test_leadership_errors_are_waited_out():
    client = FlakyClient([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE])
    assert watermarks(client, "t", 0, timeout=5) == (3, 42)
    assert client.calls == 3


def test_other_errors_are_raised_at_once():
    client = FlakyClient([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        watermarks(client, "t", 0, timeout=5)
    assert client.calls == 1


def test_the_wait_is_bounded():
    client = FlakyClient([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException):
        watermarks(client, "t", 0, timeout=0.5)
