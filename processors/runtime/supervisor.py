"""The worker process: runs some or all agents of an app, each in a thread around the loop of
:mod:`processors.runtime.worker`, until stopped.

Owns what is per process rather than per agent: the worker's identity (which names its clients
and transactional ids), the start-up checks and topics, starting the agents together and
reporting whether they all ended cleanly.

It also supervises them (the retry/fatal policy is :mod:`processors.runtime._recovery`): an agent
whose session failed transiently gets a fresh one after a backoff; one whose blocking client call
outlived its deadline (:mod:`processors.runtime._watchdog`) is given up, its stores closed, and
replaced at once; a fatal failure stops the worker. Start-up waits out a broker that is not there
yet the same way. A stop is bounded: agents that do not end within ``shutdown_timeout_s`` (stuck
in a client call) are left behind and the worker ends anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processors.kafka_diagnosis import failure_of
from processors.kafka_errors import ErrorKind, KafkaFailure, describe, is_unreachable, kafka_error_of
from processors.runtime._commit import Guarantee
from processors.runtime._health import AgentState, WorkerState
from processors.runtime._preflight import check_worker_access
from processors.runtime._recovery import BROKER_UNREACHABLE, AgentHealth, Backoff, cause_of, fatal_line, is_fatal
from processors.runtime.agent import AgentSpec
from processors.runtime.app import App
from processors.runtime.errors import WorkerError
from processors.runtime.metrics import AgentMetrics
from processors.runtime.topics import prepare_topics
from processors.runtime.worker import AgentRunner, WorkerOptions
from processors.settings import Settings

log = logging.getLogger("choreo.worker")

SUPERVISE_EVERY_S = 0.2


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


@dataclass
class AgentSlot:
    """One agent of the worker across its sessions: the runner now, its health, its backoff."""

    spec: AgentSpec
    metrics: AgentMetrics
    health: AgentHealth
    backoff: Backoff = field(default_factory=Backoff)
    runner: AgentRunner | None = None
    restart_at: float = 0.0
    fatal: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    left_behind: list[AgentRunner] = field(default_factory=list)  # abandoned, stuck in a client call

    @property
    def done(self) -> bool:
        return self.runner is None or not self.runner.thread.is_alive()


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
        self.slots: list[AgentSlot] = []
        self.shutdown_timeout_s = 30.0
        self._supervisor: threading.Thread | None = None
        self._supervised_at = 0.0  # the supervisor's last turn (liveness)

    @property
    def runners(self) -> list[AgentRunner]:
        """The agents' current sessions."""
        return [slot.runner for slot in self.slots if slot.runner is not None]

    @property
    def left_behind(self) -> list[AgentRunner]:
        """Sessions given up while stuck in a client call (their threads may never end)."""
        return [r for slot in self.slots for r in slot.left_behind if r.thread.is_alive()]

    def prepare(self) -> None:
        """Checks that refuse to start (unknown types, undeclared cycle, inputs not co-partitioned)
        and the topics the agents need. A broker that does not answer yet is waited for (with
        backoff, one log line) until it does, the worker is stopped, or ``startup_wait_s`` has
        passed (then one line naming the cause, exit 1); what no wait fixes (authorization,
        configuration) is raised at once."""
        self.app.check()
        backoff, since = Backoff(), time.monotonic()
        waiting = False
        while not self.stop_event.is_set():
            try:
                admin = AdminClient(self.settings.kafka_config())
                prepare_topics(self.app, self.specs, admin)
                check_worker_access(self.app, self.specs, admin)  # a missing ACL refuses the start, naming it
            except (KafkaException, TimeoutError) as exc:
                err = kafka_error_of(exc)
                # a metadata request only says "transport failure": ask what really stops it (a
                # refused password or certificate is fatal; a broker that is not there is not)
                failure = failure_of(exc, action="prepare topics")
                if failure is not None and failure.kind is ErrorKind.FATAL:
                    raise failure from None
                self._check_startup_wait(time.monotonic() - since, failure or exc)
                if not waiting:
                    waiting = True
                    cause = BROKER_UNREACHABLE if err is None or is_unreachable(err) else "topics not ready"
                    log.warning(f"{cause} at start, retrying", extra={"error": describe(err) if err else str(exc)})
                self.stop_event.wait(backoff.next_delay())
                continue
            if waiting:
                log.info(f"broker reachable after {time.monotonic() - since:.1f} s")
            return

    def _check_startup_wait(self, waited: float, cause: BaseException) -> None:
        """Past ``startup_wait_s`` a cluster that still does not answer is reported, not waited for
        (0 waits without end): an orchestrator then sees a failed start instead of a silent one."""
        limit = self.settings.startup_wait_s
        if limit and waited >= limit:
            reason = " ".join(str(cause).split())[:400]
            raise WorkerError(f"no cluster at start-up after {waited:.0f} s (startup_wait_s): {reason}") from None

    def start(self) -> None:
        self.prepare()
        if self.stop_event.is_set():
            return
        self.slots = []
        for spec in self.specs:
            metrics = AgentMetrics(spec.name, self.guarantee)
            self.slots.append(AgentSlot(spec, metrics, AgentHealth(spec.name, metrics)))
        for slot in self.slots:
            self._start_runner(slot)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def _start_runner(self, slot: AgentSlot) -> None:
        runner = AgentRunner(
            self.app, slot.spec, self.settings, self.worker_id, self.guarantee, self.stop_event, self.options,
            slot.metrics, slot.health,
        )  # fmt: skip
        slot.runner = runner
        runner.start()

    # ------------------------------------------------------------------ supervision
    def _supervise(self) -> None:
        """Watch every agent until the worker stops and all have ended (or were left behind)."""
        stop_deadline: float | None = None
        while True:
            now = self._supervised_at = time.monotonic()
            if self.stop_event.is_set():
                stop_deadline = stop_deadline or now + self.shutdown_timeout_s
            for slot in self.slots:
                self._check(slot, now, stopping=stop_deadline is not None)
            if stop_deadline is not None:
                if all(slot.done for slot in self.slots):
                    return
                if now > stop_deadline:
                    for slot in self.slots:
                        if not slot.done and slot.runner is not None:
                            call = slot.runner.watch.overdue()
                            log.error(
                                "agent did not stop in time, leaving it behind",
                                extra={"agent": slot.spec.name, "call": call.name if call else None},
                            )
                            slot.left_behind.append(slot.runner)
                            slot.runner = None
                    return
            time.sleep(SUPERVISE_EVERY_S)

    def _check(self, slot: AgentSlot, now: float, stopping: bool) -> None:
        runner = slot.runner
        if runner is None:
            if not stopping and slot.fatal is None and now >= slot.restart_at:
                self._start_runner(slot)
            return
        if runner.ready.is_set() and runner.error is None:
            slot.ready.set()
        if runner.thread.is_alive():
            call = runner.watch.abandon() if runner.watch.overdue() is not None else None
            if call is not None:
                self._stuck(slot, runner, call.name, call.elapsed(now))
            elif slot.health.healthy:
                slot.backoff.reset()
            return
        error = runner.error
        if error is None:
            if not stopping:  # ended without being asked: start again
                slot.runner = None
            return
        if is_fatal(error) or stopping:
            if is_fatal(error) and slot.fatal is None:
                slot.fatal = error
                slot.ready.set()
                log.error(
                    "agent stopped: " + fatal_line(error),
                    extra={"agent": slot.spec.name},
                    exc_info=error if not isinstance(error, KafkaFailure | WorkerError) else None,
                )
                self.stop_event.set()
            return
        cause, detail = cause_of(error)
        slot.health.trouble(cause, detail, restart=True)
        slot.runner = None
        slot.restart_at = now + slot.backoff.next_delay()

    def _stuck(self, slot: AgentSlot, runner: AgentRunner, call: str, elapsed: float) -> None:
        """A client call outlived its deadline: count it, say it, close the agent's stores and
        start a fresh agent now (its producer fences the stuck one)."""
        slot.metrics.stuck_call(call)
        slot.health.trouble("stuck client call", f"{call} blocked for {elapsed:.1f} s", restart=True)
        log.error(
            "client call stuck past its deadline; replacing the agent's clients",
            extra={"agent": slot.spec.name, "call": call, "seconds": round(elapsed, 1)},
        )
        try:
            runner.release(call)
        except Exception as exc:  # noqa: BLE001 - a store that will not close must not stop the supervisor
            log.warning("closing a stuck agent's stores failed", extra={"agent": slot.spec.name, "error": str(exc)})
        slot.left_behind.append(runner)
        slot.runner = None
        slot.restart_at = time.monotonic()

    # ------------------------------------------------------------------ health
    def health_state(self) -> WorkerState:
        """A snapshot for the /healthz and /readyz probes (:mod:`processors.runtime._health`);
        read from the HTTP server's thread, so it only reads attributes."""
        now, supervisor = time.monotonic(), self._supervisor
        return WorkerState(
            started=supervisor is not None,
            supervisor_running=supervisor is not None and supervisor.is_alive(),
            supervisor_idle_s=now - self._supervised_at if supervisor is not None else 0.0,
            stopping=self.stop_event.is_set(),
            agents=tuple(_agent_state(slot, now) for slot in list(self.slots)),
        )

    # ------------------------------------------------------------------ life cycle
    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if not slot.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return not self.errors

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    @property
    def errors(self) -> list[BaseException]:
        """What stopped the worker: the fatal failures of its agents."""
        return [slot.fatal for slot in self.slots if slot.fatal is not None]

    def run(self) -> int:
        """Start, wait until stopped (or an agent fails fatally), stop the others; 0 when all
        ended cleanly. Transient failures never end it (see :meth:`_supervise`)."""
        self.start()
        while not self.stop_event.is_set():
            self.stop_event.wait(0.5)
        self.join(self.shutdown_timeout_s + 5)
        return 1 if self.errors else 0


def _agent_state(slot: AgentSlot, now: float) -> AgentState:
    runner = slot.runner
    assignment = getattr(runner, "assignment", None)  # a session that has not opened its clients yet has none
    call = runner.watch.overdue() if runner is not None else None
    return AgentState(
        agent=slot.spec.name,
        running=runner is not None and runner.thread.is_alive(),
        joined=assignment is not None and assignment.assigned_once,
        rebalancing=assignment is not None and assignment.awaiting,
        partitions=len(assignment.stores) if assignment is not None else 0,
        restoring=len(assignment.paused) if assignment is not None else 0,
        retrying=slot.health.cause,
        fatal=slot.fatal is not None,
        overdue_call=call.name if call is not None else None,
        overdue_s=now - call.deadline if call is not None else 0.0,
    )


def _parse_guarantee(value: Any) -> Guarantee:
    try:
        return Guarantee(value)
    except ValueError:
        raise WorkerError(f"processing guarantee must be exactly_once or at_least_once, got {value!r}") from None


__all__ = ["Worker", "WorkerError", "default_worker_id"]
