"""Failure drills against a real broker with worker subprocesses: SIGKILL mid-batch and restart,
and two workers sharing partitions while one joins and the other leaves under load."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from processors.runtime.testing import read_topic
from tests.engine.harness import (
    assert_exact_outputs,
    assert_no_duplicate_effects,
    load_counter_events,
    make_env,
    stop_worker,
    wait_for_count,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

KEYS, PER_KEY = 30, 100
TOTAL = KEYS * PER_KEY


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("faults"))


def _wait_distinct(env, app, expected: int, timeout: float, proc) -> None:
    """At-least-once: wait until every expected output exists at least once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}")
        records = read_topic(env.bootstrap, env.topic("counter.total"), None, app=app, timeout=30)
        if len({r.headers["ce_idempotencykey"] for r in records}) >= expected:
            return
        time.sleep(1.0)
    raise AssertionError("outputs incomplete")


def _audit_check(env, app, inputs, exact: bool) -> None:
    audit = read_topic(env.bootstrap, env.audit_topic, None, app=app, timeout=60)
    processed = Counter(a.value["input_event_id"] for a in audit if a.value["outcome"] == "PROCESSED")
    ids = {e.id for e in inputs}
    assert set(processed) == ids, f"{len(ids - set(processed))} inputs without a PROCESSED audit record"
    if exact:
        assert all(n == 1 for n in processed.values()), "an input was audited as processed twice"
        assert len(audit) == len(ids)


@pytest.mark.parametrize(
    ("guarantee", "max_in_flight"),
    [
        ("exactly_once", 1),
        # at_least_once's crash replay is judged in the default suite by test_engine_decisions'
        # replay-after-a-crash test; this longer drill joins the soak runs (the suite's budget)
        pytest.param("at_least_once", 1, id="at_least_once", marks=pytest.mark.soak),
        # an async counter, 32 inputs of different keys at once: killed with handlers running and
        # inputs finished past unfinished ones, nothing may be lost or applied twice
        pytest.param("exactly_once", 32, id="exactly_once-concurrent"),
        pytest.param("at_least_once", 32, id="at_least_once-concurrent", marks=pytest.mark.soak),
    ],
)
def test_sigkill_mid_batch_and_restart(env, tmp_path, guarantee, max_in_flight):
    app = env.app()
    env.create_topics(app)
    inputs = load_counter_events(env, app, KEYS, PER_KEY)
    state = tmp_path / "state"
    slow = {"ENGINE_SLOW_S": "0.002", "ENGINE_MAX_IN_FLIGHT": str(max_in_flight)}
    out_topic = env.topic("counter.total")
    proc = env.start_worker("killme", guarantee, state, **slow)
    try:
        # 1. killed from outside in the middle of a ~1 s batch
        wait_for_count(env.bootstrap, out_topic, 700, timeout=90, proc=proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        # same worker id: its transactional id fences the killed one's open transaction at once
        # 2. killed on its 2nd batch after outputs and changelog are durable, before the store write
        #    and (at-least-once) before the offset commit: replayed inputs must be dropped as
        #    duplicates, and (exactly-once) the local store's missing tail restored from the changelog
        proc = env.start_worker("killme", guarantee, state, ENGINE_KILL_IN_APPLY="2", **slow)
        assert proc.wait(90) == -signal.SIGKILL
        proc = env.start_worker("killme", guarantee, state, **slow)
        if guarantee == "exactly_once":
            wait_for_count(env.bootstrap, out_topic, TOTAL, timeout=120, proc=proc)
        else:
            _wait_distinct(env, app, TOTAL, timeout=120, proc=proc)
    finally:
        code = stop_worker(proc)
    assert code == 0
    outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
    if guarantee == "exactly_once":
        assert_exact_outputs(outputs, KEYS, PER_KEY)
        _audit_check(env, app, inputs, exact=True)
    else:
        assert_no_duplicate_effects(outputs, KEYS, PER_KEY)
        _audit_check(env, app, inputs, exact=False)


@pytest.mark.parametrize("guarantee", ["exactly_once", pytest.param("at_least_once", marks=pytest.mark.soak)])
def test_two_workers_rebalancing_under_load_lose_nothing(env, tmp_path, guarantee):
    app = env.app()
    env.create_topics(app)
    slow = {"ENGINE_SLOW_S": "0.001"}
    out_topic = env.topic("counter.total")
    inputs: list = []
    loader = threading.Thread(
        target=lambda: inputs.extend(sum((load_counter_events(env, app, KEYS, PER_KEY // 5) for _ in range(5)), []))
    )
    w1 = env.start_worker("w1", guarantee, tmp_path / "state-1", **slow)
    w2 = None
    try:
        loader.start()
        wait_for_count(env.bootstrap, out_topic, 300, timeout=90, proc=w1)
        w2 = env.start_worker("w2", guarantee, tmp_path / "state-2", **slow)  # joins: partitions move
        wait_for_count(env.bootstrap, out_topic, 1500, timeout=90, proc=w1)
        assert stop_worker(w1) == 0  # leaves: its partitions move to w2 with their state
        loader.join(60)
        assert len(inputs) == TOTAL
        if guarantee == "exactly_once":
            wait_for_count(env.bootstrap, out_topic, TOTAL, timeout=120, proc=w2)
        else:
            _wait_distinct(env, app, TOTAL, timeout=120, proc=w2)
    finally:
        if w1.poll() is None:
            stop_worker(w1)
        code = stop_worker(w2) if w2 is not None else None
    assert code == 0
    outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
    if guarantee == "exactly_once":
        assert_exact_outputs(outputs, KEYS, PER_KEY)
    else:
        assert_no_duplicate_effects(outputs, KEYS, PER_KEY)
    assert {r.headers.get("ce_source") for r in outputs} == {f"/choreo/{env.prefix}/counter"}
