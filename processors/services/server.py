"""The small HTTP/JSON plumbing both services share, on the standard library's
:class:`~http.server.ThreadingHTTPServer` (one thread per connection, keep-alive).

A route is ``(method, path) -> handler(request) -> Reply``. Request bodies are bounded and must be
JSON objects; nothing from a request body is ever logged or echoed in an error (bodies carry card
tokens and e-mail addresses): the access log has method, path, status and time only.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from processors.services.faults import Faults
from processors.signals import StopSignals

MAX_BODY_BYTES = 64 * 1024
MAX_KEY_CHARS = 255
log = logging.getLogger("choreo.services")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: dict[str, Any]
    raw: bytes

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key") or None

    def fingerprint(self) -> str:
        """What a repeated key must match: the endpoint and the body's canonical JSON, hashed (the
        body itself, with its card token or address, is never stored)."""
        canonical = orjson.dumps(self.body, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(self.path.encode() + b"\n" + canonical).hexdigest()


@dataclass(frozen=True)
class Reply:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str) -> Reply:
    """An error answer: a stable ``code`` and a message that never quotes the request."""
    return Reply(status, {"error": {"code": code, "message": message}})


Route = Callable[[Request], Reply]


class ServiceServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The listen backlog. socketserver's default of 5 overflows when an async client opens a few
    # dozen connections at once: the connections past it stall ~1 s for a SYN retransmit, and some
    # are reset (the client sees a ReadError and retries). Measured with 24 concurrent charges at
    # 20 ms latency: 5 → 1.2-1.7 s and 1-3 resets per burst; 128 → 0.4-0.5 s, none.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], routes: dict[tuple[str, str], Route], faults: Faults) -> None:
        self.routes = routes
        self.faults = faults
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: ServiceServer
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    # Headers and body go out as separate writes: with Nagle's algorithm and the client's delayed
    # ACK, every answer would wait ~40 ms for nothing.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the standard library's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # the access log below has no request content; the base class would print to stderr

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        path, _, query = self.path.partition("?")
        reply = self._answer(method, path, query)
        payload = orjson.dumps(dict(reply.body))
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        log.debug("%s %s %d %.1fms", method, path[:100], reply.status, (time.perf_counter() - started) * 1000)

    def _answer(self, method: str, path: str, query: str) -> Reply:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return error(413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length > 0 else b""
        route = self.server.routes.get((method, path))
        if route is None:
            return error(404, "not_found", "no such endpoint")
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return error(400, "invalid_json", "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "invalid_body", "the body must be a JSON object")
        headers = {k.lower(): v for k, v in self.headers.items()}
        key = headers.get("idempotency-key")
        if key is not None and (len(key) > MAX_KEY_CHARS or not key.isprintable()):
            return error(400, "invalid_idempotency_key", f"Idempotency-Key must be printable, at most {MAX_KEY_CHARS}")
        try:
            return route(Request(method, path, query, headers, body, raw))
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged by type, never by content
            log.error("%s %s failed: %s", method, path[:100], type(exc).__name__)
            return error(500, "internal_error", "the service failed; the request had no effect")


def admin_faults(faults: Faults) -> Route:
    """``POST /v1/admin/faults`` with any of latency_ms, failure_rate, outage_s (an outage from now)."""

    def run(request: Request) -> Reply:
        body = request.body
        try:
            latency = body.get("latency_ms")
            rate = body.get("failure_rate")
            outage = body.get("outage_s")
            faults.update(
                None if latency is None else float(latency) / 1000,
                None if rate is None else float(rate),
                None if outage is None else float(outage),
            )
        except (TypeError, ValueError) as exc:
            return error(400, "invalid_faults", str(exc))
        return Reply(200, faults.describe())

    return run


def serve_forever(server: ServiceServer, name: str, on_stop: Callable[[], None]) -> None:
    """Print the URL (a parent waiting for the port reads this line), serve until SIGTERM/SIGINT,
    then close the ledger."""
    signals = StopSignals().install()  # server.shutdown() waits for serve_forever: not from a handler
    signals.on_signal(lambda _signum: server.shutdown())
    sys.stdout.write(f"{name} listening on {server.url}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        on_stop()
