"""The I/O-bound benchmark's latency server (benchmarks/io_bound.py) as the process the benchmark
starts: it answers after the latency asked for, counts calls and keys seen again, and stops on
SIGTERM. No broker."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import io_bound  # noqa: E402


def test_latency_server_answers_late_and_counts_repeated_keys(tmp_path: Path) -> None:
    server = io_bound.start_latency_server(tmp_path / "latency.log")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            started = time.perf_counter()
            first = client.post("/v1/calls?latency_ms=80", headers={"Idempotency-Key": "k1"})
            elapsed = time.perf_counter() - started
            assert first.status_code == 200 and first.json() == {"ok": True, "replayed": False}
            assert elapsed >= 0.08
            again = client.post("/v1/calls?latency_ms=0", headers={"Idempotency-Key": "k1"})
            assert again.json()["replayed"] is True
            assert client.post("/v1/calls?latency_ms=abc").status_code == 400
        assert server.stats() == {"requests": 2, "repeated_keys": 1, "distinct_keys": 1}
        server.reset()
        assert server.stats() == {"requests": 0, "repeated_keys": 0, "distinct_keys": 0}
    finally:
        server.stop()
    assert server.process.returncode == 0
