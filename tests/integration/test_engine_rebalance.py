"""Rebalances in the middle of batches, against a real broker: one worker works through a backlog
in ~1 s batches while two others join and leave again and again, so partitions are revoked while
records of theirs are fetched or being handled. No worker may exit on its own, and the outputs keep
the guarantee's promise."""

from __future__ import annotations

import threading
import time
from pathlib import Path

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

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

KEYS, PER_KEY = 30, 60


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("rebalance"))


def wait_assigned(log: Path, proc, timeout: float = 120) -> None:
    """Until the worker has joined the group (its first assignment is logged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b'"partitions assigned"' in log.read_bytes():
            return
        assert proc.poll() is None, f"a joining worker exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"{log.name}: never assigned partitions")


def churn(env, tmp_path, guarantee: str, rounds: int) -> None:
    app = env.app()
    env.create_topics(app)
    out_topic = env.topic("counter.total")
    slow = {"ENGINE_SLOW_S": "0.002"}
    inputs: list = []
    loader = threading.Thread(target=lambda: inputs.extend(load_counter_events(env, app, KEYS, PER_KEY)))
    steady = env.start_worker(None, guarantee, tmp_path / "state-steady", **slow)
    try:
        loader.start()
        wait_for_count(env.bootstrap, out_topic, 200, timeout=120, proc=steady)
        for i in range(rounds):
            logs = [tmp_path / f"worker-{n}-{i}.log" for n in ("b", "c")]
            joiners = [
                env.start_worker(None, guarantee, tmp_path / f"state-{n}", log=log, **slow)
                for n, log in zip(("b", "c"), logs, strict=True)
            ]
            for j, log in zip(joiners, logs, strict=True):
                wait_assigned(log, j)  # partitions were taken from the steady worker, mid-batch
            wait_for_count(env.bootstrap, out_topic, 200 + (i + 1) * 150, timeout=120, proc=steady)
            for j in joiners:
                assert j.poll() is None, f"a joining worker exited with {j.returncode}"
                assert stop_worker(j, timeout=90) == 0  # and given back
        loader.join(120)
        if guarantee == "exactly_once":
            seen = wait_for_count(env.bootstrap, out_topic, KEYS * PER_KEY, timeout=180, proc=steady)
            assert seen >= KEYS * PER_KEY
        else:
            deadline_reads = 0
            while deadline_reads < 60:
                outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=30)
                if len({o.headers["ce_idempotencykey"] for o in outputs}) >= KEYS * PER_KEY:
                    break
                assert steady.poll() is None
                deadline_reads += 1
                wait_for_count(env.bootstrap, out_topic, 1, timeout=3, proc=steady)
    finally:
        code = stop_worker(steady, timeout=90) if steady.poll() is None else steady.returncode
    assert code == 0, f"the steady worker exited with {code}"
    outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
    if guarantee == "exactly_once":
        assert_exact_outputs(outputs, KEYS, PER_KEY)
    else:
        assert_no_duplicate_effects(outputs, KEYS, PER_KEY)


def test_partitions_revoked_mid_batch_again_and_again_exactly_once(env, tmp_path):
    churn(env, tmp_path, "exactly_once", rounds=3)


@pytest.mark.soak
def test_partitions_revoked_mid_batch_again_and_again_at_least_once(env, tmp_path):
    churn(env, tmp_path, "at_least_once", rounds=6)
