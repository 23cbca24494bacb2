"""The supervision of ``choreo worker --processes N`` (processors.runtime._processes) with small
real child programs in place of workers: the stop, restart and fatal policies and the exit code;
the merged metrics and the probes answered for all children from their real HTTP servers. The
real-broker proof is tests/integration/test_engine_processes.py."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processors.runtime import _processes
from processors.runtime._endpoints import Endpoints
from processors.runtime._health import AgentState, WorkerState
from processors.runtime._processes import Child, ProcessGroup, child_command, merge_families

# A child that runs until SIGTERM and then exits 0, like a worker; "exit N" ends at once with N.
SLEEPER = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"


def program(code_by_index: dict[int, str]):
    def command(args: Sequence[str], child: Child) -> list[str]:
        return [sys.executable, "-c", code_by_index.get(child.index, SLEEPER)]

    return command


def group(tmp_path: Path, n: int = 2, **code: str) -> ProcessGroup:
    return ProcessGroup(
        ["--app", "m:a"],
        n,
        "w",
        tmp_path,
        metrics=False,
        state_memory_mb=256,
        shutdown_timeout_s=20,
        command=program({int(k[1:]): v for k, v in code.items()}),
    )


def run_in_thread(g: ProcessGroup) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(g.run()), daemon=True)
    thread.start()
    return thread, codes


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_child_gets_the_parents_options_and_its_own_identity(tmp_path: Path) -> None:
    g = ProcessGroup(["--app", "m:a", "--guarantee", "exactly_once"], 3, "pod-7", tmp_path, True, 300)
    assert [c.worker_id for c in g.children] == ["pod-7-0", "pod-7-1", "pod-7-2"]
    assert [c.state_dir for c in g.children] == [tmp_path / f"process-{i}" for i in range(3)]
    assert g.state_memory_mb == 100  # the pod's budget, split
    cmd = child_command(g.worker_args, g.children[1])
    assert cmd[1:4] == ["-m", "processors.cli.main", "worker"]
    assert cmd[cmd.index("--processes") + 1] == "1"  # a child never forks again
    assert cmd[cmd.index("--worker-id") + 1] == "pod-7-1"
    assert cmd[cmd.index("--state-dir") + 1] == str(tmp_path / "process-1")
    assert cmd[cmd.index("--metrics-port") + 1] == str(g.children[1].metrics_port)
    assert len({c.metrics_port for c in g.children}) == 3


def test_sigterm_stops_all_children_and_exits_0(tmp_path: Path) -> None:
    g = group(tmp_path)
    thread, codes = run_in_thread(g)
    wait_for(lambda: all(c.running for c in g.children))
    g.stop()
    thread.join(30)
    assert codes == [0]
    # 0, or -SIGTERM when the signal came before the program's handler was installed
    assert all(c.exit_codes in ([0], [-15]) for c in g.children)


def test_a_dead_child_is_restarted_with_the_same_identity(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_processes, "RESTART_MIN_S", 0.1)
    g = group(tmp_path)
    g.children[0].backoff_s = 0.1
    thread, codes = run_in_thread(g)
    wait_for(lambda: all(c.running for c in g.children))
    first = g.children[0].proc
    assert first is not None
    first.kill()
    wait_for(lambda: g.children[0].restarts == 1 and g.children[0].running)
    assert g.children[0].proc is not first and g.children[0].worker_id == "w-0"
    g.stop()
    thread.join(30)
    assert codes == [0]  # the restarted child stopped cleanly
    assert g.children[0].exit_codes[0] == -9 and g.children[0].exit_codes[-1] in (0, -15)


@pytest.mark.parametrize("fatal", [1, 2])
def test_a_child_that_fails_fatally_stops_the_others_with_its_code(tmp_path: Path, fatal: int) -> None:
    g = group(tmp_path, c1=f"import time, sys; time.sleep(0.5); sys.exit({fatal})")
    thread, codes = run_in_thread(g)
    thread.join(30)
    assert codes == [fatal]
    assert g.children[0].exit_codes in ([0], [-15])  # stopped by SIGTERM
    assert g.children[1].restarts == 0


def child_server(state: WorkerState, body: bytes) -> Endpoints:
    server = Endpoints(0, "127.0.0.1")
    server.attach(lambda: state)
    server.exposition = lambda: body
    return server.start()


def ready_state(partitions: int) -> WorkerState:
    agent = AgentState("orders", running=True, joined=True, partitions=partitions)
    return WorkerState(started=True, supervisor_running=True, agents=(agent,))


EXPOSITION = (
    b"# HELP choreo_events_in_total Events in\n# TYPE choreo_events_in_total counter\n"
    b'choreo_events_in_total{agent="orders"} 5.0\n'
)


def test_the_parent_answers_for_all_children(tmp_path: Path) -> None:
    servers = [child_server(ready_state(2), EXPOSITION), child_server(WorkerState(), EXPOSITION)]
    g = group(tmp_path)
    try:
        for child, server in zip(g.children, servers, strict=True):
            child.metrics_port = server.port
        g.start()
        parent = g.serve(0)
        ready = _get(parent.port, "/readyz")
        assert ready[0] == 503  # the second child is still starting
        assert ready[1]["processes"]["w-0"]["agents"]["orders"]["reason"] == "processing 2 partition(s)"
        assert ready[1]["processes"]["w-1"]["reason"] == "starting"
        servers[1].attach(lambda: ready_state(1))
        assert _get(parent.port, "/readyz")[0] == 200
        assert _get(parent.port, "/healthz")[0] == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{parent.port}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        events = families["choreo_events_in"]
        assert sorted(s.labels["process"] for s in events.samples) == ["0", "1"]
        assert families["choreo_worker_processes"].samples[0].value == 2
        g.stop()
        assert _get(parent.port, "/readyz")[0] == 503  # stopping
        parent.close()
    finally:
        g.stop()
        g._join()
        for server in servers:
            server.close()


def test_merge_families_keeps_one_declaration_per_family() -> None:
    merged = merge_families([("0", EXPOSITION.decode()), ("1", EXPOSITION.decode())])
    assert [f.name for f in merged] == ["choreo_events_in"]
    assert [s.labels for s in merged[0].samples] == [
        {"agent": "orders", "process": "0"},
        {"agent": "orders", "process": "1"},
    ]


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
