"""Warm standbys against a real broker: with ``standby_replicas = 1`` a worker keeps a copy of the
store of a partition another group member owns, fed from the changelog, and when that partition
comes to it the copy is handed to the active path, which then restores nothing.

The other member is a bare group consumer that owns its partitions and does nothing (its leaving
is the takeover); the worker is the engine's, in this process. The one lean default-suite proof;
the SIGKILL takeover between two worker processes is test_engine_standby_soak.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client import REGISTRY

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.partitioner import partition_for
from processors.runtime import Worker, WorkerOptions
from processors.runtime.state import keys
from processors.runtime.testing import read_topic
from processors.settings import Settings
from tests.engine.harness import make_env

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

PARTITIONS = 3
RECORDS = 2_000  # per partition, closed by one batch marker


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("standby"))


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _fill_changelog(bootstrap: str, topic: str, extra: dict[int, tuple[bytes, dict]]) -> None:
    """RECORDS state records and a marker per partition; ``extra``: one more state per partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for p in range(PARTITIONS):
        for i in range(RECORDS):
            producer.produce(topic, b'{"n":1}', keys.state_key(b"filler-%d-%d" % (p, i)), partition=p)
            if i % 1000 == 0:
                producer.poll(0)
        key, state = extra[p]
        producer.produce(topic, orjson.dumps(state), keys.state_key(key), partition=p)
        producer.produce(topic, b"{}", keys.MARKER, partition=p)
    assert producer.flush(60) == 0


class _IdleMember:
    """A bare member of the agent's group: it owns what the range assignor gives it and consumes
    nothing; :meth:`leave` hands its partitions to the worker."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": "zz-idle-member",
                "partition.assignment.strategy": "range",
                "enable.auto.commit": False,
                "session.timeout.ms": 10000,
            }
        )
        self.assigned: set[int] = set()
        self.consumer.subscribe(topics, on_assign=self._on_assign)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        self.assigned = {tp.partition for tp in partitions}
        consumer.pause(partitions)  # owns them, reads nothing

    def _run(self) -> None:
        while not self.stop.is_set():
            self.consumer.poll(0.1)
        self.consumer.close()

    def leave(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _key_on(partition: int) -> bytes:
    candidates = (b"standby-key-%d" % i for i in range(10_000))
    return next(key for key in candidates if partition_for(key, PARTITIONS) == partition)


@pytest.fixture
def worker_and_member(env, tmp_path) -> Iterator[tuple[Worker, _IdleMember]]:
    app = env.app(with_pingpong=False)
    env.create_topics(app)
    state = {p: (_key_on(p), {"n": 40 + p, "seq": 1}) for p in range(PARTITIONS)}
    _fill_changelog(env.bootstrap, app.changelog_topic("counter"), state)
    member = _IdleMember(env.bootstrap, app.group_id("counter"), app.input_topics(app.agents["counter"]))
    settings = Settings(bootstrap_servers=env.bootstrap, state_dir=tmp_path / "state", standby_replicas=1)
    worker = Worker(app, settings, agents=["counter"], worker_id="standby-test", options=WorkerOptions())
    worker.start()
    try:
        yield worker, member
    finally:
        member.leave()
        worker.stop()
        worker.join(60)


def test_a_standby_copy_is_filled_and_used_at_takeover(env, worker_and_member, caplog):
    caplog.set_level(logging.INFO, logger="choreo.worker")
    worker, member = worker_and_member
    app = worker.app
    _wait(lambda: _sample("choreo_assigned_partitions", agent="counter") > 0 and member.assigned, 60, "a split")
    theirs = set(member.assigned)
    assert 0 < len(theirs) < PARTITIONS
    _wait(lambda: _sample("choreo_standby_partitions", agent="counter") == len(theirs), 60, "the standby copies")
    _wait(
        lambda: all(
            REGISTRY.get_sample_value("choreo_standby_lag_records", {"agent": "counter", "partition": str(p)}) == 0
            for p in theirs
        ),
        60,
        "the standby copies to catch up",
    )
    # (the worker's own partitions were restored, or, when the member joined first and owned them
    # all for a moment, handed over by the standby too: either way, counted before the takeover)
    restored_before = _sample("choreo_restored_records_total", agent="counter")

    seen = len(caplog.records)
    member.leave()  # its partitions come to the worker
    _wait(lambda: _sample("choreo_assigned_partitions", agent="counter") == PARTITIONS, 60, "the takeover")
    later = caplog.records[seen:]
    handed = {getattr(r, "partition", -1) for r in later if r.getMessage() == "standby store handed over"}
    assert handed == theirs
    assert _sample("choreo_restored_records_total", agent="counter") == restored_before, "nothing was replayed"
    assert _sample("choreo_standby_partitions", agent="counter") == 0

    # The handed-over store holds the state the changelog built: an event on it continues from it.
    p = min(theirs)
    key = _key_on(p).decode()
    producer = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random"})
    value = app.codec.encode("counter.incremented", {"name": key, "by": 1})
    headers = produce_headers(Envelope.new("counter.incremented", "/test/standby").to_headers())
    producer.produce(env.topic("counter.incremented"), value, key, headers=headers)
    assert producer.flush(30) == 0
    outputs = read_topic(env.bootstrap, env.topic("counter.total"), 1, timeout=60, app=app)
    assert [(o.partition, o.value["total"]) for o in outputs] == [(p, 40 + p + 1)]
    assert worker.errors == []
