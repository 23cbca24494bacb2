"""Latency, transient failures and outage windows a service injects into its own answers, so the
callers' timeouts, retries and breakers have something real to do."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outage:
    """Unavailable (503 on every request) from ``start_s`` after the service started, for
    ``duration_s``."""

    start_s: float
    duration_s: float

    @classmethod
    def parse(cls, text: str) -> Outage:
        """``START+DURATION`` in seconds, e.g. ``30+5``: down from 30 s after start for 5 s."""
        start, sep, duration = text.partition("+")
        try:
            outage = cls(float(start), float(duration))
        except ValueError:
            outage = None
        if not sep or outage is None or outage.start_s < 0 or outage.duration_s <= 0:
            raise ValueError(f"an outage is START+DURATION in seconds (e.g. 30+5), got {text!r}")
        return outage


@dataclass
class Faults:
    """What the service does to a request before it handles it: an outage answers 503 at once; a
    transient failure answers 503 after the latency, without any effect; otherwise the latency is
    waited and the request handled. Changeable at run time (the admin endpoint)."""

    latency_s: float = 0.0
    failure_rate: float = 0.0
    outages: Sequence[Outage] = ()
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic
    _started: float = field(init=False)
    _down_until: float = field(init=False, default=0.0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._started = self.clock()
        self._random = random.Random(self.seed)
        self.check(self.latency_s, self.failure_rate)

    @staticmethod
    def check(latency_s: float, failure_rate: float) -> None:
        if latency_s < 0:
            raise ValueError(f"latency must not be negative, got {latency_s}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure rate must be in [0, 1], got {failure_rate}")

    def in_outage(self) -> bool:
        now = self.clock()
        if now < self._down_until:
            return True
        since = now - self._started
        return any(o.start_s <= since < o.start_s + o.duration_s for o in self.outages)

    def fails(self) -> bool:
        with self._lock:
            return self._random.random() < self.failure_rate

    def delay(self) -> None:
        if self.latency_s > 0:
            time.sleep(self.latency_s)

    def update(self, latency_s: float | None, failure_rate: float | None, outage_s: float | None) -> None:
        """The admin endpoint: new latency or failure rate, or an outage from now for ``outage_s``."""
        self.check(self.latency_s if latency_s is None else latency_s, failure_rate or 0.0)
        if latency_s is not None:
            self.latency_s = latency_s
        if failure_rate is not None:
            self.failure_rate = failure_rate
        if outage_s is not None:
            self._down_until = self.clock() + max(0.0, outage_s)

    def describe(self) -> dict[str, object]:
        return {
            "latency_ms": round(self.latency_s * 1000, 3),
            "failure_rate": self.failure_rate,
            "outages": [f"{o.start_s:g}+{o.duration_s:g}" for o in self.outages],
            "in_outage": self.in_outage(),
        }
