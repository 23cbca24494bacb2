"""A compiled Avro binary writer for the engine's own records (the audit record).

The engine writes one audit record per input; fastavro's generic ``schemaless_writer`` costs more
than the rest of the audit path together. This compiles a writer for a supported subset of Avro
(records of null, boolean, int, long, string, enum, arrays of those, and unions of them, logical
types passed through as their base type) into a closure. It is only used after proving, at start,
that it writes byte-for-byte what the contracts codec writes for the same value; otherwise the engine
keeps the codec. Values are trusted (built by the engine), so there is no validation here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from processors.contracts.codegen import VARINT

Writer = Callable[[list[bytes], Any], None]


class Unsupported(ValueError):
    """The schema uses a type this writer does not compile."""


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Values of up to two varint bytes (-8192..8191: partitions, small offsets, string lengths) from a
# table; larger ones (timestamps, offsets) through a bounded memo: an audit record carries two
# timestamps, received and handled, usually in the same millisecond as the previous input's.
# (The table is the contracts codec's, indexed by the zigzagged value.)
_BIG: dict[int, bytes] = {}


def zigzag(n: int) -> bytes:
    if -8192 <= n < 8192:
        return VARINT[(n << 1) ^ (n >> 63)]
    if n.__class__ is not int:
        return _zigzag(n)
    encoded = _BIG.get(n)
    if encoded is None:
        if len(_BIG) >= 4096:
            _BIG.clear()
        encoded = _BIG[n] = _zigzag(n)
    return encoded


def _string(out: list[bytes], value: str) -> None:
    data = value.encode("utf-8")
    out.append(zigzag(len(data)))
    out.append(data)


def _long(out: list[bytes], value: int) -> None:
    out.append(zigzag(value))


def _boolean(out: list[bytes], value: bool) -> None:
    out.append(b"\x01" if value else b"\x00")


def _null(out: list[bytes], value: Any) -> None:
    return None


_PRIMITIVES: dict[str, Writer] = {"string": _string, "int": _long, "long": _long, "boolean": _boolean, "null": _null}
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "long": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def compile_writer(schema: Any) -> Callable[[Any], bytes]:
    """A function value → Avro binary body for ``schema`` (a parsed or raw schema dict).

    A record whose fields are all strings, ints/longs, enums, arrays of strings or unions of null
    and one of those is generated as straight-line Python (no call per field); anything else in the
    supported subset goes through composed closures."""
    flat = _generate_flat(schema)
    if flat is not None:
        return flat
    write = _compile(schema)

    def encode(value: Any) -> bytes:
        out: list[bytes] = []
        write(out, value)
        return b"".join(out)

    return encode


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return schema.get("type") if isinstance(schema.get("type"), str) else "complex"
    return "union"


def _compile(schema: Any) -> Writer:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        raise Unsupported(f"named type reference {schema!r}")
    if isinstance(schema, list):
        return _union(schema)
    if not isinstance(schema, dict):
        raise Unsupported(repr(schema))
    kind = schema.get("type")
    if isinstance(kind, (dict, list)):
        return _compile(kind)
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]  # logical types (timestamp-millis, ...) are written as their base type
    if kind == "record":
        fields = [(f["name"], _compile(f["type"])) for f in schema["fields"]]

        def record(out: list[bytes], value: dict[str, Any]) -> None:
            for name, w in fields:
                w(out, value[name])

        return record
    if kind == "enum":
        index = {s: zigzag(i) for i, s in enumerate(schema["symbols"])}

        def enum(out: list[bytes], value: str) -> None:
            out.append(index[value])

        return enum
    if kind == "array":
        item = _compile(schema["items"])

        def array(out: list[bytes], value: list[Any]) -> None:
            if value:
                out.append(zigzag(len(value)))
                for v in value:
                    item(out, v)
            out.append(b"\x00")

        return array
    raise Unsupported(f"type {kind!r}")


def _union(branches: list[Any]) -> Writer:
    names = [_type_name(b) for b in branches]
    for name in names:
        if name not in _PY_TYPES:
            raise Unsupported(f"union branch {name!r}")
    compiled = [(_PY_TYPES[n], zigzag(i), _compile(b)) for i, (n, b) in enumerate(zip(names, branches))]
    # bool is an int subclass: test booleans before ints
    compiled.sort(key=lambda c: 0 if bool in c[0] or type(None) in c[0] else 1)

    def union(out: list[bytes], value: Any) -> None:
        for types, idx, w in compiled:
            if type(value) in types:
                out.append(idx)
                w(out, value)
                return
        raise TypeError(f"value {value!r} fits no branch of union {names}")

    return union


def _base(schema: Any) -> str | None:
    """'string', 'long', 'enum', 'array<string>' or None (unsupported by the flat generator)."""
    if isinstance(schema, str):
        return {"string": "string", "int": "long", "long": "long"}.get(schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("string", "int", "long"):
            return "long" if kind != "string" else "string"
        if kind == "enum":
            return "enum"
        if kind == "array" and _base(schema.get("items")) == "string":
            return "array<string>"
    return None


def _generate_flat(schema: Any) -> Callable[[Any], bytes] | None:
    if not (isinstance(schema, dict) and schema.get("type") == "record"):
        return None
    lines = ["def encode(v):", "    out = []", "    a = out.append"]
    # VT[n << 1] is the varint of a length n < 8192 (the zigzag of n is 2n): no call per string.
    env: dict[str, Any] = {"zz": zigzag, "VT": VARINT}
    for i, f in enumerate(schema["fields"]):
        name, ftype = f["name"], f["type"]
        nullable = False
        if isinstance(ftype, list):
            if len(ftype) != 2 or "null" not in ftype:
                return None
            nullable = True
            null_index = ftype.index("null")
            ftype = ftype[1 - null_index]
        base = _base(ftype)
        if base is None:
            return None
        ind = "    "
        lines.append(f"    x = v[{name!r}]")
        if nullable:
            lines.append(
                f"    if x is None:\n        a({zigzag(null_index)!r})\n    else:\n        a({zigzag(1 - null_index)!r})"
            )
            ind = "        "
        if base == "string":
            lines.append(
                f"{ind}b = x.encode('utf-8')\n{ind}n = len(b)\n{ind}a(VT[n << 1] if n < 8192 else zz(n))\n{ind}a(b)"
            )
        elif base == "long":
            lines.append(f"{ind}a(zz(x))")
        elif base == "enum":
            env[f"E{i}"] = {sym: zigzag(j) for j, sym in enumerate(ftype["symbols"])}
            lines.append(f"{ind}a(E{i}[x])")
        else:  # array<string>
            lines.append(
                f"{ind}if x:\n{ind}    a(zz(len(x)))\n{ind}    for y in x:\n{ind}        b = y.encode('utf-8')"
                f"\n{ind}        n = len(b)\n{ind}        a(VT[n << 1] if n < 8192 else zz(n))\n{ind}        a(b)"
                f"\n{ind}a(b'\\x00')"
            )
    lines.append("    return b''.join(out)")
    exec("\n".join(lines), env)  # noqa: S102 - code generated from a schema, no outside input
    return env["encode"]
