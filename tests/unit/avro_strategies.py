"""Hypothesis strategies that generate values fitting an Avro schema (raw JSON), in the Python
types fastavro returns when decoding, so a round trip must give back exactly what went in."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

_UTC = dt.UTC
_PRIMITIVES = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=20),
    "string": st.text(max_size=20),
}
# fastavro decodes timestamp-millis to an aware UTC datetime with millisecond precision.
_TIMESTAMP_MILLIS = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(_UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))


def values_for(schema: Any) -> st.SearchStrategy[Any]:
    return _Builder().build(schema, "")


class _Builder:
    def __init__(self) -> None:
        self.named: dict[str, st.SearchStrategy[Any]] = {}

    def build(self, schema: Any, namespace: str) -> st.SearchStrategy[Any]:
        if isinstance(schema, list):
            return st.one_of([self.build(branch, namespace) for branch in schema])
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVES[schema]
            return self.named[schema if "." in schema else f"{namespace}.{schema}"]
        kind = schema["type"]
        if schema.get("logicalType") == "timestamp-millis" and kind == "long":
            return _TIMESTAMP_MILLIS
        if kind == "array":
            return st.lists(self.build(schema["items"], namespace), max_size=4)
        if kind == "map":
            return st.dictionaries(st.text(max_size=8), self.build(schema["values"], namespace), max_size=3)
        if kind in ("record", "enum", "fixed"):
            return self._named(schema, namespace)
        return self.build(kind, namespace)

    def _named(self, schema: dict[str, Any], namespace: str) -> st.SearchStrategy[Any]:
        namespace = schema.get("namespace", namespace)
        fullname = f"{namespace}.{schema['name']}" if namespace else schema["name"]
        if schema["type"] == "enum":
            strategy: st.SearchStrategy[Any] = st.sampled_from(schema["symbols"])
        elif schema["type"] == "fixed":
            strategy = st.binary(min_size=schema["size"], max_size=schema["size"])
        else:
            strategy = st.fixed_dictionaries({f["name"]: self.build(f["type"], namespace) for f in schema["fields"]})
        self.named[fullname] = strategy
        return strategy
