"""`benchmarks/cpu_share.py`: a flow point says how much CPU the worker and the broker used while
its orders were published, and how much of the machine was idle or stolen."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cpu_share  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc (Linux)")


def test_the_process_listening_on_a_port_is_found_and_a_closed_port_is_none() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert cpu_share.listening_pid(port) == os.getpid()
    assert cpu_share.listening_pid(port) is None


def test_a_busy_window_shows_the_process_cores_and_ms_per_order() -> None:
    meter = cpu_share.CpuMeter({"worker": os.getpid(), "broker": None})
    start = meter.snapshot()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # 0.3 s of this process's CPU, however loaded the machine
        pass
    figures = meter.between(start, meter.snapshot(), orders=100)
    assert figures["worker_ms_per_order"] >= 2.5  # 300 ms / 100 orders, less a tick of rounding
    assert 0 < figures["worker_cores"] <= os.cpu_count()
    assert figures["broker_cores"] is None and figures["broker_ms_per_order"] is None
    assert 0 <= figures["idle_share"] <= 1 and 0 <= figures["steal_share"] <= 1
    line = cpu_share.describe_cpu(figures)
    assert line.startswith("cpu: worker ") and "broker" not in line and "idle" in line


def test_a_gone_process_and_a_bootstrap_list_read_safely() -> None:
    assert cpu_share.process_cpu_s(2**22 + 12345) is None
    assert cpu_share.bootstrap_port("127.0.0.1:19092,other:9093") == 19092
    assert cpu_share.bootstrap_port("localhost") is None
    assert cpu_share.describe_cpu(None) == "cpu not measured"


def _burn_as(name: str, seconds: float, burnt: threading.Event, release: threading.Event) -> None:
    """Rename this thread as Linux shows it (the JVM names its compiler threads so), spend
    ``seconds`` of its own CPU, however loaded the machine, and stay alive until released."""
    Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name)
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass
    burnt.set()
    release.wait(60)


def test_a_thread_family_is_counted_apart_from_the_rest_of_its_process() -> None:
    families = {"broker_jit": ("broker", cpu_share.JIT_THREADS), "broker_gc": ("broker", cpu_share.GC_THREADS)}
    meter = cpu_share.CpuMeter({"worker": None, "broker": os.getpid()}, families=families)
    burnt, release = threading.Event(), threading.Event()
    start = meter.snapshot()
    compiler = threading.Thread(target=_burn_as, args=("C2 CompilerThread0", 0.3, burnt, release))
    compiler.start()
    try:
        assert burnt.wait(60)
        used = cpu_share.thread_cpu_s(os.getpid(), cpu_share.JIT_THREADS)
        assert used is not None and list(used) == [str(compiler.native_id)]
        assert sum(used.values()) >= 0.25  # 0.3 s, less a tick of rounding
        figures = meter.between(start, meter.snapshot(), orders=10)
    finally:
        release.set()
        compiler.join()
    assert figures["broker_jit_cores"] > 0
    assert figures["broker_gc_cores"] == 0  # no thread of this process is named like a GC thread
    assert cpu_share.thread_cpu_s(os.getpid(), ("no such thread",)) == {}
    assert cpu_share.thread_cpu_s(2**22 + 12345, cpu_share.JIT_THREADS) is None
    assert f"broker JIT {figures['broker_jit_cores']} cores" in cpu_share.describe_cpu(figures)
