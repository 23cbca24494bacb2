"""Foreign records against the real broker: where librdkafka puts keys, and what an agent does with
a record that is not where its key belongs (issue 13, item 3).

* parity: keys produced with ``partitioner=murmur2_random`` land where
  :func:`processors.partitioner.partition_for` says (the Java client's partitioner);
* outcome: records from a ``consistent_random`` producer (librdkafka's default, CRC32), on explicit
  wrong partitions, with null keys elsewhere than their key field's partition, with a key that is
  not the key field, are dead-lettered ``misrouted``; the ones where their key belongs are handled.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.partitioner import partition_for
from processors.runtime.testing import read_topic, run_agents
from processors.runtime.topics import wait_for_topics
from tests.engine.harness import make_env

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def _read_partitions(bootstrap: str, topic: str, count: int) -> dict[bytes | None, int | None]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"parity-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    partitions = len(consumer.list_topics(topic, timeout=15).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: dict[bytes | None, int | None] = {}
    try:
        for _ in range(600):
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    found[msg.key()] = msg.partition()
            if len(found) >= count:
                break
    finally:
        consumer.close()
    return found


def test_librdkafka_murmur2_random_puts_keys_where_the_java_partitioner_says(kafka_bootstrap, unique_name):
    topic = unique_name("parity")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 7, 1)])[topic].result(60)
    assert wait_for_topics(admin, [topic], timeout=60)
    keys = [f"order-{i}".encode() for i in range(300)] + [b"21", b"foobar", "ключ✓".encode(), b"\xff\xfe\x00"]
    for partitioner in ("murmur2_random", "consistent_random"):
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": partitioner})
        for key in keys:
            producer.produce(topic, b"v", key + b"|" + partitioner.encode())
        assert producer.flush(30) == 0
    found = _read_partitions(kafka_bootstrap, topic, 2 * len(keys))
    murmur = {k: found[k + b"|murmur2_random"] for k in keys}
    assert murmur == {k: partition_for(k + b"|murmur2_random", 7) for k in keys}
    # librdkafka's default (CRC32) disagrees for most keys: what detection is for
    crc = [k for k in keys if found[k + b"|consistent_random"] != partition_for(k + b"|consistent_random", 7)]
    assert len(crc) > len(keys) // 2


def test_records_not_where_their_key_belongs_are_dead_lettered_misrouted(kafka_bootstrap, tmp_path, unique_name):
    env = make_env(kafka_bootstrap, tmp_path, unique_name("routing"))
    app = env.app()
    env.create_topics(app)
    topic = env.topic("counter.incremented")
    encode = app.codec.encode

    def headers() -> Any:
        return produce_headers(Envelope.new("counter.incremented", "/foreign").to_headers())

    expected_ok: list[str] = []
    expected_misrouted: list[tuple[int, str]] = []  # (partition, name)
    foreign = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "consistent_random"})
    with run_agents(app, kafka_bootstrap, ["counter"]) as running:
        for i in range(60):  # librdkafka's default partitioner: CRC32 of the key
            name = f"crc-{i}"
            foreign.produce(topic, encode("counter.incremented", {"name": name, "by": 1}), name, headers=headers())
        for i in range(10):  # explicit partitions: the right one and a wrong one
            name = f"explicit-{i}"
            home = partition_for(name.encode(), 3)
            for partition in (home, (home + 1) % 3):
                foreign.produce(
                    topic,
                    encode("counter.incremented", {"name": name, "by": 1}),
                    name,
                    partition=partition,
                    headers=headers(),
                )
        for i in range(10):  # null keys, on the partition of their key field's value and off it
            name = f"nullkey-{i}"
            home = partition_for(name.encode(), 3)
            for partition in (home, (home + 2) % 3):
                foreign.produce(
                    topic,
                    encode("counter.incremented", {"name": name, "by": 1}),
                    None,
                    partition=partition,
                    headers=headers(),
                )
        # a key that is not the key field's value, and one that is not UTF-8 text
        foreign.produce(topic, encode("counter.incremented", {"name": "field", "by": 1}), b"other", headers=headers())
        foreign.produce(
            topic, encode("counter.incremented", {"name": "field", "by": 1}), b"\xff\xfe", headers=headers()
        )
        assert foreign.flush(30) == 0

        crc_partition = {}
        for record in read_topic(kafka_bootstrap, topic, None, timeout=30, app=app):
            name = record.value["name"]
            if name.startswith("crc-"):
                crc_partition[name] = record.partition
        for name, partition in crc_partition.items():
            if partition == partition_for(name.encode(), 3):
                expected_ok.append(name)
            else:
                expected_misrouted.append((partition, name))
        for i in range(10):
            for prefix in ("explicit", "nullkey"):
                name = f"{prefix}-{i}"
                expected_ok.append(name)
                home = partition_for(name.encode(), 3)
                expected_misrouted.append(((home + (1 if prefix == "explicit" else 2)) % 3, name))
        misrouted_total = len(expected_misrouted) + 2
        dead = running.read(env.topic("counter.incremented") + ".dlq", misrouted_total, timeout=90)
        outputs = running.read("counter.total", len(expected_ok), timeout=90)

    reasons = {r.headers["choreo_dlq_reason"] for r in dead}
    assert reasons == {"misrouted"}
    got_misrouted = sorted(
        (
            int(r.headers["choreo_dlq_original_partition"]),
            app.codec.decode("counter.incremented", r.raw_value or b"")["name"],
        )
        for r in dead
        if r.headers["choreo_dlq_error_message"].startswith("on ")
    )
    assert got_misrouted == sorted(expected_misrouted)
    key_messages = sorted(
        r.headers["choreo_dlq_error_message"]
        for r in dead
        if not r.headers["choreo_dlq_error_message"].startswith("on ")
    )
    assert key_messages == [
        "the record's key (2 bytes) is not UTF-8 text; counter.incremented is keyed by name",
        "the record's key is not the value of its key field name",
    ]
    assert sorted(o.value["name"] for o in outputs) == sorted(expected_ok)
    assert len(expected_misrouted) > 10  # the consistent_random producer misplaced a good share
