"""JSON <-> Avro-ready Python values.

JSON has no timestamp type, so a publisher writes `"created_at": "2024-05-01T12:00:00Z"` or epoch
milliseconds. The contract validator (rightly) accepts only datetime or int for timestamp-millis,
so ISO strings are converted here, guided by the schema, before validation. Strings that are not
valid ISO-8601 are left alone so the validator reports them with their field path.

The other direction renders decoded events for people and NDJSON: datetimes as RFC 3339, bytes as
base64, decimals as strings.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import uuid
from typing import Any

import orjson

_TIMESTAMPS = {"timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"}
_KEY_NAMESPACE = uuid.UUID("0f6c7a52-44c3-4f3e-8a8a-7f1d6b0e2c11")


def from_json(schema: Any, value: Any) -> Any:
    """Convert a JSON-decoded value for the (raw, unparsed) Avro schema."""
    return _Converter().convert(schema, value, "")


class _Converter:
    def __init__(self) -> None:
        self.named: dict[str, Any] = {}

    def convert(self, schema: Any, value: Any, namespace: str) -> Any:
        if isinstance(schema, list):
            return self._union(schema, value, namespace)
        if isinstance(schema, str):
            named = self.named.get(schema) or self.named.get(f"{namespace}.{schema}")
            return self.convert(named, value, namespace) if named is not None else value
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            namespace = self._remember(schema, namespace)
        logical = schema.get("logicalType")
        if logical in _TIMESTAMPS and isinstance(value, str):
            return _iso_datetime(value, local=logical.startswith("local")) or value
        if logical == "date" and isinstance(value, str):
            return _iso_date(value) or value
        if logical == "decimal" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                return decimal.Decimal(str(value))
            except decimal.InvalidOperation:
                return value
        if kind in ("record", "error") and isinstance(value, dict):
            fields = {f["name"]: f["type"] for f in schema["fields"]}
            return {k: (self.convert(fields[k], v, namespace) if k in fields else v) for k, v in value.items()}
        if kind == "array" and isinstance(value, list):
            return [self.convert(schema["items"], item, namespace) for item in value]
        if kind == "map" and isinstance(value, dict):
            return {k: self.convert(schema["values"], v, namespace) for k, v in value.items()}
        if isinstance(kind, (dict, list)):
            return self.convert(kind, value, namespace)
        return value

    def _remember(self, schema: dict[str, Any], namespace: str) -> str:
        name = schema.get("name", "")
        space = schema.get("namespace", namespace if "." not in name else name.rsplit(".", 1)[0])
        full = name if "." in name else (f"{space}.{name}" if space else name)
        self.named[full] = schema
        self.named[name.rsplit(".", 1)[-1]] = schema
        return space

    def _union(self, branches: list[Any], value: Any, namespace: str) -> Any:
        if value is None:
            return None
        if isinstance(value, str) and "string" in branches:
            return value  # a plain string branch wins: converting would change the meaning
        for branch in branches:
            if branch == "null":
                continue
            converted = self.convert(branch, value, namespace)
            if converted is not value:
                return converted
        return value


def _iso_datetime(text: str, local: bool) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    if local:
        return parsed.replace(tzinfo=None)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _iso_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------------ rendering
def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def to_json_bytes(value: Any, sort_keys: bool = False) -> bytes:
    """Compact JSON for NDJSON output; datetimes as RFC 3339, bytes as base64."""
    option = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
    if sort_keys:
        option |= orjson.OPT_SORT_KEYS
    return orjson.dumps(value, default=_default, option=option)


def to_json_text(value: Any) -> str:
    return to_json_bytes(value).decode("utf-8")


def _canonical_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return int(aware.timestamp() * 1000)
    return _default(value)


def content_key(event_type: str, value: Any) -> str:
    """A deterministic idempotency key from an event's content (a UUIDv5 string).

    Publishing or backfilling the same file twice must not act twice downstream, so when no key
    field is named, the key is derived from what the event says rather than drawn at random.
    Timestamps are normalised to epoch ms first, so `"2024-05-01T12:00:00Z"` and `1714564800000`
    give the same key."""
    canonical = orjson.dumps(
        value, default=_canonical_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
    )
    digest = hashlib.sha256(event_type.encode() + b"\x1f" + canonical).hexdigest()
    return str(uuid.uuid5(_KEY_NAMESPACE, digest))
