"""Start and stop the services as processes of their own: what ``choreo demo``, the test fixtures
and the benchmarks use (``start_commerce_services`` hands back the environment the workers need).

A service is started on port 0 and prints ``<name> listening on <url>`` once it serves; the parent
waits for that line in the service's log file (a file, not a pipe: nobody has to keep reading it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from processors.errors import ChoreoError

_LISTENING = re.compile(rb"listening on (http://\S+)")


class ServiceStartError(ChoreoError):
    """A service did not come up (its log names why)."""


@dataclass
class RunningService:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(
    kind: str, db: Path, log_path: Path, args: Sequence[str] = (), port: int = 0, timeout: float = 30.0
) -> RunningService:
    """``choreo <kind> serve --db DB --port PORT ARGS...`` in a process of its own; returns once it
    answers (raises :class:`ServiceStartError` with the log's tail if it exits or stays silent)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "processors.cli.main", kind, "serve", "--db", str(db), "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ)
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_bytes())
        if found:
            return RunningService(kind, found.group(1).decode(), process, log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait()
    tail = log_path.read_bytes()[-1000:].decode("utf-8", "replace")
    raise ServiceStartError(f"{kind} service did not start (exit {process.returncode}); log {log_path}: {tail}")


@dataclass
class CommerceServices:
    """The PSP and the delivery sink of one run, and the environment that points workers at them."""

    psp: RunningService
    sink: RunningService
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"CHOREO_PSP_URL": self.psp.url, "CHOREO_SINK_URL": self.sink.url, **self.extra_env}

    def stop(self) -> None:
        self.psp.stop()
        self.sink.stop()


def start_commerce_services(
    work_dir: Path,
    psp_latency_ms: float = 0.0,
    psp_failure_rate: float = 0.0,
    sink_latency_ms: float = 0.0,
    sink_failure_rate: float = 0.0,
    seed: int | None = None,
) -> CommerceServices:
    """Start the PSP and the sink with their ledgers under ``work_dir`` (kept across runs: the
    summaries filter by order prefix). Hand ``.env`` to the worker processes; ``.stop()`` at the end."""
    seed_args = ["--seed", str(seed)] if seed is not None else []
    psp = start_service(
        "psp",
        work_dir / "psp.sqlite",
        work_dir / "psp.log",
        ["--latency-ms", str(psp_latency_ms), "--failure-rate", str(psp_failure_rate), *seed_args],
    )
    try:
        sink = start_service(
            "sink",
            work_dir / "sink.sqlite",
            work_dir / "sink.log",
            ["--latency-ms", str(sink_latency_ms), "--failure-rate", str(sink_failure_rate), *seed_args],
        )
    except BaseException:
        psp.stop()
        raise
    return CommerceServices(psp, sink)
