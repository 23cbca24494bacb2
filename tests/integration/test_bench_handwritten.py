"""The benchmark's fair baseline (benchmarks/handwritten.py) does the work it is compared on: every
input's follow-up and audit record, valid by our contracts, duplicates dropped, the state
changelogged, under both guarantees. A baseline that skipped work would flatter it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import handwritten  # noqa: E402
import loadgen  # noqa: E402

from processors.contracts import AvroCodec, ContractRegistry  # noqa: E402

pytestmark = pytest.mark.kafka

EVENTS, DUPLICATES = 30, 5


def _read_all(bootstrap: str, topic: str, expected: int, partitions: int = 2, timeout: float = 30.0) -> list:
    """Every committed record of ``topic`` (assigned, not subscribed: no group join to wait for)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            out += [m for m in consumer.consume(100, 0.2) if m.error() is None]
            if len(out) >= expected:
                # one more poll: anything past the expected count would be a defect
                out += [m for m in consumer.consume(100, 0.3) if m.error() is None]
                break
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize(
    "eos",
    [pytest.param(False, marks=pytest.mark.soak, id="at_least_once"), pytest.param(True, id="exactly_once")],
)
def test_the_hand_written_loop_does_the_same_work(kafka_bootstrap, unique_name, create_topics, tmp_path, eos):
    names = {n: unique_name(n) for n in ("orders", "confirmed", "audit", "changelog")}
    create_topics([names["confirmed"], names["audit"], names["changelog"]], partitions=2)
    spec = loadgen.LoadSpec(names["orders"], EVENTS, partitions=2, keys=7)
    loadgen.preload(kafka_bootstrap, spec)
    sent = _read_all(kafka_bootstrap, names["orders"], EVENTS)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for msg in sent[:DUPLICATES]:  # re-sent copies: the same idempotency keys
        producer.produce(names["orders"], msg.value(), msg.key(), partition=msg.partition(), headers=msg.headers())
    assert producer.flush(30) == 0

    args = argparse.Namespace(
        bootstrap=kafka_bootstrap,
        topic=names["orders"],
        out_topic=names["confirmed"],
        audit_topic=names["audit"],
        changelog_topic=names["changelog"],
        state_dir=tmp_path / "state",
        events=EVENTS + DUPLICATES,
        batch=10,
        eos=eos,
    )
    loop = handwritten.Loop(args)
    try:
        done, _ = loop.run()
    finally:
        loop.close()
    assert done == EVENTS + DUPLICATES

    codec = AvroCodec(ContractRegistry.load())
    confirmed = _read_all(kafka_bootstrap, names["confirmed"], EVENTS)
    assert len(confirmed) == EVENTS  # the duplicates were dropped
    orders = {codec.decode("order.created", m.value())["order_id"] for m in sent}
    assert {codec.decode("order.confirmed", m.value())["order_id"] for m in confirmed} == orders
    audits = _read_all(kafka_bootstrap, names["audit"], EVENTS)
    assert len(audits) == EVENTS
    assert all(codec.decode("audit.record", m.value())["outcome"] == "PROCESSED" for m in audits)
    changelog = _read_all(kafka_bootstrap, names["changelog"], EVENTS)
    seen = [m for m in changelog if m.key().startswith(handwritten.SEEN)]
    totals = {m.key() for m in changelog if m.key().startswith(handwritten.TOTALS)}
    assert len(seen) == EVENTS and totals == {handwritten.TOTALS + m.key() for m in sent}
