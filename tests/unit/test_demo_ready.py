"""`choreo demo` publishes only once every worker's /readyz answers ready (processors/agents/demo.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from processors.agents.demo import wait_for_ready


class _Probe(ThreadingHTTPServer):
    ready_at: float = 0.0
    asked: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Probe

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.server.asked += 1
        ok = self.path == "/readyz" and time.monotonic() >= self.server.ready_at
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe() -> Iterator[_Probe]:
    server = _Probe(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_waits_until_the_worker_answers_ready(probe: _Probe) -> None:
    probe.ready_at = time.monotonic() + 0.5
    wait_for_ready([probe.server_address[1]], timeout=10)
    assert time.monotonic() >= probe.ready_at
    assert probe.asked >= 2  # asked while not ready, then once more


def test_a_worker_never_ready_is_reported(probe: _Probe) -> None:
    probe.ready_at = time.monotonic() + 3600
    with pytest.raises(TimeoutError, match=str(probe.server_address[1])):
        wait_for_ready([probe.server_address[1]], timeout=0.5)
