"""The event loop an agent's ``async def`` handlers run on: one per agent session, in a thread of
its own, so the agent's loop (poll, commit, rebalance callbacks) stays plain blocking code and a
handler that awaits a slow dependency leaves that thread free.

Why a thread and not ``asyncio.run`` per call: the handlers of one agent share loop-bound things
(an ``httpx.AsyncClient``'s connection pool, asyncio semaphores of a bulkhead), which must live on
one loop for the session; and under key-ordered concurrency many handlers are awaited at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

T = TypeVar("T")
Closer = Callable[[], Awaitable[Any]]
CLOSE_TIMEOUT_S = 5.0  # how long a loop's closers may take, all together, before the loop stops anyway

log = logging.getLogger(__name__)

# The closers registered on each loop (weakly keyed: a loop nobody holds any more takes its list along).
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Closer]] = weakref.WeakKeyDictionary()
_CLOSERS_LOCK = threading.Lock()


def on_loop_close(closer: Closer) -> bool:
    """Have ``closer()`` awaited on the running loop just before a :class:`LoopThread` stops it.

    Why: things bound to an agent session's loop (an ``aiohttp.ClientSession`` and its keep-alive
    connections) are made lazily by the handlers' clients, which the engine does not know; when it
    replaces or stops the session it stops the loop, and without this their transports are left
    open and report themselves unclosed. Returns False outside a running loop (nothing registered);
    a loop that no LoopThread runs never calls its closers (its owner closes what it made)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    with _CLOSERS_LOCK:
        _CLOSERS.setdefault(loop, []).append(closer)
    return True


async def _run_closers(loop: asyncio.AbstractEventLoop) -> None:
    """Await the loop's closers, newest first; one that fails is logged and the others still run."""
    with _CLOSERS_LOCK:
        closers = _CLOSERS.pop(loop, [])
    for closer in reversed(closers):
        try:
            await closer()
        except Exception as exc:  # noqa: BLE001 - a close that fails must not keep the others open
            log.warning("a loop closer failed", extra={"error": type(exc).__name__})


class LoopThread:
    """An asyncio loop running in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                ready = threading.Event()
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._serve, args=(loop, ready), name=self.name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(self, awaitable: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``awaitable`` on the loop; its future may be cancelled (which cancels it)."""
        return asyncio.run_coroutine_threadsafe(awaitable, self.loop)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` to its end and return its result (from any thread but the loop's)."""
        return self.submit(_awaited(awaitable)).result()

    def close(self) -> None:
        """Await the closers registered on the loop (:func:`on_loop_close`, up to
        ``CLOSE_TIMEOUT_S``), then stop the loop once the callbacks queued now have run (tasks still
        pending are left to be collected with it: their inputs are abandoned and redone by whoever
        handles them next)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or loop.is_closed():
            return
        self._close_resources(loop, thread)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @staticmethod
    def _close_resources(loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        if thread is threading.current_thread():  # closed from one of its own callbacks: cannot wait
            loop.create_task(_run_closers(loop))
            return
        try:
            future = asyncio.run_coroutine_threadsafe(_run_closers(loop), loop)
        except RuntimeError:  # the loop is closing already
            return
        try:
            future.result(CLOSE_TIMEOUT_S)
        except (FutureTimeout, RuntimeError):
            future.cancel()
            log.warning("loop closers did not end in time", extra={"timeout_s": CLOSE_TIMEOUT_S})


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


__all__ = ["CLOSE_TIMEOUT_S", "LoopThread", "on_loop_close"]
