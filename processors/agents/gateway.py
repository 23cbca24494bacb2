"""The payment gateway the payments agent calls: the PSP over HTTP (:class:`HttpPaymentGateway`,
``choreo psp serve``), or an in-process double with the same rules for pure unit flows
(:class:`SimulatedPaymentGateway`).

Rules (:func:`decide`, one piece of code for both): a card token starting with `tok_flagged` is
declined as fraud, an amount above the limit is declined for insufficient funds, `tok_expired`
cards are expired, and `tok_silent` cards never get a decision (the PSP answers "pending"; the
order's timeout must cancel the order).

A refund asks for a charge to be refunded, and is answered True when this request refunded it
(or is a replay of the request that did), False when the charge was refunded already by another
request: either way the charge is refunded once, which is what a handler replayed along another
path needs. :meth:`~PaymentGateway.charges_of` looks up what the PSP booked for an order (read-only),
so a handler that may have lost a charge's answer (a worker killed between the charge and its
commit, the order then cancelled before its replay) can find the charge and refund it.

Both take the call's idempotency key (``ctx.call`` and ``ctx.call_async`` hand it over): a
repeated key returns the first answer and never charges twice, which is what makes a replayed
handler safe at the PSP. Each has sync methods (``authorize``, ``refund``) for a sync handler's
``ctx.call`` and async ones (``authorize_async``, ``refund_async``) for an async handler's
``await ctx.call_async``: the HTTP gateway's sync methods go through a pooled keep-alive
:class:`httpx.Client`, its async ones through one pooled keep-alive :class:`aiohttp.ClientSession`
per event loop (:class:`~processors.services.client.LoopSessions`; why aiohttp there is in that
module), with one error mapping for both (:mod:`processors.services.client`).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from processors.errors import ChoreoError
from processors.services.client import (
    LoopSessions,
    get_json,
    get_json_async,
    post_idempotent,
    post_idempotent_async,
    session_factory,
)

PSP_URL_ENV = "CHOREO_PSP_URL"
PSP_TIMEOUT_ENV = "CHOREO_PSP_TIMEOUT_S"
# The PSP's answer to a refund of a charge refunded under another key: the charge is refunded.
ALREADY_REFUNDED = frozenset({"charge_already_refunded"})


class GatewayUnavailable(Exception):
    """The PSP did not answer in time, answered 5xx, or is still running a request with the same
    key (409): transient, worth a retry with the same key."""


class GatewayRejected(ChoreoError):
    """The PSP refused the request (4xx other than a conflict in flight): a bug or a data problem,
    not worth a retry. The message has the PSP's error code only, never the request."""


@dataclass(frozen=True)
class GatewayRules:
    decline_above_minor: int = 500_000
    latency_s: float = 0.0
    transient_failure_rate: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Charge:
    """A charge the PSP booked for an order, as its look-up tells."""

    payment_id: str
    amount_minor: int
    currency: str
    approved: bool
    refunded: bool


@dataclass(frozen=True)
class Authorization:
    approved: bool
    payment_id: str
    decline_reason: str | None = None


class PaymentGateway(Protocol):
    """What the payments agent calls (through ``ctx.call``, which hands over the key)."""

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = ..., idempotency_key: str = ...
    ) -> Authorization | None: ...

    def refund(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = ...) -> bool: ...

    def charges_of(self, order_id: str) -> list[Charge]: ...

    async def authorize_async(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = ..., idempotency_key: str = ...
    ) -> Authorization | None: ...

    async def refund_async(
        self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = ...
    ) -> bool: ...

    async def charges_of_async(self, order_id: str) -> list[Charge]: ...


def decide(rules: GatewayRules, amount_minor: int, card_token: str) -> Authorization | None:
    """The PSP's decision, None for a card that never gets one. ``payment_id`` is left empty: the
    PSP names a charge after its key."""
    if card_token.startswith("tok_silent"):
        return None
    if card_token.startswith("tok_flagged"):
        return Authorization(False, "", "FRAUD_SUSPECTED")
    if card_token.startswith("tok_expired"):
        return Authorization(False, "", "CARD_EXPIRED")
    if amount_minor > rules.decline_above_minor:
        return Authorization(False, "", "INSUFFICIENT_FUNDS")
    return Authorization(True, "")


@dataclass
class SimulatedPaymentGateway:
    """In process, for pure unit flows: the same rules, and the same key semantics (a repeated key
    gets the first answer). ``charges``/``refunds`` count per order what the PSP's ledger would."""

    rules: GatewayRules = field(default_factory=GatewayRules)
    charges: dict[str, int] = field(default_factory=dict)
    refunds: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.rules.seed)
        self._lock = threading.Lock()
        self._answers: dict[str, Any] = {}
        self._booked: dict[str, list[Charge]] = {}  # per order, what the look-up answers

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        """Authorize and capture ``amount_minor`` for ``order_id``. Returns None when the PSP never
        decides (silent cards); raises GatewayUnavailable on a simulated transient failure."""
        failing = self._call()
        if self.rules.latency_s:
            time.sleep(self.rules.latency_s)
        return self._authorized(failing, order_id, amount_minor, card_token, currency, idempotency_key)

    async def authorize_async(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        """:meth:`authorize` for an async handler: the latency is awaited, never slept."""
        failing = self._call()
        if self.rules.latency_s:
            await asyncio.sleep(self.rules.latency_s)
        return self._authorized(failing, order_id, amount_minor, card_token, currency, idempotency_key)

    def refund(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = "") -> bool:
        failing = self._call()
        if self.rules.latency_s:
            time.sleep(self.rules.latency_s)
        return self._refunded(failing, order_id, payment_id, idempotency_key)

    async def refund_async(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = "") -> bool:
        failing = self._call()
        if self.rules.latency_s:
            await asyncio.sleep(self.rules.latency_s)
        return self._refunded(failing, order_id, payment_id, idempotency_key)

    def charges_of(self, order_id: str) -> list[Charge]:
        if self._call():
            raise GatewayUnavailable("payment gateway timed out (simulated)")
        if self.rules.latency_s:
            time.sleep(self.rules.latency_s)
        with self._lock:
            return list(self._booked.get(order_id, ()))

    async def charges_of_async(self, order_id: str) -> list[Charge]:
        if self._call():
            raise GatewayUnavailable("payment gateway timed out (simulated)")
        if self.rules.latency_s:
            await asyncio.sleep(self.rules.latency_s)
        with self._lock:
            return list(self._booked.get(order_id, ()))

    def _call(self) -> bool:
        """Count the call; whether it fails (decided before the latency, as a PSP that times out)."""
        with self._lock:
            self.calls += 1
            return self._random.random() < self.rules.transient_failure_rate

    def _authorized(
        self, failing: bool, order_id: str, amount_minor: int, card_token: str, currency: str, key: str
    ) -> Authorization | None:
        if failing:
            raise GatewayUnavailable("payment gateway timed out (simulated)")
        with self._lock:
            if key and key in self._answers:
                return self._answers[key]
        decision = decide(self.rules, amount_minor, card_token)
        answer = (
            None if decision is None else Authorization(decision.approved, f"pay_{order_id}", decision.decline_reason)
        )
        with self._lock:
            if key and key in self._answers:  # another thread answered this key meanwhile: its answer stands
                return self._answers[key]
            if answer is not None and answer.approved:
                self.charges[order_id] = self.charges.get(order_id, 0) + 1
                booked = Charge(answer.payment_id, amount_minor, currency, approved=True, refunded=False)
                self._booked.setdefault(order_id, []).append(booked)
            if key:
                self._answers[key] = answer
        return answer

    def _refunded(self, failing: bool, order_id: str, payment_id: str, key: str) -> bool:
        if failing:
            raise GatewayUnavailable("payment gateway timed out (simulated)")
        with self._lock:
            if key and key in self._answers:
                return bool(self._answers[key])
            booked = self._booked.get(order_id, [])
            if any(c.payment_id == payment_id and c.refunded for c in booked):
                return False  # refunded already, by another request: the PSP refuses a second refund
            self._booked[order_id] = [c if c.payment_id != payment_id else replace(c, refunded=True) for c in booked]
            self.refunds[order_id] = self.refunds.get(order_id, 0) + 1
            if key:
                self._answers[key] = True
            return True


class HttpPaymentGateway:
    """The PSP service over HTTP: a pooled keep-alive client for the sync methods (thread-safe), one
    per event loop for the async ones (made on the loop's first call), a timeout per request.
    Errors name the endpoint and the PSP's error code, never the request (it has the card token)."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        timeout = httpx.Timeout(timeout_s)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, limits=limits)
        self._async = LoopSessions(session_factory(self.base_url, timeout_s, max_connections))

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        body = _charge_body(order_id, amount_minor, card_token, currency)
        return _authorization(*self._post("/v1/charges", body, idempotency_key))

    async def authorize_async(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        body = _charge_body(order_id, amount_minor, card_token, currency)
        return _authorization(*await self._post_async("/v1/charges", body, idempotency_key))

    def refund(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = "") -> bool:
        body = {"payment_id": payment_id, "amount_minor": amount_minor}
        return _refunded(*self._post("/v1/refunds", body, idempotency_key, ALREADY_REFUNDED))

    async def refund_async(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = "") -> bool:
        body = {"payment_id": payment_id, "amount_minor": amount_minor}
        return _refunded(*await self._post_async("/v1/refunds", body, idempotency_key, ALREADY_REFUNDED))

    def charges_of(self, order_id: str) -> list[Charge]:
        params = {"order_id": order_id}
        return _charges(get_json(self._client, "/v1/charges", params, GatewayUnavailable, GatewayRejected))

    async def charges_of_async(self, order_id: str) -> list[Charge]:
        params = {"order_id": order_id}
        answer = await get_json_async(self._async.get(), "/v1/charges", params, GatewayUnavailable, GatewayRejected)
        return _charges(answer)

    def ledger(self, order_prefix: str = "") -> dict[str, Any]:
        response = self._client.get("/v1/ledger", params={"order_prefix": order_prefix})
        response.raise_for_status()
        return response.json()

    async def aclose(self) -> None:
        """Close the running loop's async session (the sync client stays open)."""
        await self._async.aclose()

    def close(self) -> None:
        """Close the sync client and every async one whose loop still runs."""
        self._client.close()
        self._async.close()

    def _post(
        self, path: str, body: dict[str, Any], key: str, settled: frozenset[str] = frozenset()
    ) -> tuple[int, dict[str, Any]]:
        return post_idempotent(self._client, path, body, key, GatewayUnavailable, GatewayRejected, settled)

    async def _post_async(
        self, path: str, body: dict[str, Any], key: str, settled: frozenset[str] = frozenset()
    ) -> tuple[int, dict[str, Any]]:
        session = self._async.get()
        return await post_idempotent_async(session, path, body, key, GatewayUnavailable, GatewayRejected, settled)


def _charge_body(order_id: str, amount_minor: int, card_token: str, currency: str) -> dict[str, Any]:
    return {"order_id": order_id, "amount_minor": amount_minor, "currency": currency, "card_token": card_token}


def _authorization(status: int, answer: dict[str, Any]) -> Authorization | None:
    """The PSP's answer to a charge: None for 202 pending (a card that never gets a decision)."""
    if status == 202:
        return None
    return Authorization(answer["status"] == "approved", answer["payment_id"], answer.get("decline_reason"))


def _refunded(status: int, answer: dict[str, Any]) -> bool:
    """Whether this refund request refunded the charge (False: it was refunded already)."""
    return status < 400


def _charges(answer: dict[str, Any]) -> list[Charge]:
    """The PSP's look-up answer; a malformed one is the PSP failing, worth a retry."""
    try:
        return [
            Charge(c["payment_id"], c["amount_minor"], c["currency"], c["status"] == "approved", bool(c["refunded"]))
            for c in answer["charges"]
        ]
    except (KeyError, TypeError):
        raise GatewayUnavailable("/v1/charges: an answer without its charges") from None


def payment_gateway(rules: GatewayRules, env: Mapping[str, str] | None = None) -> PaymentGateway:
    """The gateway a worker uses: the PSP at ``CHOREO_PSP_URL`` when set (timeout
    ``CHOREO_PSP_TIMEOUT_S``, default 5), else the in-process simulation with ``rules``."""
    env = os.environ if env is None else env
    url = env.get(PSP_URL_ENV)
    if url:
        return HttpPaymentGateway(url, timeout_s=float(env.get(PSP_TIMEOUT_ENV, "5")))
    return SimulatedPaymentGateway(rules)
