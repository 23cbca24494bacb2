"""The real cause behind a Kafka request that only timed out."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException

from processors.kafka_diagnosis import failure_of, probe
from processors.kafka_errors import KafkaFailure
from processors.localbroker.broker import free_port


def test_a_closed_port_is_named_unreachable_within_seconds() -> None:
    port = free_port()  # nothing listens there: connections are refused at once
    started = time.monotonic()
    failure = probe({"bootstrap.servers": f"127.0.0.1:{port}"}, timeout=10)
    assert failure is not None and time.monotonic() - started < 10
    assert f"connect to 127.0.0.1:{port}: broker unreachable" in str(failure)
    assert "Connection refused" in str(failure)


def test_what_is_no_timeout_is_reported_as_it_is() -> None:
    own = KafkaFailure(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), topic="t", action="read")
    assert failure_of(own) is own
    denied = failure_of(KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)), action="join")
    assert denied is not None and str(denied).startswith("join: group authorization failed")
    assert failure_of(ValueError("not Kafka")) is None
