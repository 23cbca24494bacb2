"""The event loop an agent's ``async def`` handlers run on: one per agent session, in a thread of
its own, so the agent's loop (poll, commit, rebalance callbacks) stays plain blocking code and a
handler that awaits a slow dependency leaves that thread free.

Why a thread and not ``asyncio.run`` per call: the handlers of one agent share loop-bound things
(an ``httpx.AsyncClient``'s connection pool, asyncio semaphores of a bulkhead), which must live on
one loop for the session; and under key-ordered concurrency many handlers are awaited at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


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
        """Stop the loop once the callbacks queued now have run (tasks still pending are left to be
        collected with it: their inputs are abandoned and redone by whoever handles them next)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


__all__ = ["LoopThread"]
