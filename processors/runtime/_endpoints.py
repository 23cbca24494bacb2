"""The worker's one HTTP server on its metrics port: ``/metrics`` (Prometheus exposition),
``/healthz`` (alive) and ``/readyz`` (ready); see :mod:`processors.runtime._health`.

Standard library only (a threading server on daemon threads, so a slow scraper never holds the
worker's exit); the exposition is prometheus-client's own. Until a worker is attached (or when
none is, as in tools that only expose metrics) the probes answer as for a worker starting.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from processors.runtime._health import Verdict, WorkerState, liveness, readiness

log = logging.getLogger("choreo.worker")

StateSource = Callable[[], WorkerState]
Probes = Callable[[str], Verdict]  # "/healthz" or "/readyz" -> the verdict
Exposition = Callable[[], bytes]


class Endpoints:
    """The server and where its probes read the worker's state from."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        self.source: StateSource = WorkerState
        # A worker of several processes answers for all of them (processors.runtime._processes):
        # these replace the verdicts from a snapshot and this process's own registry.
        self.probes: Probes | None = None
        self.exposition: Exposition = lambda: generate_latest(REGISTRY)
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                endpoints.answer(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                pass  # probes every few seconds must not fill the log

        self.server = ThreadingHTTPServer((addr, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-endpoints", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> Endpoints:
        self.thread.start()
        return self

    def attach(self, source: StateSource) -> None:
        """Answer the probes from ``source`` (the supervisor's snapshot) from now on."""
        self.source = source

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0].rstrip("/") or "/"
        if path in ("/metrics", "/"):  # "/" as prometheus-client served it before
            self._send(request, 200, self.exposition(), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            verdict = self._verdict(path)
            body = json.dumps(verdict.body, sort_keys=True).encode("utf-8") + b"\n"
            self._send(request, 200 if verdict.ok else 503, body, "application/json")
        else:
            self._send(request, 404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _verdict(self, path: str) -> Verdict:
        try:
            if self.probes is not None:
                return self.probes(path)
            state = self.source()
        except Exception as exc:  # noqa: BLE001 - a probe answers 503, it never kills the server
            log.warning("health snapshot failed", extra={"error": type(exc).__name__})
            return Verdict(False, {"status": "unknown", "reason": "state unavailable"})
        return liveness(state) if path == "/healthz" else readiness(state)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str) -> None:
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(body)


__all__ = ["Endpoints", "Exposition", "Probes", "StateSource"]
