"""The payment gateway the payments agent calls: the PSP over HTTP (:class:`HttpPaymentGateway`,
``choreo psp serve``), or an in-process double with the same rules for pure unit flows
(:class:`SimulatedPaymentGateway`).

Rules (:func:`decide`, one piece of code for both): a card token starting with `tok_flagged` is
declined as fraud, an amount above the limit is declined for insufficient funds, `tok_expired`
cards are expired, and `tok_silent` cards never get a decision (the PSP answers "pending"; the
order's timeout must cancel the order).

Both take the call's idempotency key (``ctx.call`` hands it over): a repeated key returns the
first answer and never charges twice, which is what makes a replayed handler safe at the PSP.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from processors.errors import ChoreoError

PSP_URL_ENV = "CHOREO_PSP_URL"
PSP_TIMEOUT_ENV = "CHOREO_PSP_TIMEOUT_S"


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
class Authorization:
    approved: bool
    payment_id: str
    decline_reason: str | None = None


class PaymentGateway(Protocol):
    """What the payments agent calls (through ``ctx.call``, which hands over the key)."""

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = ..., idempotency_key: str = ...
    ) -> Authorization | None: ...

    def refund(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = ...) -> None: ...


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

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        """Authorize and capture ``amount_minor`` for ``order_id``. Returns None when the PSP never
        decides (silent cards); raises GatewayUnavailable on a simulated transient failure."""
        self._call()
        with self._lock:
            if idempotency_key and idempotency_key in self._answers:
                return self._answers[idempotency_key]
        decision = decide(self.rules, amount_minor, card_token)
        answer = (
            None if decision is None else Authorization(decision.approved, f"pay_{order_id}", decision.decline_reason)
        )
        with self._lock:
            if answer is not None and answer.approved:
                self.charges[order_id] = self.charges.get(order_id, 0) + 1
            if idempotency_key:
                self._answers[idempotency_key] = answer
        return answer

    def refund(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = "") -> None:
        self._call()
        with self._lock:
            if idempotency_key and idempotency_key in self._answers:
                return
            self.refunds[order_id] = self.refunds.get(order_id, 0) + 1
            if idempotency_key:
                self._answers[idempotency_key] = None

    def _call(self) -> None:
        with self._lock:
            self.calls += 1
            failing = self._random.random() < self.rules.transient_failure_rate
        if self.rules.latency_s:
            time.sleep(self.rules.latency_s)
        if failing:
            raise GatewayUnavailable("payment gateway timed out (simulated)")


class HttpPaymentGateway:
    """The PSP service over HTTP: one pooled keep-alive client (thread-safe), a timeout per request.
    Errors name the endpoint and the PSP's error code, never the request (it has the card token)."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, max_connections: int = 32) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        body = {"order_id": order_id, "amount_minor": amount_minor, "currency": currency, "card_token": card_token}
        status, answer = self._post("/v1/charges", body, idempotency_key)
        if status == 202:
            return None
        return Authorization(answer["status"] == "approved", answer["payment_id"], answer.get("decline_reason"))

    def refund(self, order_id: str, payment_id: str, amount_minor: int, idempotency_key: str = "") -> None:
        self._post("/v1/refunds", {"payment_id": payment_id, "amount_minor": amount_minor}, idempotency_key)

    def ledger(self, order_prefix: str = "") -> dict[str, Any]:
        response = self._client.get("/v1/ledger", params={"order_prefix": order_prefix})
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        return post_idempotent(self._client, path, body, key, GatewayUnavailable, GatewayRejected)


def post_idempotent(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    key: str,
    unavailable: type[Exception],
    rejected: type[Exception],
) -> tuple[int, dict[str, Any]]:
    """POST under an Idempotency-Key, mapped to the caller's errors: no answer, 5xx or 409
    in progress → ``unavailable`` (retry with the same key); another 4xx → ``rejected``."""
    if not key:
        raise rejected(f"{path}: an idempotency key is required (call it through ctx.call)")
    try:
        response = client.post(path, json=body, headers={"Idempotency-Key": key})
    except httpx.TimeoutException:
        raise unavailable(f"{path}: no answer in time") from None
    except httpx.TransportError as exc:
        raise unavailable(f"{path}: {type(exc).__name__}") from None
    code = _error_code(response)
    if response.status_code >= 500 or code == "request_in_progress":
        raise unavailable(f"{path}: {response.status_code} {code}")
    if response.status_code >= 400:
        raise rejected(f"{path}: {response.status_code} {code}")
    return response.status_code, response.json()


def _error_code(response: httpx.Response) -> str:
    if response.status_code < 400:
        return ""
    try:
        return str(response.json()["error"]["code"])[:64]
    except Exception:  # noqa: BLE001 - a proxy's HTML page: the status says enough
        return "unreadable error"


def payment_gateway(rules: GatewayRules, env: Mapping[str, str] | None = None) -> PaymentGateway:
    """The gateway a worker uses: the PSP at ``CHOREO_PSP_URL`` when set (timeout
    ``CHOREO_PSP_TIMEOUT_S``, default 5), else the in-process simulation with ``rules``."""
    env = os.environ if env is None else env
    url = env.get(PSP_URL_ENV)
    if url:
        return HttpPaymentGateway(url, timeout_s=float(env.get(PSP_TIMEOUT_ENV, "5")))
    return SimulatedPaymentGateway(rules)
