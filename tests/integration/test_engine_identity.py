"""What identifies a worker: restarted on the same state directory without ``--worker-id``, it
keeps its transactional ids, so it fences the transaction its killed predecessor left open at
once and downstream read_committed readers are not held up (against a real broker)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest

from processors.runtime.testing import read_topic
from tests.engine.harness import assert_exact_outputs, load_counter_events, make_env, stop_worker, wait_for_count

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

KEYS, PER_KEY = 20, 100


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("identity"))


def _worker_ids(log: Path) -> set[str]:
    ids = set()
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            entry = orjson.loads(line)
            if entry.get("msg") == "agent started":
                ids.add(entry["worker_id"])
    return ids


def test_a_restarted_worker_keeps_its_id_and_unblocks_readers_at_once(env, tmp_path):
    app = env.app()
    env.create_topics(app)
    load_counter_events(env, app, KEYS, PER_KEY)
    state, out_topic = tmp_path / "state", env.topic("counter.total")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # ~5 s a batch of 500: killed in the middle of one, its transaction is open with outputs in it
    first = env.start_worker(None, "exactly_once", state, log=first_log, ENGINE_SLOW_S="0.01")
    try:
        wait_for_count(env.bootstrap, out_topic, 1, timeout=90, proc=first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    second = env.start_worker(None, "exactly_once", state, log=second_log)
    try:
        # Unfenced, the dead transaction would hold every reader of its partitions until it
        # timed out (60 s before this change); fenced, the rest is visible as soon as it is done.
        wait_for_count(env.bootstrap, out_topic, KEYS * PER_KEY, timeout=45, proc=second)
    finally:
        assert stop_worker(second) == 0
    ids = _worker_ids(first_log) | _worker_ids(second_log)
    assert len(ids) == 1, f"one identity across the restart, got {ids}"
    other_log = tmp_path / "other.log"
    other = env.start_worker(None, "exactly_once", tmp_path / "other-state", log=other_log)
    try:
        deadline = time.monotonic() + 60
        while not _worker_ids(other_log) and other.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        assert stop_worker(other) == 0
    other_ids = _worker_ids(other_log)
    assert other_ids and other_ids.isdisjoint(ids), "another state directory is another worker"
    assert_exact_outputs(read_topic(env.bootstrap, out_topic, None, app=app, timeout=60), KEYS, PER_KEY)
