"""The benchmark workload for the peer frameworks, with nothing but fastavro and the standard library
(the peer venvs do not install choreo-streams: Quix Streams pins an older confluent-kafka).

The workload, the same for every system measured:

* input: ``order.created`` events, Avro single-object encoded (``C3 01`` + the 8-byte CRC-64-AVRO
  fingerprint + the body), CloudEvents headers including ``ce_idempotencykey``; the Kafka key is
  the state key (the customer id in the benchmark pre-load);
* decode the value with fastavro, resolving the writer version (v1 or v2) to the v2 reader;
* drop a duplicate by its idempotency key (a per-key "seen" entry with a TTL, in the state store);
* update the per-key state: ``{"orders": count, "total_minor": sum}``;
* emit an ``order.confirmed`` follow-up (Avro single-object encoded, child CloudEvents headers with
  the idempotency key derived from the cause, as the engine does) and an ``audit.record`` (Avro,
  with the state before/after as JSON), both keyed like the input.

Each peer runner processes exactly N events and prints one JSON line (:func:`result_line`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

try:  # the engine serialises state with orjson; use it where the peer's venv has it
    import orjson

    def dumps(value: Any) -> str:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

except ImportError:  # pragma: no cover - depends on the venv

    def dumps(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))


REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(os.environ.get("CHOREO_SCHEMAS_DIR", REPO_ROOT / "schemas"))
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
DEDUPE_TTL_MS = 7 * 24 * 3600 * 1000
# A copy of processors.contracts.ids.child_key (namespace CHILD_KEY_NAMESPACE) for peer venvs without our
# package: keep the two identical, so derived keys match the engine's.
_KEY_NAMESPACE = uuid.UUID("5b0c4a9e-3f57-4c0e-9d4b-2f4d7c1e8a61")

INPUT_TYPE = "order.created"
OUTPUT_TYPE = "order.confirmed"
AUDIT_TYPE = "audit.record"
SOURCE = "/bench/peer"


def _load(event_type: str, version: int) -> tuple[dict[str, Any], bytes]:
    raw = json.loads((SCHEMAS / event_type / f"v{version}.avsc").read_text())
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    # parse_schema returns the shape it was given (fastavro types it as any schema): a record in, a dict out.
    return cast("dict[str, Any]", fastavro.parse_schema(raw)), MAGIC + fp


class Codec:
    """Single-object framing for the three schemas of the workload."""

    def __init__(self) -> None:
        v1, h1 = _load(INPUT_TYPE, 1)
        v2, h2 = _load(INPUT_TYPE, 2)
        self.reader = v2
        self.writers = {h1[2:]: (v1, v2), h2[2:]: (v2, None)}  # fingerprint -> (writer, reader or None)
        self.confirmed, self.confirmed_header = _load(OUTPUT_TYPE, 1)
        self.audit, self.audit_header = _load(AUDIT_TYPE, 1)

    def decode_order(self, data: bytes) -> dict[str, Any]:
        if data[:2] != MAGIC:
            raise ValueError(f"not Avro single-object encoded: {bytes(data[:2]).hex()}")
        writer, reader = self.writers[bytes(data[2:HEADER_LEN])]
        stream = BytesIO(data)
        stream.seek(HEADER_LEN)
        # A record schema reads as a dict; fastavro types the result as any Avro value.
        return cast("dict[str, Any]", fastavro.schemaless_reader(stream, writer, reader))

    @staticmethod
    def _encode(header: bytes, schema: dict[str, Any], value: dict[str, Any]) -> bytes:
        out = BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, schema, value)
        return out.getvalue()

    def encode_confirmed(self, value: dict[str, Any]) -> bytes:
        return self._encode(self.confirmed_header, self.confirmed, value)

    def encode_audit(self, value: dict[str, Any]) -> bytes:
        return self._encode(self.audit_header, self.audit, value)


def header(headers: Any, name: str) -> str | None:
    """A header's value from a list of (name, value) pairs or a mapping."""
    if not headers:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    for key, value in items:
        if key == name:
            return value.decode() if isinstance(value, (bytes, bytearray)) else value
    return None


def derive_key(cause_key: str, event_type: str) -> str:
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{cause_key}\x1f{event_type}"))


def now_ms() -> int:
    return int(time.time() * 1000)


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class Workload:
    """The framework-independent part of one event's handling, shared by the peers so they differ
    only in how their framework consumes, keeps state and produces."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.codec = Codec()

    def outputs(
        self,
        order: dict[str, Any],
        in_headers: Any,
        topic: str,
        partition: int,
        offset: int,
        before: dict[str, Any] | None,
        after: dict[str, Any],
        received_ms: int,
    ) -> tuple[bytes, list[tuple[str, bytes]], bytes, list[tuple[str, bytes]]]:
        """(follow-up bytes, its headers, audit bytes, its headers) for one processed order."""
        idem = header(in_headers, "ce_idempotencykey") or ""
        cause_id = header(in_headers, "ce_id") or ""
        correlation = header(in_headers, "ce_correlationid") or cause_id
        hops = int(header(in_headers, "ce_hopcount") or 0) + 1
        now = now_ms()
        out_key = derive_key(idem, OUTPUT_TYPE)
        out_id = str(uuid.uuid4())
        confirmed = self.codec.encode_confirmed(
            {
                "order_id": order["order_id"],
                "total_minor": order["total_minor"],
                "currency": order["currency"],
                "confirmed_at": now,
            }
        )
        out_headers = ce_headers(out_id, OUTPUT_TYPE, now, out_key, correlation, cause_id, hops)
        audit = self.codec.encode_audit(
            {
                "agent_name": self.agent,
                "agent_version": "1",
                "worker_id": f"{self.agent}-{os.getpid()}",
                "input_event_id": cause_id,
                "input_event_type": INPUT_TYPE,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "outcome": "PROCESSED",
                "state_before": None if before is None else dumps(before),
                "state_after": dumps(after),
                "emitted_event_ids": [out_id],
                "correlation_id": correlation,
                "received_at": received_ms,
                "handled_at": now,
                "error": None,
            }
        )
        audit_id = str(uuid.uuid4())
        audit_headers = ce_headers(audit_id, AUDIT_TYPE, now, derive_key(idem, AUDIT_TYPE), correlation, cause_id, hops)
        return confirmed, out_headers, audit, audit_headers


def update_state(before: dict[str, Any] | None, order: dict[str, Any]) -> dict[str, Any]:
    before = before or {"orders": 0, "total_minor": 0}
    return {"orders": before["orders"] + 1, "total_minor": before["total_minor"] + order["total_minor"]}


def ce_headers(
    event_id: str, event_type: str, ms: int, idem: str, correlation: str, causation: str, hops: int
) -> list[tuple[str, bytes]]:
    """The CloudEvents headers of a follow-up, as every peer and the hand-written loop write them."""
    return [
        ("ce_id", event_id.encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_specversion", b"1.0"),
        ("ce_time", rfc3339(ms).encode()),
        ("content-type", b"application/avro"),
        ("ce_idempotencykey", idem.encode()),
        ("ce_hopcount", str(hops).encode()),
        ("ce_correlationid", correlation.encode()),
        ("ce_causationid", causation.encode()),
    ]


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result_line(system: str, events: int, elapsed_s: float, **extra: Any) -> None:
    """The runner's one line of JSON on stdout: what run.py reads."""
    record = {
        "system": system,
        "events": events,
        "elapsed_s": round(elapsed_s, 4),
        "events_per_s": round(events / elapsed_s, 1) if elapsed_s > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **extra,
    }
    sys.stdout.write("BENCH_RESULT " + json.dumps(record) + "\n")
    sys.stdout.flush()
