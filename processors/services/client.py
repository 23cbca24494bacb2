"""The client side of the services' Idempotency-Key protocol, one mapping for the sync and the async
clients: a POST under the call's key, and what its outcome means for the caller.

* no answer (timeout, connection refused or reset), a 5xx, or a 409 ``request_in_progress`` (the
  first request with this key is still running): ``unavailable``, worth a retry with the same key;
* any other 4xx: ``rejected``, a bug or a data problem that a retry would not fix.

Errors name the path, the status and the service's error code (64 characters at most), never the
request body (it has card tokens and addresses).

An :class:`httpx.AsyncClient` is bound to the event loop it first ran on, and the engine gives an
agent session an event loop of its own (a replaced session a new one): :class:`LoopClients` makes
one client per running loop, on its first request, and closes them.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpx

ERROR_CODE_CHARS = 64


def post_idempotent(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    key: str,
    unavailable: type[Exception],
    rejected: type[Exception],
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` under ``Idempotency-Key: key``; (status, answer) or the caller's error."""
    _require_key(path, key, rejected)
    try:
        response = client.post(path, json=body, headers={"Idempotency-Key": key})
    except httpx.TransportError as exc:
        raise _no_answer(path, exc, unavailable) from None
    return answer_of(response, path, unavailable, rejected)


async def post_idempotent_async(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    key: str,
    unavailable: type[Exception],
    rejected: type[Exception],
) -> tuple[int, dict[str, Any]]:
    """:func:`post_idempotent` on an async client: the same request, the same error mapping."""
    _require_key(path, key, rejected)
    try:
        response = await client.post(path, json=body, headers={"Idempotency-Key": key})
    except httpx.TransportError as exc:
        raise _no_answer(path, exc, unavailable) from None
    return answer_of(response, path, unavailable, rejected)


def answer_of(
    response: httpx.Response, path: str, unavailable: type[Exception], rejected: type[Exception]
) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) of a 2xx; a 5xx or a 409 in progress raises ``unavailable``, another
    4xx ``rejected``."""
    code = error_code(response)
    if response.status_code >= 500 or code == "request_in_progress":
        raise unavailable(f"{path}: {response.status_code} {code}")
    if response.status_code >= 400:
        raise rejected(f"{path}: {response.status_code} {code}")
    return response.status_code, response.json()


def error_code(response: httpx.Response) -> str:
    """The service's error code of a 4xx/5xx answer ("" for a success), bounded in length."""
    if response.status_code < 400:
        return ""
    try:
        return str(response.json()["error"]["code"])[:ERROR_CODE_CHARS]
    except Exception:  # noqa: BLE001 - a proxy's HTML page: the status says enough
        return "unreadable error"


def _require_key(path: str, key: str, rejected: type[Exception]) -> None:
    if not key:
        raise rejected(f"{path}: an idempotency key is required (call it through ctx.call or ctx.call_async)")


def _no_answer(path: str, exc: httpx.TransportError, unavailable: type[Exception]) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return unavailable(f"{path}: no answer in time")
    return unavailable(f"{path}: {type(exc).__name__}")


class LoopClients:
    """One :class:`httpx.AsyncClient` (from ``factory``) per running event loop, made on the loop's
    first :meth:`get`: a pooled keep-alive client never crosses loops, and nothing loop-bound is
    made at import or agent declaration time. Clients of loops that closed are dropped when the
    next one is made (their connections die with their loop); :meth:`aclose` closes the running
    loop's client, :meth:`close` every one whose loop still runs."""

    def __init__(self, factory: Callable[[], httpx.AsyncClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> httpx.AsyncClient:
        """The running loop's client (raises RuntimeError outside a running loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                for old in [old for old in self._clients if old.is_closed()]:
                    del self._clients[old]
                client = self._clients[loop] = self._factory()
            return client

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    async def aclose(self) -> None:
        """Close the running loop's client, if it made one."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every client from outside its loop: on a loop running in another thread the close
        runs there (waited for at most ``timeout_s``); a closed loop's client is only dropped."""
        with self._lock:
            clients = list(self._clients.items())
            self._clients.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, client in clients:
            if loop.is_closed() or client.is_closed:
                continue
            if loop is current:
                loop.create_task(client.aclose())
                continue
            if not loop.is_running():
                if current is None:  # stopped, not closed: run the close on it here
                    loop.run_until_complete(client.aclose())
                continue
            future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            try:
                future.result(timeout_s)
            except (FutureTimeout, RuntimeError):  # the loop stopped meanwhile, or is stuck
                future.cancel()


__all__ = ["LoopClients", "answer_of", "error_code", "post_idempotent", "post_idempotent_async"]
