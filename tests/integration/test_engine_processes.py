"""``choreo worker --processes 2`` against a real broker: the two child processes are two members of
the agent's group and share its partitions; the parent answers /readyz and /metrics for both;
SIGTERM stops them together (exit 0) with every output exactly once. The soak test kills a child:
the parent restarts it and nothing is lost or duplicated."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processors.localbroker.broker import free_port
from processors.runtime.testing import read_topic
from tests.engine.harness import (
    EngineEnv,
    assert_exact_outputs,
    load_counter_events,
    make_env,
    stop_worker,
    wait_for_count,
)
from tests.integration.test_engine_health import probe, wait_probe

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

KEYS, PER_KEY = 20, 25


def partitions_by_process(body: dict) -> dict[str, int]:
    """process id -> partitions its counter agent processes, from the parent's /readyz body."""
    out = {}
    for worker_id, child in body.get("processes", {}).items():
        reason = child.get("agents", {}).get("counter", {}).get("reason", "")
        found = re.search(r"(\d+) partition", reason)
        out[worker_id] = int(found.group(1)) if found and "processing" in reason else -1
    return out


def wait_shared(port: int, proc, total: int, timeout: float = 90) -> dict[str, int]:
    """Until /readyz says both processes are ready and every partition is owned by one of them."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        body = wait_probe(port, "/readyz", 200, max(1.0, deadline - time.monotonic()), proc)
        seen = partitions_by_process(body)
        if len(seen) == 2 and sum(seen.values()) == total and min(seen.values()) >= 1:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"the partitions were not shared by both processes: {seen}")


def group_members(env: EngineEnv, app) -> list[str]:
    admin = AdminClient({"bootstrap.servers": env.bootstrap})  # kept: its futures die with it
    described = admin.describe_consumer_groups([app.group_id("counter")])[app.group_id("counter")].result(timeout=15)
    return sorted(m.client_id for m in described.members)


def test_two_processes_share_an_agents_partitions_and_stop_together(kafka_bootstrap, tmp_path, unique_name):
    env = make_env(kafka_bootstrap, tmp_path, unique_name("procs"))
    app = env.app()
    env.create_topics(app)
    port = free_port()
    state = tmp_path / "state"
    proc = env.start_worker("procs", "exactly_once", state, args=("--processes", "2", "--metrics-port", str(port)))
    try:
        shared = wait_shared(port, proc, total=3)
        assert set(shared) == {"procs-0", "procs-1"}
        assert group_members(env, app) == ["procs-0.counter", "procs-1.counter"]
        assert probe(port, "/healthz")[0] == 200
        load_counter_events(env, app, KEYS, PER_KEY)
        out_topic = env.topic("counter.total")
        assert wait_for_count(env.bootstrap, out_topic, KEYS * PER_KEY, timeout=90, proc=proc) >= KEYS * PER_KEY
        metrics = _metrics(port)
        assert 'process="0"' in metrics and 'process="1"' in metrics
        assert "choreo_worker_processes 2.0" in metrics
    finally:
        code = stop_worker(proc, timeout=90)
    assert code == 0
    assert sorted(p.name for p in state.iterdir()) == ["process-0", "process-1"]
    assert_exact_outputs(read_topic(env.bootstrap, out_topic, None, app=app, timeout=60), KEYS, PER_KEY)


@pytest.mark.soak
def test_a_killed_child_is_restarted_and_nothing_is_lost(kafka_bootstrap, tmp_path, unique_name):
    env = make_env(kafka_bootstrap, tmp_path, unique_name("procs-kill"))
    app = env.app()
    env.create_topics(app)
    port = free_port()
    proc = env.start_worker(
        "procs", "exactly_once", tmp_path / "state", args=("--processes", "2", "--metrics-port", str(port))
    )
    out_topic = env.topic("counter.total")
    try:
        wait_shared(port, proc, total=3)
        load_counter_events(env, app, KEYS, PER_KEY)
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        load_counter_events(env, app, KEYS, PER_KEY)  # a second round, 26..50 per key
        wait_shared(port, proc, total=3, timeout=120)
        assert victim not in _children(proc.pid)
        assert (
            wait_for_count(env.bootstrap, out_topic, 2 * KEYS * PER_KEY, timeout=120, proc=proc) >= 2 * KEYS * PER_KEY
        )
        assert "choreo_worker_process_restarts_total 1.0" in _metrics(port)
    finally:
        code = stop_worker(proc, timeout=90)
    assert code == 0  # the restarted child stopped cleanly like the other
    assert_exact_outputs(read_topic(env.bootstrap, out_topic, None, app=app, timeout=60), KEYS, 2 * PER_KEY)


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]
