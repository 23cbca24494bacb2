"""The liveness and readiness verdicts (pure functions of the supervisor's snapshot), and the
HTTP server that answers /metrics, /healthz and /readyz with them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import pytest

from processors.runtime._endpoints import Endpoints
from processors.runtime._health import (
    MAX_TEXT,
    STUCK_GRACE_S,
    SUPERVISOR_STALE_S,
    AgentState,
    WorkerState,
    liveness,
    readiness,
)

READY = AgentState("orders", running=True, joined=True, partitions=3)


def worker(*agents: AgentState, **overrides: Any) -> WorkerState:
    running = WorkerState(started=True, supervisor_running=True, supervisor_idle_s=0.1, agents=agents)
    return replace(running, **overrides)


def test_a_worker_whose_agents_all_process_is_alive_and_ready():
    state = worker(READY, replace(READY, agent="payments", partitions=0))
    assert liveness(state).ok
    verdict = readiness(state)
    assert verdict.ok
    assert verdict.body["agents"] == {
        "orders": {"ready": True, "reason": "processing 3 partition(s)"},
        "payments": {"ready": True, "reason": "processing 0 partition(s)"},
    }


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        (replace(READY, running=False), "no session (restarting)"),
        (replace(READY, joined=False, partitions=0), "not joined its group yet"),
        (replace(READY, restoring=2), "2 partition(s) restoring"),
        (replace(READY, retrying="broker unreachable"), "retrying: broker unreachable"),
        (replace(READY, fatal=True, running=False), "stopped by a fatal error (see the worker's log)"),
    ],
)
def test_one_agent_not_processing_makes_the_worker_not_ready_and_says_why(agent, reason):
    other = replace(READY, agent="other")
    verdict = readiness(worker(other, replace(agent, agent="orders")))
    assert not verdict.ok
    assert verdict.body["agents"]["orders"] == {"ready": False, "reason": reason}
    assert verdict.body["agents"]["other"]["ready"] is True
    assert liveness(worker(other, agent)).ok  # waiting, retrying or restoring is no reason to restart


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (WorkerState(), "starting"),
        (worker(READY, stopping=True), "stopping"),
        (worker(), "no agents"),
    ],
)
def test_a_worker_starting_stopping_or_without_agents_is_not_ready(state, reason):
    verdict = readiness(state)
    assert not verdict.ok
    assert verdict.body["reason"] == reason


def test_a_worker_waiting_for_its_cluster_at_start_up_is_alive():
    assert liveness(WorkerState()).ok


def test_a_stopped_or_stalled_supervisor_is_not_alive():
    assert not liveness(worker(READY, supervisor_running=False)).ok
    assert liveness(worker(READY, supervisor_idle_s=SUPERVISOR_STALE_S - 1)).ok
    stalled = liveness(worker(READY, supervisor_idle_s=SUPERVISOR_STALE_S + 1))
    assert not stalled.ok
    assert "supervisor idle" in stalled.body["reason"]


def test_an_agent_stuck_past_the_watchdog_grace_is_not_alive():
    briefly = replace(READY, overdue_call="commit_transaction", overdue_s=0.3)  # the supervisor replaces it now
    assert liveness(worker(briefly)).ok
    stuck = liveness(worker(replace(briefly, overdue_s=STUCK_GRACE_S + 5)))
    assert not stuck.ok
    assert stuck.body["agents"] == {"orders": "commit_transaction overdue by 15 s"}


def test_reasons_are_bounded():
    verdict = readiness(worker(replace(READY, retrying="x" * 10_000)))
    assert len(verdict.body["agents"]["orders"]["reason"]) == MAX_TEXT
    assert len(json.dumps(verdict.body)) < 400


# ---------------------------------------------------------------------- the HTTP server


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


@pytest.fixture
def endpoints():
    server = Endpoints(0, "127.0.0.1").start()
    yield server
    server.close()


def test_the_server_answers_probes_from_the_attached_state(endpoints):
    code, body, kind = get(endpoints.port, "/readyz")
    assert (code, json.loads(body)["reason"], kind) == (503, "starting", "application/json")
    assert get(endpoints.port, "/healthz")[0] == 200

    state = worker(READY)
    endpoints.attach(lambda: state)
    code, body, _ = get(endpoints.port, "/readyz")
    assert code == 200
    assert json.loads(body)["agents"]["orders"]["ready"] is True

    state = worker(replace(READY, retrying="broker unreachable"))
    code, body, _ = get(endpoints.port, "/readyz")
    assert code == 503
    assert json.loads(body)["agents"]["orders"]["reason"] == "retrying: broker unreachable"
    assert get(endpoints.port, "/healthz")[0] == 200

    state = worker(READY, supervisor_running=False)
    assert get(endpoints.port, "/healthz")[0] == 503


def test_the_server_serves_metrics_and_refuses_other_paths(endpoints):
    code, body, kind = get(endpoints.port, "/metrics")
    assert code == 200
    assert kind.startswith("text/plain")
    assert b"# TYPE" in body
    assert get(endpoints.port, "/nothing")[0] == 404


def test_a_failing_snapshot_is_a_503_not_a_dead_server(endpoints):
    def broken() -> WorkerState:
        raise RuntimeError("secret=hunter2")

    endpoints.attach(broken)
    code, body, _ = get(endpoints.port, "/readyz")
    assert code == 503
    assert b"hunter2" not in body
    assert get(endpoints.port, "/metrics")[0] == 200
