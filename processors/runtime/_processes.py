"""``choreo worker --processes N``: one worker as N processes, so a machine's cores are used.

One worker process runs all its agents under one interpreter lock; N of them on one machine do
not. Each child is a complete worker (``choreo worker --processes 1``) and a member of every
agent's consumer group, so Kafka spreads each agent's partitions over the children as it would
over separate machines. A child's identity is derived from the parent's: worker id
``<id>-<i>`` (its transactional ids, so a restarted child fences the one it replaces) and state
directory ``<state_dir>/process-<i>`` (RocksDB locks a directory per process). The state memory
budget is split between them, so the machine's total stays what ``state_memory_mb`` says.

The parent runs no agent. It:

* starts the children and forwards SIGTERM/SIGINT to them: each finishes its batch, commits and
  exits 0; the parent then exits 0, or 1 if a child did not end cleanly;
* restarts a child that died (killed by a signal, crashed) after a backoff, with the same id, so
  the group moves only that child's partitions and back; a child that exited 1 or 2 (a fatal
  failure or a usage error: the same cause would stop it again) stops all of them, and the parent
  exits with that code so the orchestrator sees the failure;
* if the parent dies without stopping them (SIGKILL), each child notices that its parent is gone
  (``CHOREO_PARENT_PID``, checked by the worker command) and stops as on SIGTERM;
* answers for the worker as a whole on the metrics port: ``/healthz`` is alive while every child
  process runs (or is waiting for its restart) and answers alive; ``/readyz`` is ready when every
  child is ready; ``/metrics`` is every child's exposition with a ``process`` label added, plus
  ``choreo_worker_processes`` and ``choreo_worker_process_restarts_total``. The children serve on
  ports of their own on 127.0.0.1's free ports (named in the parent's log), which the parent reads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from processors.runtime._endpoints import Endpoints
from processors.runtime._health import Verdict

log = logging.getLogger("choreo.worker")

PARENT_PID_ENV = "CHOREO_PARENT_PID"
FATAL_EXITS = (1, 2)  # a fatal failure / a usage error: a restart would fail the same way
# 0, or ended by our SIGTERM before its interpreter got to install the worker's handler: it had
# started nothing, so there was nothing to commit
STOPPED_CLEANLY = (0, -signal.SIGTERM)
RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long starts its backoff anew when it dies
PROBE_TIMEOUT_S = 2.0
WATCH_EVERY_S = 0.2
MIN_STATE_MEMORY_MB = 16


@dataclass
class Child:
    """One worker process of the group, across its restarts."""

    index: int
    worker_id: str
    state_dir: Path
    metrics_port: int | None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # waiting for a restart until then
    restarts: int = 0
    backoff_s: float = RESTART_MIN_S
    exit_codes: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_command(worker_args: Sequence[str], child: Child) -> list[str]:
    """``choreo worker`` for one child: the parent's own options plus the child's identity."""
    cmd = [sys.executable, "-m", "processors.cli.main", "worker", *worker_args, "--processes", "1"]
    cmd += ["--worker-id", child.worker_id, "--state-dir", str(child.state_dir)]
    if child.metrics_port is not None:
        cmd += ["--metrics-port", str(child.metrics_port)]
    return cmd


class ProcessGroup:
    """N worker processes that start, report and stop together (see the module's docstring)."""

    def __init__(
        self,
        worker_args: Sequence[str],
        processes: int,
        worker_id: str,
        state_dir: Path,
        metrics: bool,
        state_memory_mb: int,
        shutdown_timeout_s: float = 90.0,
        command: Callable[[Sequence[str], Child], list[str]] = child_command,
    ) -> None:
        self.worker_args = list(worker_args)
        self.command = command  # what a child runs (the tests give other programs)
        self.children = [
            Child(i, f"{worker_id}-{i}", state_dir / f"process-{i}", free_port() if metrics else None)
            for i in range(processes)
        ]
        self.state_memory_mb = max(MIN_STATE_MEMORY_MB, state_memory_mb // processes)
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stopping = threading.Event()
        self.fatal_code: int | None = None
        self.registry = CollectorRegistry()
        self._up = Gauge("choreo_worker_processes", "Worker processes running now", registry=self.registry)
        self._restarts = Counter(
            "choreo_worker_process_restarts", "Worker processes restarted after they died", registry=self.registry
        )
        self.registry.register(_ChildMetrics(self))

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
        ports = {c.worker_id: c.metrics_port for c in self.children if c.metrics_port is not None}
        log.info("worker processes started", extra={"processes": len(self.children), "metrics_ports": ports})

    def _spawn(self, child: Child) -> None:
        child.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            PARENT_PID_ENV: str(os.getpid()),
            "CHOREO_STATE_MEMORY_MB": str(self.state_memory_mb),
        }
        env.pop("CHOREO_WORKER_ID", None)  # the child's own id is on its command line
        child.proc = subprocess.Popen(self.command(self.worker_args, child), env=env, stdin=subprocess.DEVNULL)
        child.started_at = time.monotonic()
        child.restart_at = None
        self._up.set(sum(1 for c in self.children if c.running))

    def stop(self) -> None:
        """Ask every child to stop (SIGTERM: finish the batch, commit, exit 0)."""
        self.stopping.set()
        for child in self.children:
            if child.running:
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Start the children, watch them until stopped, return the worker's exit code."""
        self.start()
        while not self.stopping.is_set():
            self._watch(time.monotonic())
            self.stopping.wait(WATCH_EVERY_S)
        self.stop()
        return self._join()

    def _watch(self, now: float) -> None:
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at and not self.stopping.is_set():
                    child.restarts += 1
                    self._restarts.inc()
                    log.warning("restarting a worker process", extra={"worker_process": child.worker_id})
                    self._spawn(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            child.exit_codes.append(code)
            child.proc = None  # reaped: its exit is recorded
            self._up.set(sum(1 for c in self.children if c.running))
            if code in FATAL_EXITS:
                log.error(
                    "a worker process stopped on a fatal error; stopping the others",
                    extra={"worker_process": child.worker_id, "exit_code": code},
                )
                self.fatal_code = code
                self.stopping.set()
                return
            if now - child.started_at >= STABLE_AFTER_S:
                child.backoff_s = RESTART_MIN_S
            child.restart_at = now + child.backoff_s
            log.error(
                "a worker process died; restarting it",
                extra={"worker_process": child.worker_id, "exit_code": code, "in_s": round(child.backoff_s, 1)},
            )
            child.backoff_s = min(RESTART_MAX_S, child.backoff_s * 2)

    def _join(self) -> int:
        """Wait for the children asked to stop (bounded; one that overruns is killed). 0 only when
        each ended its last run cleanly; a fatal child's code when one stopped the worker."""
        deadline = time.monotonic() + self.shutdown_timeout_s
        clean = True
        for child in self.children:
            if child.proc is None:  # reaped already: died (waiting for a restart) or stopped the worker
                clean = clean and bool(child.exit_codes) and child.exit_codes[-1] in STOPPED_CLEANLY
                continue
            try:
                code = child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "a worker process did not stop in time; killing it", extra={"worker_process": child.worker_id}
                )
                child.proc.kill()
                code = child.proc.wait()
            child.exit_codes.append(code)
            child.proc = None
            clean = clean and code in STOPPED_CLEANLY
        self._up.set(0)
        if self.fatal_code is not None:
            return self.fatal_code
        return 0 if clean else 1

    # ------------------------------------------------------------------ reporting
    def probe(self, path: str) -> Verdict:
        """The worker's /healthz or /readyz: every child's, by process."""
        per_child: dict[str, Any] = {}
        ok = True
        for child in self.children:
            if child.restart_at is not None:
                # a dead child waiting for its restart: the worker is alive but not ready
                per_child[child.worker_id] = {"status": "restarting"}
                ok = ok and path == "/healthz"
                continue
            if not child.running:
                per_child[child.worker_id] = {"status": "not running"}
                ok = False
                continue
            if child.metrics_port is None:
                per_child[child.worker_id] = {"status": "running"}
                continue
            code, body = _fetch_json(child.metrics_port, path)
            per_child[child.worker_id] = body
            ok = ok and code == 200
        if self.stopping.is_set() and path == "/readyz":
            ok = False
        good = "alive" if path == "/healthz" else "ready"
        bad = "dead" if path == "/healthz" else "not ready"
        return Verdict(ok, {"status": good if ok else bad, "processes": per_child})

    def child_metrics(self) -> Iterator[tuple[Child, str]]:
        for child in self.children:
            if child.metrics_port is None or not child.running:
                continue
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{child.metrics_port}/metrics", timeout=PROBE_TIMEOUT_S
                ) as response:
                    yield child, response.read().decode("utf-8", "replace")
            except (OSError, urllib.error.URLError):
                continue  # starting or stopping: its series are missing from this scrape

    def serve(self, port: int) -> Endpoints:
        """The worker's one HTTP server, answering for all children."""
        endpoints = Endpoints(port)
        endpoints.probes = self.probe
        endpoints.exposition = lambda: generate_latest(self.registry)
        return endpoints.start()


class _ChildMetrics:
    """A collector: the children's families, merged by name, each sample labelled ``process``."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group

    def collect(self) -> Iterable[Metric]:
        return merge_families((str(child.index), text) for child, text in self.group.child_metrics())


def merge_families(expositions: Iterable[tuple[str, str]]) -> list[Metric]:
    """Families of several expositions as one: samples gain a ``process`` label, HELP and TYPE
    are those of the first exposition that has the family."""
    merged: dict[str, Metric] = {}
    for process, text in expositions:
        for family in text_string_to_metric_families(text):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                target.samples.append(sample._replace(labels={**sample.labels, "process": process}))
    return list(merged.values())


def _fetch_json(port: int, path: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503: the child's own verdict, in its body
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"status": "unreadable answer"}
    except (OSError, ValueError):
        return 0, {"status": "no answer"}


def watch_parent(on_orphaned: Any, every_s: float = 1.0) -> threading.Thread | None:
    """In a child: call ``on_orphaned()`` once the parent named by ``CHOREO_PARENT_PID`` is gone
    (it was SIGKILLed: nobody would stop this process otherwise)."""
    text = os.environ.get(PARENT_PID_ENV)
    if not text or not text.isdigit():
        return None
    parent = int(text)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.error("the parent worker process is gone; stopping")
        on_orphaned()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


__all__ = ["Child", "ProcessGroup", "child_command", "merge_families", "watch_parent"]
