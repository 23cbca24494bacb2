"""The broker every other test relies on behaves like Kafka: consumer groups and transactions."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

pytestmark = pytest.mark.kafka


def _drain(consumer: Consumer, expected: int, timeout: float = 30.0) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            error = msg.error()
            if error:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(error)
            value = msg.value()
            assert value is not None, "every record of this test has a value"
            values.append(value)
    return values


def test_produce_and_consume_in_a_consumer_group(kafka_bootstrap, unique_name, create_topics):
    topic, group = unique_name("roundtrip"), unique_name("group")
    create_topics([topic], partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    sent = [f"event-{i}".encode() for i in range(30)]
    for i, value in enumerate(sent):
        producer.produce(topic, key=f"k{i % 7}".encode(), value=value)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        received = _drain(consumer, len(sent))
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)
    assert sum(tp.offset for tp in committed) == len(sent)


def test_committed_transaction_is_visible_and_aborted_one_is_not(kafka_bootstrap, unique_name, create_topics):
    topic = unique_name("txn")
    create_topics([topic])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique_name("tx")})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed-1")
    producer.produce(topic, value=b"committed-2")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed-3")
    producer.commit_transaction(30)

    def read(isolation: str) -> list[bytes | None]:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": unique_name(isolation),
                "auto.offset.reset": "earliest",
                "isolation.level": isolation,
                "enable.partition.eof": True,
            }
        )
        consumer.assign([TopicPartition(topic, 0, 0)])
        try:
            values: list[bytes | None] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error:
                    if error.code() == KafkaError._PARTITION_EOF:
                        break
                    raise AssertionError(error)
                values.append(msg.value())
            return values
        finally:
            consumer.close()

    assert read("read_committed") == [b"committed-1", b"committed-2", b"committed-3"]
    assert read("read_uncommitted") == [b"committed-1", b"committed-2", b"aborted", b"committed-3"]


def test_choreo_roundtrip_reports_per_record_latencies(kafka_bootstrap):
    """`choreo roundtrip` counts every event back and gives a produce->ack and a produce->consume
    latency per record; both come from the records' own timestamps, so the consume side (one
    poll() per record) cannot add a poll timeout to every record. Figures are not asserted
    (benchmarks measure speed): only that they are per record and consistent."""
    import orjson
    from typer.testing import CliRunner

    from processors.cli.main import app

    result = CliRunner().invoke(
        app, ["roundtrip", "--events", "200", "--rate", "400", "--bootstrap", kafka_bootstrap, "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert figures["sent"] == figures["received"] == 200 and figures["failed"] == 0
    assert sum(figures["per_partition"].values()) == 200
    for name in ("produce_to_ack_ms", "produce_to_consume_ms"):
        p50, p99, worst = (figures[name][k] for k in ("p50", "p99", "max"))
        assert 0 <= p50 <= p99 <= worst, (name, figures[name])
