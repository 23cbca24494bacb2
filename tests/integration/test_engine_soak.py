"""Longer fault drill (``make test-soak`` / ``pytest -m soak``): many SIGKILLs at random moments
of a bigger load, with and without local state, for both guarantees."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time

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

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(1800)]

KEYS, PER_KEY = 50, 300


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_repeated_sigkills_lose_and_duplicate_nothing(kafka_bootstrap, tmp_path, guarantee):
    env = make_env(kafka_bootstrap, tmp_path, "soak")
    app = env.app()
    env.create_topics(app)
    load_counter_events(env, app, KEYS, PER_KEY)
    total = KEYS * PER_KEY
    state = tmp_path / "state"
    out_topic = env.topic("counter.total")
    rng = random.Random(7)
    proc = env.start_worker("soak", guarantee, state, ENGINE_SLOW_S="0.0005")
    try:
        for kill in range(8):
            time.sleep(rng.uniform(1.0, 4.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            if kill % 3 == 2:
                shutil.rmtree(state, ignore_errors=True)  # lose the local state too
            crash = str(rng.randint(1, 4)) if kill % 4 == 1 else "0"  # "0": no crash point
            proc = env.start_worker("soak", guarantee, state, ENGINE_SLOW_S="0.0005", ENGINE_KILL_IN_APPLY=crash)
            if crash != "0":
                try:
                    proc.wait(60)  # it kills itself at its Nth batch...
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)  # ...unless the work ran out first
                    proc.wait(30)
                proc = env.start_worker("soak", guarantee, state, ENGINE_SLOW_S="0.0005")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
            if len({o.headers["ce_idempotencykey"] for o in outputs}) >= total:
                break
            wait_for_count(env.bootstrap, out_topic, 1, timeout=5, proc=proc)
            time.sleep(2)
    finally:
        assert stop_worker(proc) == 0
    outputs = read_topic(env.bootstrap, out_topic, None, app=app, timeout=60)
    if guarantee == "exactly_once":
        assert_exact_outputs(outputs, KEYS, PER_KEY)
    else:
        assert_no_duplicate_effects(outputs, KEYS, PER_KEY)
