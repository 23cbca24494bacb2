"""Restore runs from the worker loop, not inside the rebalance callback: partitions whose stores are
ready are processed while another partition's store is still being restored, and a stop request
during a long restore ends the agent without waiting for it (against a real broker). Store opens
are counted by outcome (no changelog read for an empty or up-to-date store) and the restore
counters count what a restore applies."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.runtime import Worker, WorkerOptions
from processors.runtime.state import keys
from processors.runtime.testing import read_topic
from processors.settings import Settings
from tests.engine.harness import load_counter_events, make_env, wait_for_count

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


# ---------------------------------------------------------------------- open outcomes and counts
OUTCOMES = ("up_to_date", "caught_up", "restored", "rebuilt")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"agent": "counter", **labels}) or 0.0


def _metrics() -> dict[str, float]:
    """The restore figures of the counter agent (process-wide counters: tests compare deltas)."""
    out = {o: _sample("choreo_store_opens_total", outcome=o) for o in OUTCOMES}
    out["records"] = _sample("choreo_restored_records_total")
    out["restores"] = _sample("choreo_restore_seconds_count")
    out["opens"] = _sample("choreo_store_open_seconds_count")
    return out


def _delta(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in _metrics().items() if v - before[k]}


def _run_until(env, app, tmp_path, worker_id: str, state: str, outputs: int, events: int = 0) -> None:
    """A worker on ``state`` until ``outputs`` outputs are visible (after producing ``events``)."""
    state_dir = tmp_path / state
    settings = Settings(bootstrap_servers=env.bootstrap, state_dir=state_dir, processing_guarantee="exactly_once")
    worker = Worker(app, settings, agents=["counter"], worker_id=worker_id, options=WorkerOptions())
    worker.start()
    try:
        if events:
            load_counter_events(env, app, events, 1)
        assert wait_for_count(env.bootstrap, env.topic("counter.total"), outputs, timeout=90) >= outputs
        deadline = time.monotonic() + 90
        while not all(_settled(r) for r in worker.runners):
            assert time.monotonic() < deadline, "the stores never became ready"
            time.sleep(0.05)
    finally:
        worker.stop()
        worker.join(60)
    assert worker.errors == []


def _settled(runner) -> bool:
    assignment = getattr(runner, "assignment", None)
    return assignment is not None and assignment.settled and len(assignment.stores) == 3


def _opens(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The "store opened" lines logged since the last call: their fields."""
    found = [vars(r) for r in caplog.records if r.getMessage() == "store opened"]
    caplog.clear()
    return found


def test_store_opens_say_whether_they_read_the_changelog_and_count_what_they_restore(env, tmp_path, caplog):
    """A new (empty) store opens without reading its changelog at all; a store rebuilt on another
    worker's disk counts every changelog record it applies; the first owner, back on its own
    up-to-date store, reads only the end of the changelog (its last transaction's marker) and
    applies nothing. Judged by the open outcomes, phases and counters, never by wall time."""
    caplog.set_level(logging.INFO, logger="choreo.worker")
    app = env.app()
    env.create_topics(app)
    before = _metrics()
    _run_until(env, app, tmp_path, "first", "state-first", outputs=12, events=12)
    opens = _opens(caplog)
    assert _delta(before) == {"up_to_date": 3, "opens": 3}, "empty stores open without a changelog read"
    assert all("read" not in r["phases_ms"] for r in opens)
    changelog = [
        r
        for r in read_topic(env.bootstrap, app.changelog_topic("counter"), None, timeout=30)
        if r.key != keys.MARKER.decode()
    ]
    with_records = {r.partition for r in changelog}
    assert changelog and with_records

    before = _metrics()
    _run_until(env, app, tmp_path, "second", "state-second", outputs=12)
    delta = _delta(before)
    assert delta.get("restored") == len(with_records)
    assert delta.get("up_to_date", 0) == 3 - len(with_records)
    assert delta["records"] == len(changelog), "every changelog record applied is counted"
    assert delta["restores"] == len(with_records)
    assert all(_remaining("counter", p) == 0 for p in range(3))
    restored = {r["partition"]: r["records"] for r in _opens(caplog) if r["outcome"] == "restored"}
    assert restored == {p: sum(1 for r in changelog if r.partition == p) for p in with_records}

    before = _metrics()
    _run_until(env, app, tmp_path, "first", "state-first", outputs=12)
    delta = _delta(before)
    assert delta.get("caught_up") == len(with_records), "up to date but for its last transaction marker"
    assert "records" not in delta and "restored" not in delta and "rebuilt" not in delta
    phases = {"open", "watermarks", "read"}
    assert all(r["records"] == 0 and set(r["phases_ms"]) <= phases for r in _opens(caplog))
