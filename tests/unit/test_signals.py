"""Stop signals are acted on outside the handler (processors.signals): a handler that took a lock
the interrupted main thread held would wait for itself forever. That hung ``choreo worker`` on
SIGTERM now and then (its main thread waits on the stop event the handler used to set)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from processors.signals import StopSignals

PACKAGE = Path(__file__).resolve().parents[2] / "processors"


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.timeout(30)
def test_a_signal_while_the_main_thread_holds_the_lock_its_callback_takes_does_not_hang() -> None:
    lock = threading.Lock()
    seen: list[int] = []

    def locked_callback(signum: int) -> None:
        with lock:
            seen.append(signum)

    with StopSignals(signals=(signal.SIGUSR1,)) as signals:
        signals.on_signal(locked_callback)
        with lock:
            signal.raise_signal(signal.SIGUSR1)  # the handler runs here, in this thread, the lock held
            assert signals.requested
            assert not seen  # the callback waits for the lock in the relay thread, not in the handler
        assert signals.stopped.wait(10)
        assert wait_until(lambda: seen == [signal.SIGUSR1])


def test_each_signal_reaches_each_callback_and_a_late_callback_hears_of_the_stop_once() -> None:
    early: list[int] = []
    with StopSignals(signals=(signal.SIGUSR1, signal.SIGUSR2)) as signals:
        signals.on_signal(early.append)
        signal.raise_signal(signal.SIGUSR1)
        assert wait_until(lambda: early == [signal.SIGUSR1])
        late: list[int] = []
        signals.on_signal(late.append)
        assert late == [signal.SIGUSR1]  # at once, in the caller's thread
        signal.raise_signal(signal.SIGUSR2)
        assert wait_until(lambda: early == [signal.SIGUSR1, signal.SIGUSR2])
        assert wait_until(lambda: late == [signal.SIGUSR1, signal.SIGUSR2])


def test_a_failing_callback_does_not_end_the_relay() -> None:
    seen: list[int] = []

    def failing(signum: int) -> None:
        raise RuntimeError("boom")

    with StopSignals(signals=(signal.SIGUSR1,)) as signals:
        signals.on_signal(failing)
        signals.on_signal(seen.append)
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)
        assert wait_until(lambda: len(seen) == 2)


def test_a_second_interrupt_aborts_when_asked_and_the_handlers_are_given_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(signals=(signal.SIGINT,), interrupt_aborts=True) as signals:
        assert signal.getsignal(signal.SIGINT) is not before
        signal.raise_signal(signal.SIGINT)
        assert signals.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopSignals(signals=(signal.SIGUSR1,)) as quiet:
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)  # without interrupt_aborts a repeat is only a repeat
        assert quiet.requested


# A process whose main thread waits on an event in a loop while other threads keep the interpreter
# busy, and whose stop callback sets that event: the shape of `choreo worker`. With the event set
# from the handler itself it hung within a few dozen signals here.
STORM_CHILD = textwrap.dedent(
    """
    import signal, sys, threading
    from processors.signals import StopSignals

    wake = threading.Event()
    done = False
    calls = 0

    def on_signal(signum):
        global calls
        calls += 1
        wake.set()

    def busy():
        n = 0
        while True:
            n += 1

    def read_stdin():
        global done
        sys.stdin.read()  # until the parent closes it
        done = True

    for _ in range(3):
        threading.Thread(target=busy, daemon=True).start()
    threading.Thread(target=read_stdin, daemon=True).start()
    signals = StopSignals(signals=(signal.SIGUSR1,)).install()
    signals.on_signal(on_signal)
    print("ready", flush=True)
    while not done:
        wake.wait(0.001)
        wake.clear()
    print(calls, flush=True)
    """
)


@pytest.mark.timeout(120)
def test_a_storm_of_signals_never_hangs_a_busy_process_waiting_on_its_stop_event(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", STORM_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for _ in range(3000):
            os.kill(child.pid, signal.SIGUSR1)
            time.sleep(0.0005)
        out, _ = child.communicate("", timeout=60)  # a hung main thread never reads its stdin's end
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert int(out.strip()) > 0


def test_no_other_module_installs_a_signal_handler() -> None:
    """Every stop signal goes through StopSignals: a handler written elsewhere is the same hang
    waiting to happen."""
    installing = re.compile(r"signal\.signal\(|add_signal_handler\(|set_wakeup_fd\(")
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.name != "signals.py" and installing.search(path.read_text())
    ]
    assert offenders == []
