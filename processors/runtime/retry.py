"""Bounded retries with exponential backoff and full jitter, and a circuit breaker per dependency.

A handler's transient failure (an exception type the agent declared transient, or a short-circuit
from an open breaker) is retried in place: the partition waits, bounded in attempts and in time, so
a flapping dependency costs latency, never order. When the budget is spent the event is dead-lettered
with reason ``retries_exhausted``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from processors.errors import ChoreoError

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
CIRCUIT_STATES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


class CircuitOpenError(ChoreoError):
    """The dependency's breaker is open: the call was short-circuited without reaching it.
    Always treated as transient by the engine."""

    def __init__(self, dependency: str, retry_in_s: float) -> None:
        self.dependency = dependency
        self.retry_in_s = retry_in_s
        super().__init__(f"circuit for {dependency!r} is open (next probe in {retry_in_s:.1f}s)")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts the first try; ``max_elapsed_s`` bounds the whole retry sequence
    of one event (a backoff that would cross it is not slept: the event is given up on)."""

    max_attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    max_elapsed_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.max_elapsed_s < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def backoff(self, attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**(attempt-1))], attempt counted from 1
        (the delay before the second try is ``backoff(1)``)."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempt - 1)))
        return rng(0.0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class BreakerPolicy:
    """Open when, over the last ``window_size`` calls (at least ``min_calls``), the failure rate is
    at least ``failure_rate_threshold``; stay open ``open_seconds``, then let one probe through."""

    failure_rate_threshold: float = 0.5
    window_size: int = 20
    min_calls: int = 5
    open_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            raise ValueError("BreakerPolicy.failure_rate_threshold must be in (0, 1]")
        if self.window_size < 1 or self.min_calls < 1 or self.min_calls > self.window_size:
            raise ValueError("BreakerPolicy needs 1 <= min_calls <= window_size")


class CircuitBreaker:
    """Closed → open on a failure rate above the threshold → half-open after ``open_seconds`` →
    closed when the single probe succeeds, open again when it fails.

    Thread-safe, and safe to use from an event loop's thread and pool threads at once: every read
    and change of the window, the state and the probe flag happens under one lock, never held while
    the call runs (and never around an ``await``), so a ``threads=True`` handler's ``ctx.call`` and
    an async handler's ``ctx.call_async`` can share one breaker."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._window: deque[bool] = deque(maxlen=self.policy.window_size)
        self._state = CLOSED
        self._opened_at = 0.0
        self._probing = False

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def reconfigure(self, policy: BreakerPolicy) -> None:
        """Take ``policy`` (the declared one with the settings' limits over it) before the first
        call; the window keeps its latest calls up to the new size."""
        with self._lock:
            self.policy = policy
            self._window = deque(self._window, maxlen=policy.window_size)

    @property
    def state(self) -> str:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker; raise :class:`CircuitOpenError` without calling it when open."""
        probe = self._admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self._record(False, probe)
            raise
        self._record(True, probe)
        return result

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """:meth:`call` for an async ``fn``. A call cancelled from outside (the handler's task
        cancelled at shutdown or rebalance) is no verdict on the dependency: it is not recorded,
        and a cancelled probe hands the probe on to the next call instead of blocking the
        half-open breaker for good. A timeout the caller turns into an exception is recorded."""
        probe = self._admit()
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            self._abandon(probe)
            raise
        except BaseException:
            self._record(False, probe)
            raise
        self._record(True, probe)
        return result

    # -------------------------------------------------------------- internals
    def _admit(self) -> bool:
        with self._lock:
            self._maybe_half_open()
            if self._state == CLOSED:
                return False
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            wait = max(0.0, self._opened_at + self.policy.open_seconds - self._clock())
            raise CircuitOpenError(self.name, wait)

    def _record(self, ok: bool, probe: bool) -> None:
        with self._lock:
            if probe:
                self._probing = False
                if ok:
                    self._window.clear()
                    self._set(CLOSED)
                else:
                    self._opened_at = self._clock()
                    self._set(OPEN)
                return
            if self._state != CLOSED:
                return
            self._window.append(ok)
            calls = len(self._window)
            if calls >= self.policy.min_calls:
                failures = calls - sum(self._window)
                if failures / calls >= self.policy.failure_rate_threshold:
                    self._opened_at = self._clock()
                    self._window.clear()
                    self._set(OPEN)

    def _abandon(self, probe: bool) -> None:
        if probe:
            with self._lock:
                self._probing = False

    def _maybe_half_open(self) -> None:
        if self._state == OPEN and self._clock() - self._opened_at >= self.policy.open_seconds:
            self._set(HALF_OPEN)

    def _set(self, state: str) -> None:
        if state != self._state:
            old, self._state = self._state, state
            if self._on_state_change is not None:
                self._on_state_change(old, state)


def __getattr__(name: str) -> Any:
    """``Dependencies`` moved to :mod:`processors.runtime.dependencies` (with the limits around the
    breaker); it is still importable from here, lazily, because that module builds on this one."""
    if name == "Dependencies":
        from processors.runtime.dependencies import Dependencies

        return Dependencies
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
