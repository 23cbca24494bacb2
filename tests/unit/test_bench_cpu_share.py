"""`benchmarks/cpu_share.py`: a flow point says how much CPU the worker and the broker used while
its orders were published, and how much of the machine was idle or stolen."""

from __future__ import annotations

import os
import socket
import sys
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
