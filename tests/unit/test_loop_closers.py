"""An agent session's event loop closes what its handlers' clients made on it (issue 14 item 3):
``LoopThread.close`` awaits the closers registered with ``on_loop_close`` before the loop stops, so
an aiohttp session with a keep-alive connection open does not outlive its loop."""

from __future__ import annotations

import gc
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from processors.runtime import on_loop_close
from processors.runtime._aio import LoopThread
from processors.services.client import LoopSessions, session_factory


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection stays open after the answer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_loop_thread_closes_the_aiohttp_session_made_on_it_before_it_stops(http_url):
    sessions = LoopSessions(session_factory(http_url, timeout_s=5.0, max_connections=4))
    loop = LoopThread("test-closers")

    async def call():
        session = sessions.get()
        async with session.post("/v1/x", data=b"{}") as response:
            await response.read()
        return session

    session = loop.run(call())
    connector = session.connector
    assert connector is not None and not session.closed  # a keep-alive connection is open
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        loop.close()
        assert session.closed and connector.closed
        assert len(sessions) == 0  # the closed session is no longer handed out
        del session, connector
        gc.collect()


def test_closers_run_newest_first_and_one_failing_does_not_keep_the_others_open():
    ran: list[str] = []
    loop = LoopThread("test-closers-order")

    async def register() -> None:
        async def first() -> None:
            ran.append("first")

        async def failing() -> None:
            ran.append("failing")
            raise RuntimeError("boom")

        async def last() -> None:
            ran.append("last")

        for closer in (first, failing, last):
            assert on_loop_close(closer)

    loop.run(register())
    assert ran == []  # nothing runs while the loop serves
    loop.close()
    assert ran == ["last", "failing", "first"]
    loop.close()  # a second close has nothing left to run
    assert ran == ["last", "failing", "first"]


def test_outside_a_running_loop_nothing_is_registered():
    async def never() -> None:
        raise AssertionError("not to be run")

    assert on_loop_close(never) is False
