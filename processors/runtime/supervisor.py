"""The worker process: runs some or all agents of an app, each in a thread around the loop of
:mod:`processors.runtime.worker`, until stopped.

Owns what is per process rather than per agent: the worker's identity (which names its clients
and transactional ids), the start-up checks and topics, starting the agents together and
reporting whether they all ended cleanly.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from processors.runtime._commit import Guarantee
from processors.runtime._preflight import check_worker_access
from processors.runtime.app import App
from processors.runtime.errors import WorkerError
from processors.runtime.topics import prepare_topics
from processors.runtime.worker import AgentRunner, WorkerOptions
from processors.settings import Settings


def default_worker_id(state_dir: str | os.PathLike[str]) -> str:
    """What identifies a worker instance when no ``--worker-id`` is given: its host and its state
    directory (``<host>-<10 hex digits of the directory's absolute path>``).

    The id names the worker's transactional ids, so it must be the same when the same instance
    restarts (its ``init_transactions`` then fences the open transaction of the one that died, at
    once, instead of leaving read_committed readers blocked until the transaction times out) and
    different for two workers on one host (each has a state directory of its own: RocksDB locks
    it). A pid is neither: it changes on every restart."""
    where = hashlib.sha256(str(Path(state_dir).resolve()).encode("utf-8")).hexdigest()[:10]
    return _safe(f"{socket.gethostname()}-{where}")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


class Worker:
    """Runs some or all agents of an app in this process until :meth:`stop` (or SIGTERM/SIGINT
    through the CLI); several workers, here or on other machines, share the partitions."""

    def __init__(
        self,
        app: App,
        settings: Settings | None = None,
        agents: Iterable[str] | None = None,
        worker_id: str | None = None,
        guarantee: str | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or Settings.load()
        self.app.configure(self.settings)
        self.specs = app.select(list(agents) if agents is not None else None)
        chosen = worker_id or os.environ.get("CHOREO_WORKER_ID")
        self.worker_id = _safe(chosen) if chosen else default_worker_id(self.settings.state_dir)
        self.guarantee = _parse_guarantee(guarantee or self.settings.processing_guarantee)
        self.options = options or WorkerOptions()
        self.stop_event = threading.Event()
        self.runners: list[AgentRunner] = []

    def prepare(self) -> None:
        """Checks that refuse to start (unknown types, undeclared cycle, inputs not co-partitioned)
        and the topics the agents need."""
        self.app.check()
        admin = AdminClient(self.settings.kafka_config())
        prepare_topics(self.app, self.specs, admin)
        check_worker_access(self.app, self.specs, admin)  # a missing ACL refuses the start, naming it

    def start(self) -> None:
        self.prepare()
        self.runners = [
            AgentRunner(self.app, spec, self.settings, self.worker_id, self.guarantee, self.stop_event, self.options)
            for spec in self.specs
        ]
        for runner in self.runners:
            runner.start()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            if not runner.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return all(r.error is None for r in self.runners)

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for runner in self.runners:
            while runner.thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                runner.thread.join(0.2 if remaining is None else min(0.2, remaining))

    @property
    def errors(self) -> list[BaseException]:
        return [r.error for r in self.runners if r.error is not None]

    def run(self) -> int:
        """Start, wait until stopped (or an agent fails), stop the others; 0 when all ended cleanly."""
        self.start()
        while not self.stop_event.is_set():
            self.stop_event.wait(0.5)
        self.join()
        return 1 if self.errors else 0


def _parse_guarantee(value: Any) -> Guarantee:
    try:
        return Guarantee(value)
    except ValueError:
        raise WorkerError(f"processing guarantee must be exactly_once or at_least_once, got {value!r}") from None


__all__ = ["Worker", "WorkerError", "default_worker_id"]
