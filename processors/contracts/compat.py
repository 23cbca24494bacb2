"""Schema compatibility with Confluent Schema Registry semantics, on the Apache ``avro`` checker.

Modes: BACKWARD (the new schema reads data written with the previous one), FORWARD (the previous
schema reads data written with the new one), FULL (both); the ``_TRANSITIVE`` variants compare with
every previous version, the plain ones with the latest only; NONE checks nothing.

The reader/writer rules are Apache's (``avro.compatibility.ReaderWriterCompatibilityChecker``, a port
of Java's ``SchemaCompatibility`` that the Confluent registry runs). Two gaps of the Python port are
handled here, all to match Java:

* Its result keeps messages and locations in two unordered sets, so a reason cannot be paired with
  its location. :class:`_LocatedChecker` observes each incompatibility as the checker creates it.
* For a writer union it drops the location (Java keeps ``.../type/<branch>``), and its union
  handling records the failures of branches it merely *tried*. The subclass re-does the two union
  cases as Java does: each writer branch checked at its own location, and union branch trials
  run silently on a separate prober so they neither report nor pollute the main memo.
* It compares named-type aliases as written, while Java qualifies a short alias with the type's
  namespace; :func:`_qualify_aliases` writes them out in full before parsing.

Locations (JSON pointers into the *reader* schema, e.g. ``/fields/3/type/items``) are turned into
field paths people read (``items[].qty``).
"""

from __future__ import annotations

import ast
import contextvars
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import avro.compatibility as apache
import avro.errors
import avro.schema
from avro.compatibility import (
    CompatibleResult,
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityResult,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
    SchemaType,
    merge,
)

from processors.errors import ChoreoError

MODES = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)


class SchemaParseError(ChoreoError, ValueError):
    """A schema given to the compatibility check is not valid Avro."""


@dataclass(frozen=True)
class CompatProblem:
    """One incompatibility between the new schema and ``previous[against_version_index]``.

    ``direction`` is ``backward`` (new reader, old writer) or ``forward`` (old reader, new writer);
    ``path`` is a field path in the reader schema of that direction (``<root>`` for the schema
    itself); ``kind`` is Avro's incompatibility type (e.g. ``READER_FIELD_MISSING_DEFAULT_VALUE``).
    """

    against_version_index: int
    direction: str
    path: str
    reason: str
    kind: str
    location: str

    def __str__(self) -> str:
        return f"{self.direction} vs previous[{self.against_version_index}] at {self.path}: {self.reason}"


@dataclass(frozen=True)
class CompatResult:
    mode: str
    compatible: bool
    problems: list[CompatProblem] = field(default_factory=list)


def check_compatibility(new_schema: Any, previous: list[Any], mode: str) -> CompatResult:
    """Check ``new_schema`` against ``previous`` versions, **newest first**, under ``mode``.

    Schemas are Avro JSON (dicts, lists or primitive names). Raises :class:`SchemaParseError` for an
    invalid schema and :class:`ValueError` for an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown compatibility mode {mode!r} (expected one of {', '.join(MODES)})")
    new = _parse(new_schema, "new schema")
    olds = [_parse(s, f"previous[{i}]") for i, s in enumerate(previous)]
    if mode == "NONE":
        return CompatResult(mode, True)
    targets = olds if mode.endswith("_TRANSITIVE") else olds[:1]
    problems: list[CompatProblem] = []
    # targets is all of previous (transitive) or only its first entry: zip stops at the shorter.
    for index, (old_raw, old) in enumerate(zip(previous, targets, strict=False)):
        if mode.startswith(("BACKWARD", "FULL")):
            problems += _reader_writer(new_schema, new, old, index, "backward")
        if mode.startswith(("FORWARD", "FULL")):
            problems += _reader_writer(old_raw, old, new, index, "forward")
    return CompatResult(mode, not problems, problems)


def can_read(reader: Any, writer: Any) -> list[CompatProblem]:
    """Problems a ``reader`` schema has reading data written with ``writer`` (empty when it can)."""
    return _reader_writer(reader, _parse(reader, "reader"), _parse(writer, "writer"), 0, "backward")


def _parse(schema: Any, label: str) -> avro.schema.Schema:
    try:
        return avro.schema.parse(json.dumps(_qualify_aliases(schema, "")))
    except (avro.errors.AvroException, TypeError, ValueError) as exc:
        raise SchemaParseError(f"{label}: invalid Avro schema: {exc}") from exc


def _reader_writer(
    reader_raw: Any, reader: avro.schema.Schema, writer: avro.schema.Schema, index: int, direction: str
) -> list[CompatProblem]:
    with _recording() as found:
        result = _LocatedChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    if not found:  # an avro release building results another way must still never read as compatible
        found = [(result.incompatibilities[0], "; ".join(sorted(result.messages)), min(result.locations))]
    return [
        CompatProblem(
            index, direction, pointer_to_path(reader_raw, location), _reason(kind, message), kind.name.upper(), location
        )
        for kind, message, location in _unique(found)
    ]


def _qualify_aliases(schema: Any, namespace: str) -> Any:
    """Write named-type aliases as full names, as the spec defines them and Java resolves them.

    The Python checker compares the writer's full name with the reader's aliases *as written*, so
    an alias ``"Old"`` in namespace ``com.acme`` would not match ``com.acme.Old`` (Java: it does).
    """
    if isinstance(schema, list):
        return [_qualify_aliases(branch, namespace) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.get("type") in ("record", "error", "enum", "fixed") and "name" in out:
        name = out["name"]
        namespace = name.rpartition(".")[0] if "." in name else out.get("namespace", namespace)
        if namespace and isinstance(out.get("aliases"), list):
            out["aliases"] = [a if not isinstance(a, str) or "." in a else f"{namespace}.{a}" for a in out["aliases"]]
    if isinstance(out.get("fields"), list):
        out["fields"] = [
            {**f, "type": _qualify_aliases(f.get("type"), namespace)} if isinstance(f, dict) else f
            for f in out["fields"]
        ]
    for key in ("items", "values", "type"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = _qualify_aliases(out[key], namespace)
    return out


# ---------------------------------------------------------------------- recording incompatibilities
_sink: contextvars.ContextVar[list[tuple[SchemaIncompatibilityType, str, str]] | None] = contextvars.ContextVar(
    "choreo_compat_sink", default=None
)
_apache_incompatible = apache.incompatible


def _observed_incompatible(
    incompat_type: SchemaIncompatibilityType, message: str, location: list[str]
) -> SchemaCompatibilityResult:
    """Apache's ``incompatible`` plus a note of (kind, message, location) for the active check.

    Installed once in place of the module function the checker calls; behaves identically when no
    check of ours is recording, so other users of ``avro.compatibility`` are unaffected.
    """
    result = _apache_incompatible(incompat_type, message, location)
    sink = _sink.get()
    if sink is not None:
        sink.append((incompat_type, message, next(iter(result.locations))))
    return result


apache.incompatible = _observed_incompatible


class _recording:
    def __enter__(self) -> list[tuple[SchemaIncompatibilityType, str, str]]:
        self._found: list[tuple[SchemaIncompatibilityType, str, str]] = []
        self._token = _sink.set(self._found)
        return self._found

    def __exit__(self, *exc: object) -> None:
        _sink.reset(self._token)


class _silent:
    def __enter__(self) -> None:
        self._token = _sink.set(None)

    def __exit__(self, *exc: object) -> None:
        _sink.reset(self._token)


class _LocatedChecker(ReaderWriterCompatibilityChecker):
    """Apache's checker with Java's union handling (see the module docstring).

    Union branch trials go to a silent prober with its own memo, shared by all trials of one check
    so recursive schemas terminate (a pair in progress counts as compatible, as in Apache's memo).
    """

    def __init__(self) -> None:
        super().__init__()
        self._prober: _LocatedChecker | None = None

    def _readable(self, reader: Any, writer: Any) -> bool:
        """A trial: can ``reader`` read ``writer``? Silent, as failing branches are expected."""
        if self._prober is None:
            self._prober = _LocatedChecker()
            self._prober._prober = self._prober
        with _silent():
            result = self._prober.get_compatibility(reader, writer)
        return result.compatibility is SchemaCompatibilityType.compatible

    def calculate_compatibility(self, reader: Any, writer: Any, location: list[str]) -> SchemaCompatibilityResult:
        if writer.type == SchemaType.UNION:
            return self._writer_union(reader, writer, location)
        if reader.type == SchemaType.UNION:
            if any(self._readable(branch, writer) for branch in reader.schemas):
                return CompatibleResult
            return apache.incompatible(
                SchemaIncompatibilityType.missing_union_branch,
                f"reader union lacking writer type: {writer.type.upper()}",
                location,
            )
        return super().calculate_compatibility(reader, writer, location)

    def _writer_union(self, reader: Any, writer: Any, location: list[str]) -> SchemaCompatibilityResult:
        """Every branch the writer may pick must be readable, each checked at its own location."""
        result = CompatibleResult
        for index, branch in enumerate(writer.schemas):
            if reader.type != SchemaType.UNION:
                result = merge(result, self.get_compatibility(reader, branch, str(index), location))
            elif not self._readable(reader, branch):
                result = merge(
                    result,
                    apache.incompatible(
                        SchemaIncompatibilityType.missing_union_branch,
                        f"reader union lacking writer type: {branch.type.upper()}",
                        location + [str(index)],
                    ),
                )
        return result


# ---------------------------------------------------------------------- presentation
_REASONS = {
    "name_mismatch": "named type name differs, writer's is {m} (a rename needs the old full name in aliases)",
    "fixed_size_mismatch": "fixed size changed ({m})",
    "missing_enum_symbols": "reader enum lacks symbol(s) {m} the writer may write (or give the reader enum a default)",
    "reader_field_missing_default_value": "reader field '{m}' is missing in the writer and has no default",
    "type_mismatch": "{m}",
    "missing_union_branch": "{m}",
}


def _reason(kind: SchemaIncompatibilityType, message: str) -> str:
    if kind is SchemaIncompatibilityType.missing_enum_symbols:
        message = ", ".join(sorted(ast.literal_eval(message)))  # Apache renders a set: unordered
    elif kind is SchemaIncompatibilityType.name_mismatch:
        message = message.removeprefix("expected: ")
    return _REASONS[kind.value].format(m=message)


def _unique(found: list[tuple[Any, str, str]]) -> Iterator[tuple[Any, str, str]]:
    seen = set()
    for item in found:
        if item not in seen:
            seen.add(item)
            yield item


def pointer_to_path(schema: Any, location: str) -> str:
    """Turn a checker location (``/fields/3/type/items/fields/1``) into ``items[].qty``.

    Numeric tokens index the *writer's* union branches (the reader side stays where it is), shown as
    ``<writer branch N>`` when the pointer stops there; ``name``, ``size`` and ``symbols`` suffixes
    are attributes of the type at that path, so they are dropped.
    """
    tokens = [t for t in location.split("/") if t]
    parts: list[str] = []
    node = schema
    named = _named_types(schema)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        node = named.get(node, node) if isinstance(node, str) else node
        if token == "fields" and i + 1 < len(tokens) and isinstance(node, dict):
            fld = node["fields"][int(tokens[i + 1])]
            parts.append(("." if parts else "") + fld["name"])
            node, i = fld, i + 2
            continue
        if token == "type" and isinstance(node, dict) and "type" in node:
            node = node["type"]
        elif token == "items" and isinstance(node, dict):
            parts.append("[]")
            node = node["items"]
        elif token == "values" and isinstance(node, dict):
            parts.append("{}")
            node = node["values"]
        elif token.isdigit() and i == len(tokens) - 1:
            parts.append(f"{' ' if parts else ''}<writer branch {token}>")
        i += 1
    return "".join(parts) or "<root>"


def _named_types(schema: Any) -> dict[str, Any]:
    """Named type definitions by short and full name, so pointers can walk through references."""
    out: dict[str, Any] = {}

    def walk(node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error", "enum", "fixed") and "name" in node:
                name = node["name"]
                namespace = node.get("namespace", name.rpartition(".")[0] or namespace)
                out[name.rpartition(".")[2]] = node
                out[f"{namespace}.{name.rpartition('.')[2]}" if namespace else name] = node
            for f in node.get("fields", []):
                walk(f["type"], namespace)
            for key in ("items", "values"):
                if key in node:
                    walk(node[key], namespace)
            if isinstance(kind, (dict, list)):
                walk(kind, namespace)

    walk(schema, "")
    return out
