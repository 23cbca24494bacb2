"""``choreo sink serve``: a delivery sink that records every notification it receives, keyed by the
call's Idempotency-Key, in a durable SQLite ledger, so "never twice" is measured at the receiver.

* ``POST /v1/deliveries`` (``Idempotency-Key`` required) ``{order_id, kind, channel, recipient}``:
  201 ``{delivery_id, duplicate: false}`` for a new key; a repeat of the key gets the first answer
  (``Idempotent-Replayed: true``) and is counted, never recorded twice; the key with another body
  422. The recipient (an address) is never stored or logged: only its hash.
* ``GET /v1/deliveries[?order_prefix=P]``: deliveries and a summary; ``duplicate_notifications``
  lists (order, kind) pairs delivered under more than one key: a notification sent twice.
* ``POST /v1/admin/faults``, ``GET /healthz`` as the PSP's.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from processors.services._ledger import Database, Idempotency, now_ms, run_idempotent
from processors.services.faults import Faults
from processors.services.server import Reply, Request, Route, ServiceServer, admin_faults

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    idempotency_key TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient_sha256 TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (order_id, kind);
"""


@dataclass(frozen=True)
class SinkOptions:
    host: str = "127.0.0.1"
    port: int = 0
    db: Path | str = Path(".choreo/sink.sqlite")


def _problem(body: dict[str, Any]) -> str | None:
    for name in ("order_id", "kind", "channel", "recipient"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{name} must be a non-empty string"
    return None


class DeliverySink:
    def __init__(self, db: Database, faults: Faults) -> None:
        self.db = db
        self.faults = faults
        self.idem = Idempotency(db)
        self.recovered = self.idem.recover()

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("POST", "/v1/deliveries"): self.deliver,
            ("GET", "/v1/deliveries"): self.deliveries,
            ("GET", "/healthz"): lambda _r: Reply(200, {"ok": True, "faults": self.faults.describe()}),
            ("POST", "/v1/admin/faults"): admin_faults(self.faults),
        }

    def deliver(self, request: Request) -> Reply:
        body, key = request.body, request.idempotency_key or ""

        def effect(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
            digest = hashlib.sha256(str(body["recipient"]).encode()).hexdigest()
            conn.execute(
                "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?)",
                (key, body["order_id"], body["kind"], body["channel"], digest, now_ms()),
            )
            return 201, {"delivery_id": "dlv_" + hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:24]}

        status, answer, replayed = run_idempotent(
            self.idem, self.faults, request.path, request.idempotency_key, request.fingerprint(), _problem(body), effect
        )
        return Reply(status, answer, {"Idempotent-Replayed": "true"} if replayed else {})

    def deliveries(self, request: Request) -> Reply:
        prefix = parse_qs(request.query).get("order_prefix", [""])[0]
        like = (prefix.replace("%", r"\%").replace("_", r"\_") + "%",)
        rows = [
            dict(r)
            for r in self.db.query(
                "SELECT d.order_id, d.kind, d.channel, d.received_ms, i.replays FROM deliveries d "
                "JOIN idempotency i ON i.key = d.idempotency_key "
                "WHERE d.order_id LIKE ? ESCAPE '\\' ORDER BY d.received_ms",
                like,
            )
        ]
        per_kind = Counter((r["order_id"], r["kind"]) for r in rows)
        summary = {
            "deliveries": len(rows),
            "repeated_requests": sum(r["replays"] for r in rows),
            "duplicate_notifications": [f"{o} {k} x{n}" for (o, k), n in sorted(per_kind.items()) if n > 1],
        }
        return Reply(200, {"deliveries": rows, "summary": summary})


def build_server(options: SinkOptions, faults: Faults) -> tuple[ServiceServer, DeliverySink]:
    sink = DeliverySink(Database(options.db, SCHEMA), faults)
    return ServiceServer((options.host, options.port), sink.routes(), faults), sink
