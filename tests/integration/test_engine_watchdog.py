"""The watchdog against a real broker: a client call that blocks past its deadline (simulated in
the test app by a producer method that sleeps, as librdkafka was seen to block inside
``send_offsets_to_transaction``) gets the agent replaced with fresh clients, counted and logged;
nothing is lost or duplicated; and SIGTERM ends a worker whose agent is stuck within a bounded time."""

from __future__ import annotations

import time

import orjson
import pytest

from processors.runtime.testing import read_topic
from tests.engine.harness import assert_exact_outputs, load_counter_events, make_env, stop_worker, wait_for_count

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

KEYS, PER_KEY = 10, 20


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("watchdog"))


def _msgs(path) -> list[dict]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def test_a_stuck_call_gets_the_agent_replaced_and_loses_nothing(env, tmp_path):
    app = env.app()
    env.create_topics(app)
    log = tmp_path / "worker.log"
    proc = env.start_worker(
        None,
        "exactly_once",
        tmp_path / "state",
        log=log,
        ENGINE_STUCK_CALL="send_offsets_to_transaction:2",  # the two loads make two batches at least
        ENGINE_CALL_DEADLINE="5:3",
    )
    try:
        load_counter_events(env, app, KEYS, PER_KEY)
        seen = wait_for_count(env.bootstrap, env.topic("counter.total"), KEYS * PER_KEY, timeout=120, proc=proc)
        assert seen >= KEYS * PER_KEY, f"{seen} outputs: the agent stayed stuck"
        load_counter_events(env, app, KEYS, PER_KEY)  # and it goes on
        seen = wait_for_count(env.bootstrap, env.topic("counter.total"), 2 * KEYS * PER_KEY, timeout=120, proc=proc)
        assert seen >= 2 * KEYS * PER_KEY
    finally:
        code = stop_worker(proc, timeout=90)
    assert code == 0, log.read_text()[-3000:]
    outputs = read_topic(env.bootstrap, env.topic("counter.total"), None, app=app, timeout=60)
    assert_exact_outputs(outputs, KEYS, 2 * PER_KEY)
    lines = _msgs(log)
    stuck = [line for line in lines if line.get("msg", "").startswith("client call stuck")]
    assert len(stuck) == 1 and stuck[0]["call"] == "send_offsets_to_transaction", stuck
    assert any(line.get("msg", "").startswith("recovered after") for line in lines)


def test_sigterm_ends_a_worker_whose_agent_is_stuck(env, tmp_path):
    app = env.app()
    env.create_topics(app)
    log = tmp_path / "stuck.log"
    # a deadline far away: the stop must not wait for the watchdog
    proc = env.start_worker(
        None,
        "exactly_once",
        tmp_path / "state",
        log=log,
        ENGINE_STUCK_CALL="send_offsets_to_transaction:1",
        ENGINE_CALL_DEADLINE="30:600",
    )
    load_counter_events(env, app, KEYS, 2)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(line.get("msg") == "partitions assigned" for line in _msgs(log)):
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.5)
    time.sleep(3)  # into the stuck call: the scenario, not an assertion
    t0 = time.monotonic()
    code = stop_worker(proc, timeout=120)
    elapsed = time.monotonic() - t0
    assert code == 0, log.read_text()[-3000:]
    assert elapsed < 60, f"stop took {elapsed:.0f}s"
    assert any(line.get("msg", "").startswith("agent did not stop in time") for line in _msgs(log))
