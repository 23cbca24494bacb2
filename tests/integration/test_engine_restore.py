"""Restore runs from the worker loop, not inside the rebalance callback: partitions whose stores are
ready are processed while another partition's store is still being restored, and a stop request
during a long restore ends the agent without waiting for it (against a real broker)."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.runtime import Worker, WorkerOptions
from processors.runtime.state import keys
from processors.runtime.testing import read_topic
from processors.settings import Settings
from tests.engine.harness import make_env

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

RESTORING_PARTITION = 0
CHANGELOG_RECORDS = 1_500_000  # 600,000 took 5-7 s to restore here; the ready partitions answer in 2-4 s


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("restore"))


def _fill_changelog(bootstrap: str, topic: str, partition: int, records: int) -> None:
    """A long changelog for one partition: state records closed by one batch marker."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20, "compression.type": "lz4"}
    )
    for i in range(records):
        _produce(producer, topic, keys.state_key(b"k-%d" % i), b'{"n":1}', partition)
    _produce(producer, topic, keys.MARKER, b"{}", partition)
    assert producer.flush(120) == 0


def _produce(producer: Producer, topic: str, key: bytes, value: bytes, partition: int) -> None:
    """Produce, serving delivery reports while the client's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, partition=partition)
            return
        except BufferError:
            producer.poll(0.1)


def _remaining(agent: str, partition: int) -> float:
    labels = {"agent": agent, "partition": str(partition)}
    return REGISTRY.get_sample_value("choreo_restore_remaining_records", labels) or 0.0


def _restored_partitions(caplog: pytest.LogCaptureFixture) -> set[int]:
    return {getattr(r, "partition", -1) for r in caplog.records if r.getMessage() == "store restored"}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_ready_partitions_flow_and_stop_is_prompt_while_another_restores(env, tmp_path, caplog, guarantee):
    caplog.set_level(logging.INFO, logger="choreo.worker")
    app = env.app()
    env.create_topics(app)
    _fill_changelog(env.bootstrap, app.changelog_topic("counter"), RESTORING_PARTITION, CHANGELOG_RECORDS)
    settings = Settings(bootstrap_servers=env.bootstrap, state_dir=tmp_path / "state", processing_guarantee=guarantee)
    worker = Worker(app, settings, agents=["counter"], worker_id="restore-test", options=WorkerOptions())
    worker.start()
    try:
        # Events for many keys: some land on partitions whose (empty) stores are ready at once.
        producer = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random"})
        for k in range(30):
            name = f"key-{k}"
            value = app.codec.encode("counter.incremented", {"name": name, "by": 1})
            headers = produce_headers(Envelope.new("counter.incremented", "/test/restore").to_headers())
            producer.produce(env.topic("counter.incremented"), value, name, headers=headers)
        assert producer.flush(30) == 0
        outputs = read_topic(env.bootstrap, env.topic("counter.total"), 1, timeout=60)
        assert outputs, "an event of a ready partition was handled"
        assert {o.partition for o in outputs} != {RESTORING_PARTITION}
        assert RESTORING_PARTITION not in _restored_partitions(caplog), (
            "the output came while the big store was still restoring"
        )
        assert _remaining("counter", RESTORING_PARTITION) > 0
    finally:
        worker.stop()
        worker.join(60)
    assert not any(r.thread.is_alive() for r in worker.runners), "the agent ended on stop"
    assert worker.errors == []
    assert RESTORING_PARTITION not in _restored_partitions(caplog), "stop did not wait for the restore to finish"
