"""Stop signals (SIGTERM, SIGINT) acted on outside the signal handler.

Python runs a signal handler in the main thread, between two bytecodes of whatever that thread
was doing. A handler that takes a lock the interrupted code holds waits for itself forever: the
thread that would release the lock is the one running the handler. ``threading.Event.set`` takes
the lock that ``Event.wait`` holds on its way into and out of each wait, so a process whose main
thread waits on its stop event in a loop (as ``choreo worker`` does) and whose handler sets that
event hangs on a SIGTERM now and then: more often the more threads it runs, since the main
thread can lose the interpreter lock while it holds the event's. An orchestrator then kills it
after its grace period, its batch neither committed nor handed back cleanly. ``logging``,
``print`` on a buffered stream, ``Popen.send_signal`` and ``Thread.start`` take locks too.

So the handler here only records the signal (plain attribute writes) and writes one byte to a
pipe. A thread of its own reads the pipe and makes the calls the signal asks for, where taking a
lock is as safe as anywhere else.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from types import FrameType
from typing import Any

log = logging.getLogger("choreo.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SignalCallback = Callable[[int], None]


class StopSignals:
    """SIGTERM/SIGINT handlers that take no lock; ``on_signal`` callbacks run in the thread
    ``signal-relay``, once per signal received, in the order they were added.

    ``requested`` is true from the moment the first signal arrives (it is set in the handler,
    so a loop polling it sees the signal before any callback runs); ``stopped`` is an event set in
    the relay thread, for code that waits. With ``interrupt_aborts`` a second SIGINT raises
    ``KeyboardInterrupt`` in the main thread: Ctrl-C twice ends a command at once."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS, interrupt_aborts: bool = False) -> None:
        self.signals = tuple(signals)
        self.interrupt_aborts = interrupt_aborts
        self.requested = False
        self.stopped = threading.Event()
        self._callbacks: list[SignalCallback] = []
        self._relayed: list[int] = []  # each signal the relay has passed on, once, for late callbacks
        self._lock = threading.Lock()  # taken by the relay and on_signal only, never by the handler
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._relay: threading.Thread | None = None

    @property
    def installed(self) -> bool:
        return self._pipe is not None

    def install(self) -> StopSignals:
        """Take over the signals (from the main thread, as Python requires); a no-op if done."""
        if self._pipe is not None:
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # a handler must never wait on a full pipe
        self._pipe = (read_fd, write_fd)
        self._relay = threading.Thread(target=self._relay_signals, args=(read_fd,), name="signal-relay", daemon=True)
        self._relay.start()
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers and end the relay thread."""
        if self._pipe is None:
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        read_fd, write_fd = self._pipe
        self._pipe = None
        os.close(write_fd)  # the relay reads end-of-file and ends
        if self._relay is not None:
            self._relay.join(5.0)
        os.close(read_fd)

    def on_signal(self, callback: SignalCallback) -> None:
        """Call ``callback(signum)`` for each stop signal; at once (in this thread) for each kind
        already passed on, so a callback added late misses no stop and sees none twice."""
        with self._lock:
            self._callbacks.append(callback)
            missed = list(self._relayed)
        for signum in missed:
            self._call(callback, signum)

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # ------------------------------------------------------------------ internals
    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        """The handler proper: attribute writes and one ``os.write``, nothing that locks."""
        if self.interrupt_aborts and self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        pipe = self._pipe
        if pipe is None:
            return
        with suppress(OSError):  # full (a storm of signals: one byte is as good as many) or closed
            os.write(pipe[1], bytes((signum,)))

    def _relay_signals(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            self.stopped.set()
            for signum in data:
                with self._lock:
                    if signum not in self._relayed:
                        self._relayed.append(signum)
                    callbacks = list(self._callbacks)
                for callback in callbacks:
                    self._call(callback, signum)

    @staticmethod
    def _call(callback: SignalCallback, signum: int) -> None:
        try:
            callback(signum)
        except Exception:  # a failing callback must not end the relay: later signals still count
            log.exception("a stop-signal callback failed", extra={"signal": signal.Signals(signum).name})


__all__ = ["STOP_SIGNALS", "StopSignals"]
