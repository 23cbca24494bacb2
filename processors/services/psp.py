"""``choreo psp serve``: a payment service provider over HTTP, with a durable SQLite ledger and
Stripe-like Idempotency-Key semantics (see :mod:`processors.services._ledger`).

Endpoints (JSON bodies):

* ``POST /v1/charges`` (``Idempotency-Key`` required) ``{order_id, amount_minor, currency,
  card_token}``: 200 ``{status: approved|declined, payment_id, decline_reason}``, or 202
  ``{status: pending}`` for a card that never gets an answer. The decision rules are the simulated
  gateway's (:func:`processors.agents.gateway.decide`). Every charge under a new key is a new
  charge, as at a real PSP: a caller that loses its key charges twice, and the ledger shows it.
* ``POST /v1/refunds`` (``Idempotency-Key`` required) ``{payment_id, amount_minor}``: 200, or 404
  for no such approved charge, 409 when it was refunded already.
* ``GET /v1/charges?order_id=O``: the charges booked for exactly that order, each with whether it
  was refunded (``{charges: [{payment_id, order_id, amount_minor, currency, status, refunded}]}``),
  the look-up a caller reconciles with when it may have lost a charge's answer (as a search by
  the order reference at a real PSP). Read-only: no key, no effect.
* ``GET /v1/ledger[?order_prefix=P]``: charges, refunds and a summary (double charges, refunds
  without a charge, double refunds), for tests and ``choreo verify``.
* ``POST /v1/admin/faults`` ``{latency_ms, failure_rate, outage_s}``; ``GET /healthz``.

A repeated key answers the first answer (header ``Idempotent-Replayed: true``); the same key with
another body 422; with the first still running 409. The card token is never stored, logged or
echoed: the ledger keeps a hash of the request only.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from processors.agents.gateway import GatewayRules, decide
from processors.services._ledger import Database, Idempotency, now_ms, run_idempotent
from processors.services.faults import Faults
from processors.services.server import Reply, Request, Route, ServiceServer, admin_faults, error

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    payment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    decline_reason TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_order ON charges (order_id);
CREATE TABLE IF NOT EXISTS refunds (
    refund_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class PspOptions:
    host: str = "127.0.0.1"
    port: int = 0
    db: Path | str = Path(".choreo/psp.sqlite")
    rules: GatewayRules = GatewayRules()


MAX_ORDER_ID_CHARS = 200


def _id(prefix: str, key: str) -> str:
    return prefix + hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:24]


def _charge_problem(body: dict[str, Any]) -> str | None:
    for name in ("order_id", "currency", "card_token"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{name} must be a non-empty string"
    if len(body["order_id"]) > MAX_ORDER_ID_CHARS:
        return f"order_id must be at most {MAX_ORDER_ID_CHARS} characters"
    amount = body.get("amount_minor")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "amount_minor must be a positive integer"
    return None


def _refund_problem(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("payment_id"), str) or not body["payment_id"]:
        return "payment_id must be a non-empty string"
    amount = body.get("amount_minor")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "amount_minor must be a positive integer"
    return None


class PaymentService:
    """The PSP's endpoints over its ledger."""

    def __init__(self, db: Database, rules: GatewayRules, faults: Faults) -> None:
        self.db = db
        self.rules = rules
        self.faults = faults
        self.idem = Idempotency(db)
        self.recovered = self.idem.recover()

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("POST", "/v1/charges"): self.charge,
            ("POST", "/v1/refunds"): self.refund,
            ("GET", "/v1/charges"): self.charges_of_order,
            ("GET", "/v1/ledger"): self.ledger,
            ("GET", "/healthz"): lambda _r: Reply(200, {"ok": True, "faults": self.faults.describe()}),
            ("POST", "/v1/admin/faults"): admin_faults(self.faults),
        }

    def _idempotent(self, request: Request, problem: str | None, effect: Any) -> Reply:
        key = request.idempotency_key
        status, answer, replayed = run_idempotent(
            self.idem, self.faults, request.path, key, request.fingerprint(), problem, effect
        )
        return Reply(status, answer, {"Idempotent-Replayed": "true"} if replayed else {})

    def charge(self, request: Request) -> Reply:
        body, key = request.body, request.idempotency_key or ""

        def effect(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
            decision = decide(self.rules, body["amount_minor"], body["card_token"])
            payment_id = _id("pay_", key)
            status = "pending" if decision is None else ("approved" if decision.approved else "declined")
            reason = None if decision is None else decision.decline_reason
            conn.execute(
                "INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (payment_id, body["order_id"], body["amount_minor"], body["currency"], status, reason, key, now_ms()),
            )
            answer = {"payment_id": payment_id, "order_id": body["order_id"], "status": status}
            answer.update(amount_minor=body["amount_minor"], currency=body["currency"], decline_reason=reason)
            return (202 if decision is None else 200), answer

        return self._idempotent(request, _charge_problem(body), effect)

    def refund(self, request: Request) -> Reply:
        body, key = request.body, request.idempotency_key or ""

        def effect(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
            charge = conn.execute(
                "SELECT order_id, amount_minor FROM charges WHERE payment_id = ? AND status = 'approved'",
                (body["payment_id"],),
            ).fetchone()
            if charge is None:
                return 404, {"error": {"code": "no_such_charge", "message": "no approved charge with this id"}}
            order_id, charged = charge
            if body["amount_minor"] > charged:
                return 400, {"error": {"code": "amount_too_large", "message": "more than was charged"}}
            if conn.execute("SELECT 1 FROM refunds WHERE payment_id = ?", (body["payment_id"],)).fetchone():
                return 409, {"error": {"code": "charge_already_refunded", "message": "this charge was refunded"}}
            refund_id = _id("re_", key)
            conn.execute(
                "INSERT INTO refunds VALUES (?, ?, ?, ?, ?, ?)",
                (refund_id, body["payment_id"], order_id, body["amount_minor"], key, now_ms()),
            )
            answer = {"refund_id": refund_id, "payment_id": body["payment_id"], "order_id": order_id}
            answer.update(amount_minor=body["amount_minor"], status="succeeded")
            return 200, answer

        return self._idempotent(request, _refund_problem(body), effect)

    def charges_of_order(self, request: Request) -> Reply:
        order_id = parse_qs(request.query).get("order_id", [""])[0]
        if not order_id or len(order_id) > MAX_ORDER_ID_CHARS:
            return error(400, "bad_order_id", f"order_id must be 1 to {MAX_ORDER_ID_CHARS} characters")
        rows = self.db.query(
            "SELECT c.payment_id, c.order_id, c.amount_minor, c.currency, c.status, "
            "r.refund_id IS NOT NULL AS refunded FROM charges c LEFT JOIN refunds r ON r.payment_id = c.payment_id "
            "WHERE c.order_id = ? ORDER BY c.created_ms",
            (order_id,),
        )
        return Reply(200, {"charges": [{**dict(r), "refunded": bool(r["refunded"])} for r in rows]})

    def ledger(self, request: Request) -> Reply:
        prefix = parse_qs(request.query).get("order_prefix", [""])[0]
        like = (prefix.replace("%", r"\%").replace("_", r"\_") + "%",)
        charges = [
            dict(r)
            for r in self.db.query(
                "SELECT order_id, payment_id, amount_minor, currency, status, decline_reason, created_ms "
                "FROM charges WHERE order_id LIKE ? ESCAPE '\\' ORDER BY created_ms",
                like,
            )
        ]
        refunds = [
            dict(r)
            for r in self.db.query(
                "SELECT order_id, payment_id, refund_id, amount_minor, created_ms "
                "FROM refunds WHERE order_id LIKE ? ESCAPE '\\' ORDER BY created_ms",
                like,
            )
        ]
        replays = self.db.query("SELECT COALESCE(SUM(replays), 0) AS n FROM idempotency")[0]["n"]
        return Reply(200, {"charges": charges, "refunds": refunds, "summary": summarize(charges, refunds, replays)})


def summarize(charges: list[dict[str, Any]], refunds: list[dict[str, Any]], replays: int = 0) -> dict[str, Any]:
    """What "never twice" means at the PSP: orders charged more than once, refunds of nothing,
    charges refunded more than once."""
    approved = [c for c in charges if c["status"] == "approved"]
    per_order = Counter(c["order_id"] for c in approved)
    approved_ids = {c["payment_id"] for c in approved}
    refunded = Counter(r["order_id"] for r in refunds)
    return {
        "charges": len(charges),
        "approved": len(approved),
        "orders_charged": len(per_order),
        "double_charges": {o: n for o, n in sorted(per_order.items()) if n > 1},
        "refunds": len(refunds),
        "refunds_without_charge": sorted(r["order_id"] for r in refunds if r["payment_id"] not in approved_ids),
        "double_refunds": {o: n for o, n in sorted(refunded.items()) if n > 1},
        "replayed_requests": int(replays),
    }


def build_server(options: PspOptions, faults: Faults) -> tuple[ServiceServer, PaymentService]:
    service = PaymentService(Database(options.db, SCHEMA), options.rules, faults)
    return ServiceServer((options.host, options.port), service.routes(), faults), service


__all__ = ["PaymentService", "PspOptions", "build_server", "error", "summarize"]
