"""Check a Python value against an Avro schema and say exactly what is wrong, and where.

fastavro's writer is lenient where a contract must not be: it truncates ``3.5`` into an int field,
turns ``"1"`` into a double, writes ints beyond 32 bits into int fields (unreadable by Java readers),
drops unknown keys silently, and otherwise fails with a bare ``TypeError`` and no path. So every
value is checked here before it is written.

The schema is compiled twice, once each for two questions:

* *Is it valid?* One generated Python function per schema (records, arrays and maps become small
  functions; leaves become inline expressions on exact builtin types), answering ``True`` only for a
  value that certainly fits. It is what runs for every event.
* *What exactly is wrong?* A tree of small functions (the reference walker). A check returns
  ``None`` when the value fits; paths (``items[2].qty``) are assembled only on the way back up from a
  problem, and every problem is reported, not just the first. It runs only when the quick check says
  no, so it alone decides what is refused and with which messages; the quick check is conservative
  (a ``dict`` subclass, an ``int`` subclass and so on are left to the walker), never more lenient.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from processors.contracts.errors import MISSING, UNKNOWN_FIELD, ContractViolation, Problem

Problems = list[Problem] | None
Check = Callable[[Any], Problems]
Guard = Callable[[Any], bool]

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
_ABSENT = object()


@dataclass(frozen=True)
class _Node:
    """A compiled schema node: the check, a cheap type guard (to pick union branches) and a label."""

    check: Check
    guard: Guard
    label: str


class Validator:
    """A compiled validator for one schema (raw Avro JSON)."""

    def __init__(self, schema: Any, name: str = "value") -> None:
        self.name = name
        self._named: dict[str, _Node] = {}
        self._check = self._compile(schema, namespace="").check
        #: ``quick_check(value)`` is ``True`` only if ``value`` certainly fits, using exact builtin
        #: types; ``False`` means "ask :meth:`problems`" (the value may still fit, e.g. a dict subclass).
        self.quick_check: Guard = _compile_quick_check(schema) or _never

    def problems(self, value: Any) -> list[Problem]:
        if self.quick_check(value):
            return []
        return self._check(value) or []

    def validate(self, value: Any) -> None:
        """Raise :class:`ContractViolation` listing every problem, or return quietly."""
        if self.quick_check(value):
            return
        problems = self._check(value)
        if problems:
            raise ContractViolation(self.name, problems)

    # ------------------------------------------------------------------ compilation
    def _compile(self, schema: Any, namespace: str) -> _Node:
        if isinstance(schema, list):
            return self._union([self._compile(b, namespace) for b in schema])
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _PRIMITIVE_NODES[schema]
            return self._reference(_fullname(schema, namespace))
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in _LOGICAL_NODES and _logical_applies(logical, kind):
            return _LOGICAL_NODES[logical](schema)
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind == "enum":
            return self._define(schema, namespace, _enum(schema))
        if kind == "fixed":
            return self._define(schema, namespace, _fixed(schema))
        if kind == "array":
            return _array(self._compile(schema["items"], namespace))
        if kind == "map":
            return _map(self._compile(schema["values"], namespace))
        return self._compile(kind, namespace)

    def _reference(self, fullname: str) -> _Node:
        """Look the named node up at call time: a record may refer to itself before it is compiled."""
        named = self._named
        node = named[fullname]
        return _Node(lambda value: named[fullname].check(value), node.guard, node.label)

    def _define(self, schema: dict[str, Any], namespace: str, node: _Node) -> _Node:
        self._named[_fullname(schema["name"], schema.get("namespace", namespace))] = node
        return node

    def _record(self, schema: dict[str, Any], namespace: str) -> _Node:
        label = f"record {schema['name']}"
        fields: list[tuple[str, Check, str, bool]] = []
        names = frozenset(f["name"] for f in schema["fields"])

        def check(value: Any) -> Problems:
            if value.__class__ is not dict and not isinstance(value, dict):
                return [mismatch(label, value)]
            bad: list[Problem] | None = None
            for name, field_check, field_label, has_default in fields:
                item = value.get(name, _ABSENT)
                if item is _ABSENT:
                    if not has_default:
                        bad = (bad or []) + [Problem(name, field_label, MISSING)]
                    continue
                problems = field_check(item)
                if problems:
                    bad = (bad or []) + [_under(name, p) for p in problems]
            if not value.keys() <= names:
                extra = sorted(str(k) for k in value.keys() - names)
                bad = (bad or []) + [Problem(k, label, UNKNOWN_FIELD) for k in extra]
            return bad

        fullname = _fullname(schema["name"], schema.get("namespace", namespace))
        self._define(schema, namespace, _Node(check, _is_dict, label))
        inner = fullname.rpartition(".")[0]
        for f in schema["fields"]:
            node = self._compile(f["type"], inner)
            fields.append((f["name"], node.check, node.label, "default" in f))
        return self._named[fullname]

    @staticmethod
    def _union(branches: list[_Node]) -> _Node:
        label = " or ".join(b.label for b in branches)

        def check(value: Any) -> Problems:
            candidates = [b for b in branches if b.guard(value)]
            if not candidates:
                return [mismatch(label, value)]
            first = candidates[0].check(value)
            if not first:
                return None
            for branch in candidates[1:]:
                if not branch.check(value):
                    return None
            # A single branch of the value's own type: its nested problems say more than the union.
            return first if len(candidates) == 1 else [mismatch(label, value)]

        return _Node(check, lambda value: any(b.guard(value) for b in branches), label)


# ---------------------------------------------------------------------- leaf nodes
def mismatch(label: str, value: Any) -> Problem:
    """A value that is not what ``label`` expects: its type in the message, the value kept aside."""
    return Problem("", label, kind_of(value), describe(value))


def kind_of(value: Any) -> str:
    """What a wrong value is, by its Avro-ish type and size only: this goes into messages, and the
    value may be personal data."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int" if INT_RANGE[0] <= value <= INT_RANGE[1] else "long"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return f"string of {len(value)} character(s)"
    if isinstance(value, (bytes, bytearray)):
        return f"bytes of length {len(value)}"
    if isinstance(value, dict):
        return f"map of {len(value)} entr{'y' if len(value) == 1 else 'ies'}" if value else "empty map"
    if isinstance(value, (list, tuple)):
        return f"array of length {len(value)}"
    return type(value).__name__[:40]


def describe(value: Any) -> str:
    """A short, unambiguous rendering of a wrong value: its Avro-ish type and the value itself
    (for ``--show-pii`` output only; messages use :func:`kind_of`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"int {value}" if INT_RANGE[0] <= value <= INT_RANGE[1] else f"long {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        text = json.dumps(value[:41], ensure_ascii=False)
        return f"string {text if len(text) <= 42 else text[:40] + '…'}"
    if isinstance(value, (bytes, bytearray)):
        return f"bytes of length {len(value)}"
    if isinstance(value, dict):
        keys = sorted(map(str, value))
        return f"map with keys {', '.join(keys[:5])}{', …' if len(keys) > 5 else ''}" if keys else "empty map"
    if isinstance(value, (list, tuple)):
        return f"array of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:60]


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(label: str, bounds: tuple[int, int]) -> _Node:
    low, high = bounds

    def check(value: Any) -> Problems:
        if value.__class__ is not int and not _is_integer(value):
            return [mismatch(label, value)]
        if not low <= value <= high:
            return [replace(mismatch(label, value), expected=f"{label} in [{low}, {high}]")]
        return None

    return _Node(check, _is_integer, label)


def _typed(label: str, guard: Guard) -> _Node:
    def check(value: Any) -> Problems:
        return None if guard(value) else [mismatch(label, value)]

    return _Node(check, guard, label)


_PRIMITIVE_NODES: dict[str, _Node] = {
    "null": _typed("null", lambda v: v is None),
    "boolean": _typed("boolean", lambda v: isinstance(v, bool)),
    "int": _integer("int", INT_RANGE),
    "long": _integer("long", LONG_RANGE),
    "float": _typed("float", _is_number),
    "double": _typed("double", _is_number),
    "bytes": _typed("bytes", lambda v: isinstance(v, (bytes, bytearray))),
    "string": _typed("string", lambda v: isinstance(v, str)),
}


def _enum(schema: dict[str, Any]) -> _Node:
    symbols = frozenset(schema["symbols"])
    return _typed(
        f"one of {schema['name']} ({', '.join(schema['symbols'])})", lambda v: isinstance(v, str) and v in symbols
    )


def _fixed(schema: dict[str, Any]) -> _Node:
    size = schema["size"]
    return _typed(
        f"fixed {schema['name']} ({size} bytes)", lambda v: isinstance(v, (bytes, bytearray)) and len(v) == size
    )


def _array(items: _Node) -> _Node:
    label = f"array of {items.label}"
    item_check = items.check

    def check(value: Any) -> Problems:
        if not isinstance(value, (list, tuple)):
            return [mismatch(label, value)]
        bad: list[Problem] | None = None
        for index, item in enumerate(value):
            problems = item_check(item)
            if problems:
                bad = (bad or []) + [_under(f"[{index}]", p) for p in problems]
        return bad

    return _Node(check, lambda v: isinstance(v, (list, tuple)), label)


def _map(values: _Node) -> _Node:
    label = f"map of {values.label}"
    value_check = values.check

    def check(value: Any) -> Problems:
        if not isinstance(value, dict):
            return [mismatch(label, value)]
        bad: list[Problem] | None = None
        for key, item in value.items():
            step = f"[{json.dumps(key, ensure_ascii=False) if isinstance(key, str) else repr(key)}]"
            problems = [mismatch("string map key", key)] if not isinstance(key, str) else value_check(item)
            if problems:
                bad = (bad or []) + [_under(step, p) for p in problems]
        return bad

    return _Node(check, _is_dict, label)


# ---------------------------------------------------------------------- logical types
def _temporal(label: str, python_type: type, bounds: tuple[int, int]) -> Callable[[dict[str, Any]], _Node]:
    """fastavro accepts the Python type or the raw integer, so both are valid inputs."""
    integer = _integer(label, bounds)

    def is_temporal(value: Any) -> bool:
        return isinstance(value, python_type) and not (python_type is dt.date and isinstance(value, dt.datetime))

    def check(value: Any) -> Problems:
        return None if is_temporal(value) else integer.check(value)

    node = _Node(check, lambda v: is_temporal(v) or _is_integer(v), label)
    return lambda _schema: node


def _decimal(schema: dict[str, Any]) -> _Node:
    precision, scale = schema["precision"], schema.get("scale", 0)
    label = f"decimal({precision},{scale})"

    def check(value: Any) -> Problems:
        if not isinstance(value, decimal.Decimal) or not value.is_finite():
            return [mismatch(label, value)]
        _, digits, exponent = value.as_tuple()
        exponent = int(exponent)
        if -exponent > scale or len(digits) + exponent + scale > precision:
            return [Problem("", label, "decimal with too many digits", f"decimal {value} (too many digits)")]
        return None

    return _Node(check, lambda v: isinstance(v, decimal.Decimal), label)


def _uuid_text(value: Any) -> bool:
    if isinstance(value, uuid.UUID):
        return True
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


_TEMPORAL: dict[str, tuple[str, type, tuple[int, int]]] = {
    "timestamp-millis": ("timestamp-millis (datetime or int)", dt.datetime, LONG_RANGE),
    "timestamp-micros": ("timestamp-micros (datetime or int)", dt.datetime, LONG_RANGE),
    "local-timestamp-millis": ("local-timestamp-millis (datetime or int)", dt.datetime, LONG_RANGE),
    "local-timestamp-micros": ("local-timestamp-micros (datetime or int)", dt.datetime, LONG_RANGE),
    "date": ("date (date or int)", dt.date, INT_RANGE),
    "time-millis": ("time-millis (time or int)", dt.time, INT_RANGE),
    "time-micros": ("time-micros (time or int)", dt.time, LONG_RANGE),
}
_LOGICAL_NODES: dict[str, Callable[[dict[str, Any]], _Node]] = {
    **{logical: _temporal(*args) for logical, args in _TEMPORAL.items()},
    "decimal": _decimal,
    "uuid": lambda _schema: _typed("uuid string", _uuid_text),
}
_LOGICAL_BASE: dict[str, tuple[str, ...]] = {
    "date": ("int",),
    "time-millis": ("int",),
    "uuid": ("string",),
    "decimal": ("bytes", "fixed"),
}


def _logical_applies(logical: str, kind: str) -> bool:
    """A logical type on the wrong base type is ignored, as the Avro spec tells readers to do."""
    return kind in _LOGICAL_BASE.get(logical, ("long",))


# ---------------------------------------------------------------------- helpers
def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _under(step: str, problem: Problem) -> Problem:
    """Prefix a child's problem path with the field name or index it was found under."""
    if not problem.path:
        return replace(problem, path=step)
    joiner = "" if problem.path.startswith("[") else "."
    return replace(problem, path=f"{step}{joiner}{problem.path}")


# ---------------------------------------------------------------------- the quick check
def _never(value: Any) -> bool:
    return False


_QUICK_PRIMITIVES = {
    "null": "(x is None)",
    "boolean": "(x is True or x is False)",
    "int": f"(x.__class__ is int and {INT_RANGE[0]} <= x <= {INT_RANGE[1]})",
    "long": f"(x.__class__ is int and {LONG_RANGE[0]} <= x <= {LONG_RANGE[1]})",
    "float": "(x.__class__ is float or x.__class__ is int)",
    "double": "(x.__class__ is float or x.__class__ is int)",
    "bytes": "(x.__class__ is bytes or x.__class__ is bytearray)",
    "string": "(x.__class__ is str)",
}
_QUICK_TEMPORAL = {
    dt.datetime: "isinstance(x, DT)",
    dt.date: "(isinstance(x, DATE) and not isinstance(x, DT))",
    dt.time: "isinstance(x, TIME)",
}


def _compile_quick_check(schema: Any) -> Guard | None:
    """The generated "certainly fits?" function of ``schema``, or ``None`` if the schema uses something
    the generator does not mirror exactly (say a name defined twice), leaving only the walker."""
    try:
        return _QuickCheck().build(schema)
    # Deliberately broad: the quick check is only an accelerator, and whatever the generator cannot
    # build (KeyError on an odd schema, SyntaxError, RecursionError, ...) falls back to the walker.
    except Exception:  # noqa: BLE001
        return None


class _QuickCheck:
    """Generate Python source answering "does this value certainly fit?", node for node like
    :meth:`Validator._compile` (same names, namespaces, logical types and accepted values).

    Every expression tests the local ``x``: leaves are inline expressions on exact builtin types
    (``x.__class__ is int and low <= x <= high``), records, arrays and maps are small generated
    functions called as ``r3(x)``, and a union is the ``or`` of its branches (``x is None or ...``).
    """

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.env: dict[str, Any] = {"A": _ABSENT, "DT": dt.datetime, "DATE": dt.date, "TIME": dt.time}
        self.named: dict[str, str] = {}

    def build(self, schema: Any) -> Guard:
        entry = self.expr(schema, "")
        self.sources.append(
            f"def quick_check(x):\n    try:\n        return {entry}\n    except Exception:\n        return False\n"
        )
        exec(compile("\n".join(self.sources), "<quick_check>", "exec"), self.env)
        return self.env["quick_check"]

    def const(self, value: Any) -> str:
        name = f"c{len(self.env)}"
        self.env[name] = value
        return name

    def function(self, prefix: str, body: list[str]) -> str:
        name = f"{prefix}{len(self.sources)}_{len(self.named)}"
        self.sources.append(f"def {name}(v):\n" + "".join(f"    {line}\n" for line in body))
        return name

    def expr(self, schema: Any, namespace: str) -> str:
        if isinstance(schema, list):
            branches = [self.expr(b, namespace) for b in schema]
            return f"({' or '.join(branches)})" if branches else "False"
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _QUICK_PRIMITIVES[schema]
            return self.named[_fullname(schema, namespace)]
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in _LOGICAL_NODES and _logical_applies(logical, kind):
            if logical in _TEMPORAL:
                _, python_type, (low, high) = _TEMPORAL[logical]
                return f"({_QUICK_TEMPORAL[python_type]} or (x.__class__ is int and {low} <= x <= {high}))"
            return f"({self.const(_LOGICAL_NODES[logical](schema).check)}(x) is None)"
        if kind in ("record", "error"):
            return self.record(schema, namespace)
        if kind == "enum":
            symbols = self.const(frozenset(schema["symbols"]))
            return self.define(schema, namespace, f"(x.__class__ is str and x in {symbols})")
        if kind == "fixed":
            size = self.const(schema["size"])
            return self.define(
                schema, namespace, f"((x.__class__ is bytes or x.__class__ is bytearray) and len(x) == {size})"
            )
        if kind == "array":
            item = self.expr(schema["items"], namespace)
            body = ["if v.__class__ is not list and v.__class__ is not tuple:", "    return False", "for x in v:"]
            body += [f"    if not {item}:", "        return False", "return True"]
            return f"{self.function('a', body)}(x)"
        if kind == "map":
            value = self.expr(schema["values"], namespace)
            body = ["if v.__class__ is not dict:", "    return False", "for k, x in v.items():"]
            body += [f"    if k.__class__ is not str or not {value}:", "        return False", "return True"]
            return f"{self.function('m', body)}(x)"
        return self.expr(kind, namespace)

    def define(self, schema: dict[str, Any], namespace: str, expr: str) -> str:
        fullname = _fullname(schema["name"], schema.get("namespace", namespace))
        if fullname in self.named:
            # The walker binds references to the last definition at call time: leave it to the walker.
            raise ValueError(f"{fullname} defined twice")
        self.named[fullname] = expr
        return expr

    def record(self, schema: dict[str, Any], namespace: str) -> str:
        fullname = _fullname(schema["name"], schema.get("namespace", namespace))
        name = f"r{len(self.named)}"
        self.define(schema, namespace, f"{name}(x)")
        inner = fullname.rpartition(".")[0]
        required: list[str] = []
        optional: list[str] = []
        count = 0
        for f in schema["fields"]:
            field_name, expr = f["name"], self.expr(f["type"], inner)
            if not isinstance(field_name, str):
                raise TypeError(f"field name {field_name!r}")
            if "default" in f:
                optional += [
                    f"x = v.get({field_name!r}, A)",
                    "if x is not A:",
                    f"    if not {expr}:",
                    "        return False",
                    "    n += 1",
                ]
            else:
                required += [f"    x = v[{field_name!r}]", f"    if not {expr}:", "        return False"]
                count += 1
        body = ["if v.__class__ is not dict:", "    return False"]
        if required:
            body += ["try:", *required, "except KeyError:", "    return False"]
        body += [f"n = {count}", *optional, "return len(v) == n"]
        self.sources.append(f"def {name}(v):\n" + "".join(f"    {line}\n" for line in body))
        return self.named[fullname]
