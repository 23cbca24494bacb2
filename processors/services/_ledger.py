"""A SQLite database shared by a service's request threads, and the Idempotency-Key table.

One connection behind one lock, in WAL mode: every read-modify-write is one short ``BEGIN
IMMEDIATE`` transaction, so two requests with the same key cannot both find it free. The rows
outlive the process (restart keeps the ledger).

Keys follow Stripe's semantics: the first request with a key claims it (``in_flight``); when it
has run, its answer is stored with its effect in one transaction (``done``), and any repeat of
the key gets that answer back without running again. A repeat with a different request body is
refused (422). A repeat while the first is still running is refused as a conflict (409, retry
later). A request that failed before any effect (an injected transient failure, a validation
error) releases its claim, so a retry runs. On start, claims left by a killed process are
released: their effects were never committed (effect and answer commit together).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from processors.services.faults import Faults

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    status INTEGER,
    response BLOB,
    created_ms INTEGER NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0
);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class Database:
    """The service's SQLite file (``:memory:`` for a throw-away one)."""

    def __init__(self, path: str | Path, schema: str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL: a committed charge survives a killed process (what the fault
        # runs do); only a power loss may take the last transactions. FULL would fsync every commit.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._conn.executescript(SCHEMA + schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return list(cursor.fetchall())

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass(frozen=True)
class Claim:
    """What :meth:`Idempotency.claim` found: ``new`` (run the request), ``replay`` (answer with
    ``status`` / ``response``), ``mismatch`` (the key was used with another body) or ``in_flight``."""

    kind: str
    status: int = 0
    response: dict[str, Any] | None = None


class Idempotency:
    def __init__(self, db: Database) -> None:
        self.db = db

    def recover(self) -> int:
        """Release the claims a killed process left (none of their effects committed)."""
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM idempotency WHERE state = 'in_flight'").rowcount

    def claim(self, key: str, endpoint: str, fingerprint: str) -> Claim:
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT fingerprint, state, status, response FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO idempotency (key, endpoint, fingerprint, state, created_ms) VALUES (?, ?, ?, ?, ?)",
                    (key, endpoint, fingerprint, "in_flight", now_ms()),
                )
                return Claim("new")
            stored_fingerprint, state, status, response = row
            if stored_fingerprint != fingerprint:
                return Claim("mismatch")
            if state == "in_flight":
                return Claim("in_flight")
            conn.execute("UPDATE idempotency SET replays = replays + 1 WHERE key = ?", (key,))
            return Claim("replay", int(status), orjson.loads(response))

    def release(self, key: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM idempotency WHERE key = ? AND state = 'in_flight'", (key,))

    def complete(
        self, key: str, effect: Callable[[sqlite3.Connection], tuple[int, dict[str, Any]]]
    ) -> tuple[int, dict[str, Any]]:
        """Run ``effect`` (which writes the ledger and returns the answer) and store the answer
        under ``key``, in one transaction."""
        with self.db.transaction() as conn:
            status, response = effect(conn)
            conn.execute(
                "UPDATE idempotency SET state = 'done', status = ?, response = ? WHERE key = ?",
                (status, orjson.dumps(response), key),
            )
        return status, response


Validate = Callable[[dict[str, Any]], str | None]
Effect = Callable[[sqlite3.Connection], tuple[int, dict[str, Any]]]


def run_idempotent(
    idem: Idempotency,
    faults: Faults,
    endpoint: str,
    key: str | None,
    fingerprint: str,
    problem: str | None,
    effect: Effect,
) -> tuple[int, dict[str, Any], bool]:
    """One request under its Idempotency-Key: (status, answer, replayed). ``problem`` is the
    request's validation error (answered 400, nothing stored); ``faults`` a
    :class:`~processors.services.faults.Faults`: an outage answers before the key is claimed, the
    latency is spent holding the claim (a concurrent repeat sees it in flight), a transient failure
    releases it."""
    if key is None:
        return 400, _error("missing_idempotency_key", "an Idempotency-Key header is required"), False
    if problem is not None:
        return 400, _error("invalid_request", problem), False
    if faults.in_outage():
        return 503, _error("outage", "the service is in an outage window"), False
    claim = idem.claim(key, endpoint, fingerprint)
    if claim.kind == "replay":
        return claim.status, claim.response or {}, True
    if claim.kind == "mismatch":
        return 422, _error("idempotency_key_reused", "this Idempotency-Key was used with a different request"), False
    if claim.kind == "in_flight":
        return 409, _error("request_in_progress", "a request with this Idempotency-Key is in progress"), False
    try:
        faults.delay()
        if faults.fails():
            idem.release(key)
            return 503, _error("transient_failure", "simulated transient failure, nothing was done"), False
        status, answer = idem.complete(key, effect)
    except BaseException:
        idem.release(key)
        raise
    return status, answer, False


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
