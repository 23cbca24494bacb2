"""Deadlines on the blocking client calls of an agent, enforced from outside the agent's thread.

Python cannot interrupt a call that is blocked inside librdkafka (an idle exactly-once worker was
seen to block in ``send_offsets_to_transaction`` forever after a broker restart, past the timeout
it was given). So the agent's thread does not try: it announces each blocking call with
:meth:`CallWatch.watch` (name and deadline: two attribute writes, nothing on the hot path waits),
and the worker's supervisor, on its own thread, asks :meth:`CallWatch.overdue` every fraction of
a second. An overdue call gets the agent *abandoned* (:meth:`CallWatch.abandon`): its thread is
left to its fate, its stores are closed and a fresh agent (new consumer, new producer whose
``init_transactions`` fences the stuck one) takes over. Should the stuck call ever return, the
abandoned thread learns it at once (:class:`Abandoned` is raised where the call returns) and
touches nothing more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class Abandoned(Exception):  # noqa: N818 - not an error of the agent: it was replaced
    """Raised in an agent's thread whose stuck call outlived its deadline: another agent took over."""


@dataclass(frozen=True)
class WatchedCall:
    name: str
    started: float
    deadline: float

    def elapsed(self, now: float) -> float:
        return now - self.started


class CallWatch:
    """The blocking call an agent's thread is in now, if any, and whether it was abandoned."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._call: WatchedCall | None = None
        self.abandoned = False

    @contextmanager
    def watch(self, name: str, seconds: float) -> Iterator[None]:
        """Announce a blocking call that must return within ``seconds``. Nested watches are part
        of the outer call (a rebalance callback inside ``poll``): the outer deadline holds."""
        with self._lock:
            if self.abandoned:
                raise Abandoned(name)
            outer = self._call
            if outer is None:
                now = self._clock()
                self._call = WatchedCall(name, now, now + seconds)
        try:
            yield
        finally:
            if outer is None:
                with self._lock:
                    self._call = None
                    abandoned = self.abandoned
                if abandoned:
                    raise Abandoned(name)

    def overdue(self) -> WatchedCall | None:
        """The call in progress when it is past its deadline."""
        call = self._call
        if call is not None and self._clock() > call.deadline:
            return call
        return None

    def abandon(self) -> WatchedCall | None:
        """Give up on the agent if its call is still overdue (it may have returned meanwhile);
        returns the call given up on. From then on the agent's thread raises :class:`Abandoned`
        wherever it next meets a watch."""
        with self._lock:
            call = self._call
            if call is None or self._clock() <= call.deadline or self.abandoned:
                return None
            self.abandoned = True
            return call

    def check(self) -> None:
        """Raise :class:`Abandoned` in an agent's thread that was given up on."""
        if self.abandoned:
            raise Abandoned("agent replaced")
