"""The Kafka client's own voice, through our logging: its log lines and its error callbacks.

Left alone, librdkafka prints every failed connection attempt to stderr, a line or more a second
for as long as the client lives (about 290 lines before a command's one-line error, in the case
that made us write this), and reports errors nobody acts on: a consumer with a wrong password
retries forever. Every client config the project builds gets the two hooks of :func:`client_hooks`:

* ``logger``: a :class:`ClientLogger` that sends each line to the ``choreo.kafka.client`` logger one
  level *below* what librdkafka says (its "error" is a connection attempt it will retry; what the
  program decides about it is reported once, by the program), bounded in length, and at most once
  per distinct message per :data:`REPEAT_WINDOW_S` seconds, with the number of repeats held back;
* ``error_cb``: a :class:`ClientErrorReporter` that raises :class:`~processors.kafka_errors.KafkaFailure`
  for an access error (authentication, TLS, authorization: :func:`~processors.kafka_errors.is_access_error`),
  which no retry fixes while the credentials and ACLs stay as they are (counted, like every error
  the callback sees, in ``choreo_kafka_client_errors_total{error}``). Fencing and other fatal
  errors keep reaching the caller through the API call that failed, as before. confluent-kafka
  raises an exception from a callback out of the ``poll()``, ``consume()`` or ``flush()`` that
  ran it, so the code that polls learns the cause at once instead of waiting forever. Transient
  errors (broker down, timeouts) are logged like any client line.

Both only run inside the client's poll calls (confluent-kafka queues them until then). The most
recent fatal error and client settings are kept for :mod:`processors.kafka_diagnosis`, which names
the cause of a metadata request that merely timed out.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import Counter

from processors.kafka_errors import UNREACHABLE_CODES, KafkaFailure, is_access_error

LOGGER_NAME = "choreo.kafka.client"
REPEAT_WINDOW_S = 30.0
MAX_LINE_CHARS = 400

_DEMOTED = {  # librdkafka level (already mapped to logging by confluent-kafka) -> ours
    logging.CRITICAL: logging.ERROR,
    logging.ERROR: logging.WARNING,
    logging.WARNING: logging.INFO,
    logging.INFO: logging.DEBUG,
    logging.DEBUG: logging.DEBUG,
}
_SYSLOG = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR, 4: logging.WARNING}
CLIENT_ERRORS = Counter(
    "choreo_kafka_client_errors_total",
    "Errors Kafka clients reported through their error callback (a rising count: not healthy)",
    ["error"],
)
RETRY_POLICY = (
    "retrying: an unreachable or busy cluster is retried without end (access errors stop the process instead)"
)
_VARYING = re.compile(r"\d+")  # timings, counters, ports: "(after 313ms in state AUTH_REQ)" repeats


def python_level(level: int) -> int:
    """A syslog level (0 emergency .. 7 debug) as a logging level; logging levels pass through."""
    if level >= logging.DEBUG:
        return level
    return _SYSLOG.get(level, logging.INFO if level < 7 else logging.DEBUG)


def bounded(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """One line of at most `limit` characters (a broker message may quote whatever it was sent)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + f"… [{len(line) - limit} more chars]"


class RepeatFilter:
    """Lets a message through once per window; counts what it held back and says so next time."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last emitted at, suppressed since)
        self._lock = threading.Lock()

    def admit(self, message: str) -> tuple[bool, int]:
        """(emit now?, how many identical messages were held back before this one)."""
        key = _VARYING.sub("#", message)
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False, 0
            if len(self._seen) > 1000:  # a client that logs ever new text must not grow us
                self._seen.clear()
            self._seen[key] = (now, 0)
            return True, last[1] if last is not None else 0


class ClientLogger:
    """What confluent-kafka's ``logger`` setting takes: an object with ``log(level, fmt, *args)``."""

    def __init__(self, logger: logging.Logger | None = None, repeats: RepeatFilter | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.repeats = repeats or RepeatFilter()

    def log(self, level: int, msg: str, *args: Any, **_kwargs: Any) -> None:
        ours = _DEMOTED.get(python_level(level), logging.DEBUG)
        if not self.logger.isEnabledFor(ours):
            return
        try:
            text = msg % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(str(part) for part in (msg, *args))
        emit, held_back = self.repeats.admit(text)
        if not emit:
            return
        suffix = f" (repeated {held_back} more times in the last {self.repeats.window_s:.0f}s)" if held_back else ""
        self.logger.log(ours, "%s%s", bounded(text), suffix)

    # logging.Logger-shaped, for code that treats it as one
    def debug(self, msg: str, *args: Any) -> None:
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args)


class ClientErrorReporter:
    """``error_cb``: a fatal client error ends the poll that reported it, as a KafkaFailure."""

    def __init__(self, client_logger: ClientLogger, raise_fatal: bool = True) -> None:
        self.client_logger = client_logger
        self.raise_fatal = raise_fatal

    def __call__(self, err: KafkaError) -> None:
        access = is_access_error(err)
        CLIENT_ERRORS.labels(err.name()).inc()
        if access:
            _recent.fatal = err
            if self.raise_fatal:
                raise KafkaFailure(err, action="connect")
        policy = f"; {RETRY_POLICY}" if err.code() in UNREACHABLE_CODES else ""
        self.client_logger.log(logging.ERROR, "%s: %s%s", err.name(), err.str(), policy)


class _Recent:
    """The process's last fatal client error and last client settings (read by the diagnosis)."""

    def __init__(self) -> None:
        self.fatal: KafkaError | None = None
        self.config: dict[str, Any] | None = None


_recent = _Recent()
_shared_logger = ClientLogger()


def last_fatal_error() -> KafkaError | None:
    return _recent.fatal


def last_client_config() -> dict[str, Any] | None:
    """The settings (without hooks) of the client configured last in this process."""
    return None if _recent.config is None else dict(_recent.config)


_CONNECTION_PREFIXES = ("bootstrap.servers", "security.", "ssl.", "sasl.", "socket.", "enable.ssl.", "client.dns.")


def connection_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What decides whether a client can connect and authenticate, without the role's settings
    (group, transactional id, callbacks), so another client may connect the same way."""
    return {k: v for k, v in config.items() if k.startswith(_CONNECTION_PREFIXES)}


def client_hooks(config: Mapping[str, Any] | None = None, raise_fatal: bool = True) -> dict[str, Any]:
    """The ``logger`` and ``error_cb`` entries for a confluent-kafka config. All clients of the
    process share one logger, so a line repeated by every client is still said once."""
    if config is not None:
        _recent.config = connection_settings(config)
    return {"logger": _shared_logger, "error_cb": ClientErrorReporter(_shared_logger, raise_fatal)}


def with_client_hooks(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` plus the hooks, unless the caller set its own logger or error callback."""
    hooks = client_hooks(config)
    return {**hooks, **config}


__all__ = [
    "CLIENT_ERRORS",
    "LOGGER_NAME",
    "RETRY_POLICY",
    "ClientErrorReporter",
    "ClientLogger",
    "RepeatFilter",
    "bounded",
    "client_hooks",
    "connection_settings",
    "last_client_config",
    "last_fatal_error",
    "python_level",
    "with_client_hooks",
]
