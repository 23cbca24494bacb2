"""What an agent does when the world fails around it: the retry/fatal policy of the worker.

One decision for whatever ends an agent's session (its consumer, producer, restorer and stores):

* fatal (:func:`is_fatal`): authorization or authentication refused, a bad configuration, fenced
  by a newer instance of itself, an engine bug. The worker stops and exits non-zero with one line.
* anything else is transient: the broker is away, a transaction could not be committed or aborted
  in time, a client was left in a state it cannot go on from, a call outlived its deadline. The
  session is closed (or abandoned, when a call is stuck) and a fresh one starts after a backoff
  that grows to :attr:`Backoff.max_s`; forever, since an outage has no length we could promise.

:class:`AgentHealth` is what an operator sees of it: one structured log line per state change
("broker unreachable, retrying" once, then "recovered after 12.3 s"), never one per retry, and the
``choreo_agent_healthy`` gauge (0 while retrying).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from confluent_kafka import KafkaException

from processors.kafka_errors import ErrorKind, KafkaFailure, classify, describe, is_unreachable, kafka_error_of
from processors.runtime._watchdog import Abandoned
from processors.runtime.errors import WorkerError
from processors.runtime.metrics import AgentMetrics

log = logging.getLogger("choreo.worker")

BROKER_UNREACHABLE = "broker unreachable"
# After a recovery, client handles that had not noticed it yet may report the old trouble once
# more (a coordinator connection retried on its backoff): within this long, that is no new state.
AFTERSHOCK_S = 10.0


class TransientFailure(Exception):
    """The agent's session cannot go on, but a fresh one may: close it, back off, start again."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


def is_fatal(exc: BaseException) -> bool:
    """Whether what ended an agent's session ends the worker too (see the module docstring)."""
    if isinstance(exc, TransientFailure | Abandoned | BufferError):
        return False
    if isinstance(exc, KafkaFailure):
        return exc.kind is not ErrorKind.TRANSIENT
    err = kafka_error_of(exc)
    if err is not None:
        return classify(err) is ErrorKind.FATAL
    return True  # WorkerError (a decision of the engine), or a bug: retrying would loop


def cause_of(exc: BaseException) -> tuple[str, str]:
    """A short cause (what the state-change line says) and a bounded detail."""
    if isinstance(exc, TransientFailure):
        return exc.cause, exc.detail
    if isinstance(exc, Abandoned):
        return "stuck client call", str(exc)
    err = kafka_error_of(exc)
    if err is not None:
        return (BROKER_UNREACHABLE if is_unreachable(err) else "client error"), describe(err)
    return type(exc).__name__, str(exc)[:300]


def fatal_line(exc: BaseException) -> str:
    """The one line a fatal stop is reported with."""
    err = kafka_error_of(exc)
    if err is not None and not isinstance(exc, KafkaFailure):
        return describe(err)
    text = " ".join(str(exc).split())
    return text[:500] if isinstance(exc, KafkaFailure | WorkerError) else f"{type(exc).__name__}: {text[:500]}"


def transient_from(exc: KafkaException, action: str) -> BaseException:
    """A KafkaException met in ``action``: the fatal kinds as :class:`KafkaFailure`, the rest as a
    :class:`TransientFailure` (the session is replaced)."""
    err = kafka_error_of(exc)
    if err is None:
        return TransientFailure(action, str(exc)[:300])
    if classify(err) is ErrorKind.FATAL:
        return KafkaFailure(err, action=action)
    cause = BROKER_UNREACHABLE if is_unreachable(err) else f"{action} failed"
    return TransientFailure(cause, describe(err, action=action))


@dataclass
class Backoff:
    """Exponential backoff with jitter between session attempts; reset once an agent recovers."""

    initial_s: float = 0.5
    max_s: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempt = 0


class AgentHealth:
    """Healthy or retrying (since when, why), for one agent across its sessions. Thread-safe: the
    agent's thread, its client callbacks and the worker's supervisor all report to it."""

    def __init__(self, agent: str, metrics: AgentMetrics) -> None:
        self.agent = agent
        self.metrics = metrics
        self._lock = threading.Lock()
        self.cause: str | None = None
        self.since = 0.0
        self.retries = 0
        self.last_trouble = 0.0
        self.last_cause: str | None = None
        self.recovered_at = 0.0
        metrics.healthy(True)

    @property
    def healthy(self) -> bool:
        return self.cause is None

    def trouble(self, cause: str, detail: str = "", *, restart: bool = False) -> None:
        """Something transient went wrong; logs only when the state (or its cause) changes."""
        with self._lock:
            self.last_trouble = time.monotonic()
            if restart:
                self.retries += 1
                self.metrics.session_restart(cause)
            if self.cause == cause:
                return
            if (
                self.cause is None
                and not restart
                and cause == self.last_cause
                and time.monotonic() - self.recovered_at < AFTERSHOCK_S
            ):
                return  # a reconnect of a client handle that has not noticed the recovery yet
            first = self.cause is None
            if first:
                self.since = time.monotonic()
                self.retries = 1 if restart else 0
            self.cause = cause
        self.metrics.healthy(False)
        log.warning(
            f"{cause}, retrying" if first else f"still retrying, now: {cause}",
            extra={"agent": self.agent, "cause": cause, "error": detail[:300]},
        )

    def recovered(self, quiet_s: float = 0.0) -> None:
        """Back to healthy; with ``quiet_s``, only once nothing went wrong for that long (a probe
        answering while reconnects still fail is not a recovery yet: one line, not a flap)."""
        with self._lock:
            if self.cause is None or time.monotonic() - self.last_trouble < quiet_s:
                return
            cause, seconds, retries = self.cause, time.monotonic() - self.since, self.retries
            self.cause = None
            self.last_cause = cause
            self.recovered_at = time.monotonic()
            self.retries = 0
        self.metrics.healthy(True)
        log.info(
            f"recovered after {seconds:.1f} s",
            extra={"agent": self.agent, "cause": cause, "seconds": round(seconds, 1), "restarts": retries},
        )


__all__ = [
    "BROKER_UNREACHABLE",
    "AgentHealth",
    "Backoff",
    "TransientFailure",
    "cause_of",
    "fatal_line",
    "is_fatal",
    "transient_from",
]
