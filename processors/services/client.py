"""The client side of the services' Idempotency-Key protocol, one mapping for the sync and the async
clients: a POST under the call's key, and what its outcome means for the caller.

* no answer (timeout, connection refused or lost), a 5xx, or a 409 ``request_in_progress`` (the
  first request with this key is still running): ``unavailable``, worth a retry with the same key;
* any other 4xx: ``rejected``, a bug or a data problem that a retry would not fix.

Errors name the path, the status and the service's error code (64 characters at most), never the
request body (it has card tokens and addresses).

The sync clients use :mod:`httpx`; the async ones :mod:`aiohttp`. Measured here against ``choreo psp
serve`` with 0 ms latency, 600 charges: ``httpx.AsyncClient`` (0.28) gave 320, 180 and 47 calls/s
at 1, 16 and 64 in flight, ``aiohttp`` 1300, 990 and 610 (at 50 ms and 64 in flight: httpx 38/s,
aiohttp 415/s), which is httpx's known connection-pool cost under concurrency (encode/httpx#3215,
open); httpcore's pool also has an open bug with cancelled requests (encode/httpcore#961), and
``ctx.call_async``'s timeout cancels requests.

An :class:`aiohttp.ClientSession` is bound to the event loop it was made on, and the engine gives
an agent session an event loop of its own (a replaced session a new one): :class:`LoopSessions`
makes one per running loop, on its first request, and closes them.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import orjson

from processors.runtime import on_loop_close

ERROR_CODE_CHARS = 64
NO_ANSWER = "no answer in time"
NO_CONNECTION = "could not connect"


# ---------------------------------------------------------------------- sync (httpx)
def post_idempotent(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    key: str,
    unavailable: type[Exception],
    rejected: type[Exception],
    settled: frozenset[str] = frozenset(),
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` under ``Idempotency-Key: key``; (status, answer) or the caller's error. A 4xx
    whose error code is in ``settled`` (what the request asks for holds already, e.g. a charge
    refunded under another key) is an answer, not an error."""
    _require_key(path, key, rejected)
    with _httpx_errors(path, unavailable):
        response = client.post(path, json=body, headers={"Idempotency-Key": key})
    return answer_of(response.status_code, response.content, path, unavailable, rejected, settled)


def get_json(
    client: httpx.Client, path: str, params: dict[str, str], unavailable: type[Exception], rejected: type[Exception]
) -> dict[str, Any]:
    """GET a read-only look-up (no key: it has no effect); its answer or the caller's error, as
    :func:`post_idempotent` maps them."""
    with _httpx_errors(path, unavailable):
        response = client.get(path, params=params)
    return answer_of(response.status_code, response.content, path, unavailable, rejected)[1]


# ---------------------------------------------------------------------- async (aiohttp)
async def post_idempotent_async(
    session: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    key: str,
    unavailable: type[Exception],
    rejected: type[Exception],
    settled: frozenset[str] = frozenset(),
) -> tuple[int, dict[str, Any]]:
    """:func:`post_idempotent` on an async session: the same request, the same error mapping. A
    cancellation (``ctx.call_async``'s timeout, a cancelled handler) propagates as it is."""
    _require_key(path, key, rejected)
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    with _aiohttp_errors(path, unavailable):
        async with session.post(path, data=orjson.dumps(body), headers=headers) as response:
            status, raw = response.status, await response.read()
    return answer_of(status, raw, path, unavailable, rejected, settled)


async def get_json_async(
    session: aiohttp.ClientSession,
    path: str,
    params: dict[str, str],
    unavailable: type[Exception],
    rejected: type[Exception],
) -> dict[str, Any]:
    """:func:`get_json` on an async session."""
    with _aiohttp_errors(path, unavailable):
        async with session.get(path, params=params) as response:
            status, raw = response.status, await response.read()
    return answer_of(status, raw, path, unavailable, rejected)[1]


def session_factory(base_url: str, timeout_s: float, max_connections: int) -> Callable[[], aiohttp.ClientSession]:
    """What :class:`LoopSessions` calls on a loop's first request: a pooled keep-alive session to
    ``base_url`` (at most ``max_connections``), ``timeout_s`` for a whole request."""

    def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=base_url,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections),
            raise_for_status=False,
        )

    return make


# ---------------------------------------------------------------------- shared
def answer_of(
    status: int,
    raw: bytes,
    path: str,
    unavailable: type[Exception],
    rejected: type[Exception],
    settled: frozenset[str] = frozenset(),
) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) of a 2xx, or of a 4xx whose code is ``settled`` (its answer is then
    ``{"error": {"code": code}}``); a 5xx or a 409 in progress raises ``unavailable``, another 4xx
    ``rejected``."""
    code = error_code(status, raw)
    if status >= 500 or code == "request_in_progress":
        raise unavailable(f"{path}: {status} {code}")
    if status >= 400 and code in settled:
        return status, {"error": {"code": code}}
    if status >= 400:
        raise rejected(f"{path}: {status} {code}")
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise unavailable(f"{path}: {status} with a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise unavailable(f"{path}: {status} with a body that is not a JSON object")
    return status, answer


def error_code(status: int, raw: bytes) -> str:
    """The service's error code of a 4xx/5xx answer ("" for a success), bounded in length."""
    if status < 400:
        return ""
    try:
        return str(orjson.loads(raw)["error"]["code"])[:ERROR_CODE_CHARS]
    except Exception:  # noqa: BLE001 - a proxy's HTML page: the status says enough
        return "unreadable error"


@contextmanager
def _httpx_errors(path: str, unavailable: type[Exception]) -> Iterator[None]:
    """No answer from an httpx request: ``unavailable``, naming the path and the kind only."""
    try:
        yield
    except httpx.TimeoutException:
        raise unavailable(f"{path}: {NO_ANSWER}") from None
    except httpx.ConnectError:
        raise unavailable(f"{path}: {NO_CONNECTION}") from None
    except httpx.TransportError as exc:
        raise unavailable(f"{path}: {type(exc).__name__}") from None


@contextmanager
def _aiohttp_errors(path: str, unavailable: type[Exception]) -> Iterator[None]:
    """:func:`_httpx_errors` for aiohttp; a cancellation propagates as it is."""
    try:
        yield
    except TimeoutError:  # the session's own timeout (aiohttp raises TimeoutError subclasses)
        raise unavailable(f"{path}: {NO_ANSWER}") from None
    except aiohttp.ClientConnectorError:
        raise unavailable(f"{path}: {NO_CONNECTION}") from None
    except aiohttp.ClientError as exc:
        raise unavailable(f"{path}: {type(exc).__name__}") from None


def _require_key(path: str, key: str, rejected: type[Exception]) -> None:
    if not key:
        raise rejected(f"{path}: an idempotency key is required (call it through ctx.call or ctx.call_async)")


class LoopSessions:
    """One :class:`aiohttp.ClientSession` (from ``factory``) per running event loop, made on the
    loop's first :meth:`get`: a pooled keep-alive session never crosses loops, and nothing
    loop-bound is made at import or agent declaration time.

    :meth:`aclose` closes the running loop's session, :meth:`close` every one (from outside their
    loops). A session is also registered with :func:`processors.runtime.on_loop_close`: the engine's
    loop of an agent session awaits its close before it stops, so its transports do not outlive the
    loop (else: ResourceWarning "unclosed transport"). The session of a loop that closed without any
    of these (a loop the engine does not run) is closed when the next loop makes its own: its
    connections went with its loop, and closing it keeps it from reporting itself unclosed."""

    def __init__(self, factory: Callable[[], aiohttp.ClientSession]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> aiohttp.ClientSession:
        """The running loop's session (raises RuntimeError outside a running loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            session = self._sessions.get(loop)
            if session is not None and not session.closed:
                return session
            dead = [(old, s) for old, s in self._sessions.items() if old.is_closed()]
            for old, _s in dead:
                del self._sessions[old]
            session = self._sessions[loop] = self._factory()
        on_loop_close(self.aclose)
        for _old, stale in dead:
            _forget(stale)
        return session

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    async def aclose(self) -> None:
        """Close the running loop's session, if it made one."""
        with self._lock:
            session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every session from outside its loop: on a loop running in another thread the close
        runs there (waited for at most ``timeout_s``); a closed loop's session is only released."""
        with self._lock:
            sessions = list(self._sessions.items())
            self._sessions.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, session in sessions:
            if session.closed:
                continue
            if loop.is_closed():
                _forget(session)
            elif loop is current:
                loop.create_task(session.close())
            elif not loop.is_running():
                if current is None:  # stopped, not closed: run the close on it here
                    loop.run_until_complete(session.close())
            else:
                future = asyncio.run_coroutine_threadsafe(session.close(), loop)
                try:
                    future.result(timeout_s)
                except (FutureTimeout, RuntimeError):  # the loop stopped meanwhile, or is stuck
                    future.cancel()


_FORGETTING: set[asyncio.Task[None]] = set()  # closes under way (a task is only weakly held by its loop)


def _forget(session: aiohttp.ClientSession) -> None:
    """Close the session of a loop that is closed already. Its connector's close touches no loop
    then (nothing is left to wait for), so it runs on whatever loop runs here, or a short one."""
    connector = session.connector
    session.detach()  # the session counts as closed from here
    if connector is None or connector.closed:
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_closed(connector))
        return
    task = running.create_task(_closed(connector))
    _FORGETTING.add(task)
    task.add_done_callback(_FORGETTING.discard)


async def _closed(connector: aiohttp.BaseConnector) -> None:
    await connector.close()


__all__ = [
    "LoopSessions",
    "answer_of",
    "error_code",
    "post_idempotent",
    "post_idempotent_async",
    "session_factory",
]
