"""`benchmarks/broker_requests.py` reads a real broker's request counts: records produced show up as
ProduceRequests and appended records, so a flow point's requests per order are the broker's own."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import broker_requests  # noqa: E402
from cpu_share import bootstrap_port, listening_pid  # noqa: E402

pytestmark = pytest.mark.kafka

RECORDS = 20


def test_produced_records_are_counted_by_the_broker(kafka_bootstrap: str) -> None:
    port = bootstrap_port(kafka_bootstrap)
    pid = listening_pid(port) if port else None
    reader = broker_requests.BrokerRequests.attach(pid)
    if reader is None:  # a broker in a container or elsewhere, or no JDK tools here
        pytest.skip(f"the broker at {kafka_bootstrap} is not a local JVM jcmd can attach to")
    before = reader.counts()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    topic = f"broker-requests-{uuid.uuid4().hex[:8]}"
    for i in range(RECORDS):
        producer.produce(topic, key=str(i).encode(), value=b"v")
        producer.flush(30)  # one request each: the count below cannot be met by batching
    after = reader.counts()
    per_order = broker_requests.per_order(before, after, orders=1)
    assert per_order is not None, (before, after)
    assert per_order.get("Produce", 0) >= RECORDS
    assert per_order.get("records_in", 0) >= RECORDS
    assert broker_requests.BrokerRequests.attach(pid) is not None  # the agent started above is reused
