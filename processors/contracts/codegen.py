"""Avro binary encoders and decoders generated per schema, for the codec's and the engine's hot paths.

One generator module: :func:`compile_encoder` / :func:`compile_decoder` for contract events (the
codec), and :func:`compile_writer` for the engine's own records (the audit record), which adds a
straight-line form for flat records and otherwise uses :func:`compile_encoder`.

fastavro is generic: per value it looks the schema node's type up, and to pick a union branch it
validates the value against each branch (for ``["null", Address]`` that is a full second validation
of the address). For a value the contract's quick check has already passed, writing it is a fixed
sequence of appends, so each schema is compiled once into Python source doing exactly that.

fastavro stays the reference: the generated code covers the common shapes and gives up (returns
``None`` at compile time, or raises at run time) on anything else, and the codec then falls back to
fastavro, which produces the result (or error) it always did. In particular:

* the encoder only runs on values :attr:`Validator.quick_check` passed, where each union branch is
  the one fastavro would pick; it raises (so fastavro writes) on values whose bytes might differ: a
  float field out of float32 range, a tuple in a union (fastavro's ``(name, value)`` notation), a
  ``bytearray`` for a fixed, an absent field whose default is not a null union's ``None``;
* the decoder is strict where fastavro is lenient (a short string, a boolean byte other than 0 or 1,
  a negative array block count, an over-long varint) and then raises, so fastavro decodes, or refuses
  with its own error message;
* logical types go through fastavro's own converters (``LOGICAL_WRITERS``, ``LOGICAL_READERS``); the
  encoder leaves ``decimal`` and ``uuid`` to fastavro, and neither side resolves schema evolution
  other than a reader appending null-default fields to an otherwise identical writer schema.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from struct import Struct
from typing import Any

import fastavro
from fastavro.read import LOGICAL_READERS
from fastavro.write import LOGICAL_WRITERS

Encoder = Callable[[Any, bytes], bytes]
Decoder = Callable[[bytes, int], tuple[Any, int]]

_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
_SMALL = 1 << 14  # varints of zigzag values below this are precomputed (1 or 2 bytes)


class Unsupported(Exception):
    """The schema uses something the generator leaves to fastavro."""


class Fallback(Exception):
    """Raised by generated code: let fastavro handle this value or these bytes."""


def _varint(z: int) -> bytes:
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


VARINT = tuple(_varint(z) for z in range(_SMALL))


def zigzag_varint(n: int) -> bytes:
    """Avro's long encoding of ``n`` (zigzag, then base-128 varint)."""
    z = (n << 1) ^ (n >> 63)
    return VARINT[z] if z < _SMALL else _varint(z)


def read_varint(data: bytes, i: int, b: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``b`` (>= 0x80) was read; strict: at most 10 bytes, < 2**64."""
    z = b & 0x7F
    shift = 7
    while True:
        b = data[i]
        i += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise Fallback("varint longer than 10 bytes")
    if z >> 64:
        raise Fallback("varint beyond 64 bits")
    return z, i


def _named_schemas(parsed: dict[str, Any]) -> dict[str, Any]:
    named = parsed.get("__named_schemas") if isinstance(parsed, dict) else None
    if named is None:
        raise Unsupported("schema not parsed by fastavro")
    return named


def _logical_key(schema: dict[str, Any]) -> str | None:
    logical = schema.get("logicalType")
    return f"{schema['type']}-{logical}" if logical is not None and isinstance(schema["type"], str) else None


class _Source:
    """Shared bookkeeping of the generated module: constants, functions, named-type functions."""

    def __init__(self, named: dict[str, Any], env: dict[str, Any]) -> None:
        self.named_schemas = named
        self.sources: list[str] = []
        self.env: dict[str, Any] = {"Fallback": Fallback, **env}
        self.named: dict[str, str] = {}

    def const(self, value: Any) -> str:
        name = f"c{len(self.env)}"
        self.env[name] = value
        return name

    def add(self, name: str, params: str, body: list[str]) -> None:
        self.sources.append(f"def {name}({params}):\n" + "".join(f"    {line}\n" for line in body))

    def finish(self, entry: str) -> Any:
        exec(compile("\n".join(self.sources), "<avro codegen>", "exec"), self.env)
        return self.env[entry]


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    return ["    " * depth + line for line in lines]


# ---------------------------------------------------------------------- encoder
def compile_encoder(parsed: dict[str, Any]) -> Encoder | None:
    """``encode(value, header) -> header + body`` for a fastavro-parsed schema, or ``None``."""
    try:
        return _EncoderGen(_named_schemas(parsed)).build(parsed)
    except Unsupported:
        return None


class _EncoderGen(_Source):
    """Statements appending the encoding of local ``x`` with ``a`` (``list.append``)."""

    def __init__(self, named: dict[str, Any]) -> None:
        super().__init__(named, {"V": VARINT, "VL": zigzag_varint, "PF": Struct("<f").pack, "PD": Struct("<d").pack})

    def build(self, parsed: Any) -> Encoder:
        body = ["p = [h]", "a = p.append", *self.stmts(parsed), "return b''.join(p)"]
        self.add("encode", "x, h", body)
        return self.finish("encode")

    def long(self) -> list[str]:
        return ["a(V[z] if (z := (x << 1) ^ (x >> 63)) < 16384 else VL(x))"]

    def stmts(self, schema: Any) -> list[str]:
        if isinstance(schema, list):
            return self.union(schema)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self.primitive(schema)
            if schema not in self.named_schemas:
                raise Unsupported(f"unknown type {schema}")
            return self.named_type(schema)
        kind = schema["type"]
        key = _logical_key(schema)
        if key is not None and key in LOGICAL_WRITERS:
            if key not in (
                "long-timestamp-millis",
                "long-timestamp-micros",
                "long-local-timestamp-millis",
                "long-local-timestamp-micros",
                "int-date",
                "int-time-millis",
                "long-time-micros",
            ):
                raise Unsupported(f"logical type {key}")
            prepare, node = self.const(LOGICAL_WRITERS[key]), self.const(schema)
            return [f"x = {prepare}(x, {node})", *self.primitive(kind)]
        if kind in ("record", "enum", "fixed"):
            return self.named_type(schema["name"])
        if kind == "array":
            return self.loop("for x in v:", self.stmts(schema["items"]))
        if kind == "map":
            return self.loop("for k, x in v.items():", self.string("k") + self.stmts(schema["values"]), items="v")
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return self.primitive(kind)
        raise Unsupported(f"type {kind!r}")

    def primitive(self, kind: str) -> list[str]:
        if kind == "null":
            return []
        if kind == "boolean":
            return ["a(b'\\x01' if x else b'\\x00')"]
        if kind in ("int", "long"):
            return self.long()
        if kind == "float":
            return ["a(PF(x))"]
        if kind == "double":
            return ["a(PD(x))"]
        if kind == "bytes":
            return ["a(V[z] if (z := len(x) << 1) < 16384 else VL(len(x)))", "a(x)"]
        if kind == "string":
            return self.string("x")
        raise Unsupported(kind)

    @staticmethod
    def string(var: str) -> list[str]:
        return [f"s = {var}.encode()", "a(V[z] if (z := len(s) << 1) < 16384 else VL(len(s)))", "a(s)"]

    def loop(self, header: str, body: list[str], items: str = "v") -> list[str]:
        name = f"w{len(self.sources)}_{len(self.named)}"
        self.add(
            name,
            "v, a",
            [
                "if v:",
                "    n = len(v)",
                "    a(V[n << 1] if n < 8192 else VL(n))",
                f"    {header}",
                *_indent(body, 2),
                "a(b'\\x00')",
            ],
        )
        return [f"{name}(x, a)"]

    def named_type(self, fullname: str) -> list[str]:
        if fullname not in self.named_schemas:
            raise Unsupported(f"unknown type {fullname}")
        schema = self.named_schemas[fullname]
        kind = schema["type"]
        if schema.get("logicalType") is not None and _logical_key(schema) in LOGICAL_WRITERS:
            raise Unsupported(f"logical named type {fullname}")
        if kind == "enum":
            symbols: dict[str, bytes] = {}
            for i, symbol in enumerate(schema["symbols"]):
                symbols.setdefault(symbol, zigzag_varint(i))  # list.index: the first one
            table = self.const(symbols)
            return [f"a({table}[x])"]
        if kind == "fixed":
            # fastavro's union branch test wants exact bytes; a bytearray goes to fastavro.
            return [
                "if x.__class__ is not bytes:",
                "    raise Fallback('fixed')",
                f"if len(x) != {int(schema['size'])}:",
                "    raise Fallback('fixed')",
                "a(x)",
            ]
        if kind != "record":
            raise Unsupported(f"named {kind}")
        function = self.named.get(fullname)
        if function is None:
            function = self.named[fullname] = f"r{len(self.named)}"
            body: list[str] = []
            for field in schema["fields"]:
                name = field["name"]
                if not isinstance(name, str):
                    raise Unsupported("field name")
                if "default" in field:
                    # fastavro writes the default of an absent field; only a null union's None is inlined.
                    ftype = field["type"]
                    absent = ["raise Fallback('default')"]
                    if field["default"] is None and isinstance(ftype, list) and ftype and ftype[0] == "null":
                        absent = ["a(b'\\x00')"]
                    body += [
                        f"x = v.get({name!r}, Fallback)",
                        "if x is Fallback:",
                        *_indent(absent),
                        "else:",
                        *_indent(self.stmts(ftype)),
                    ]
                else:
                    body += [f"x = v[{name!r}]", *self.stmts(field["type"])]
            self.add(function, "v, a", body or ["pass"])
        return [f"{function}(x, a)"]

    def union(self, branches: list[Any]) -> list[str]:
        if len(branches) != 2 or branches.count("null") != 1:
            raise Unsupported("union other than null and one type")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        if isinstance(other, list):
            raise Unsupported("nested union")
        stmts = self.stmts(other)
        # fastavro reads any tuple in a union as (type name, value): leave those to it.
        return (
            [
                "if x is None:",
                f"    a({zigzag_varint(null_index)!r})",
                "else:",
                "    if x.__class__ is tuple:",
                "        raise Fallback('tuple in union')",
                f"    a({zigzag_varint(1 - null_index)!r})",
                *_indent(stmts),
            ]
            if stmts
            else ["if x is None:", f"    a({zigzag_varint(null_index)!r})", "else:", "    raise Fallback('null')"]
        )


# ---------------------------------------------------------------------- writer for engine records
# The engine writes one audit record per input, without validation (it built the value). Such a
# record is flat (strings, longs, enums, arrays of strings, nullable ones), and for a flat record
# :func:`compile_writer` generates straight-line code with no call per field, and writes its two
# timestamps from a memo: about two thirds of :func:`compile_encoder`'s time for an audit record.
# Any other schema goes to :func:`compile_encoder`, and what that leaves to fastavro to fastavro.

# Values of up to two varint bytes (-8192..8191: partitions, small offsets, string lengths) from
# the table; larger ones (timestamps, offsets) through a bounded memo: an audit record carries two
# timestamps, received and handled, usually in the same millisecond as the previous input's.
_LARGE_VARINTS: dict[int, bytes] = {}


def zigzag(n: int) -> bytes:
    """:func:`zigzag_varint` (its reference), memoised for values beyond the table."""
    if -8192 <= n < 8192:
        return VARINT[(n << 1) ^ (n >> 63)]
    if n.__class__ is not int:
        return zigzag_varint(n)
    encoded = _LARGE_VARINTS.get(n)
    if encoded is None:
        if len(_LARGE_VARINTS) >= 4096:
            _LARGE_VARINTS.clear()
        encoded = _LARGE_VARINTS[n] = zigzag_varint(n)
    return encoded


def compile_writer(schema: dict[str, Any]) -> Callable[[Any], bytes]:
    """A function value → Avro binary body for a raw ``schema``, byte for byte what fastavro's
    ``schemaless_writer`` writes (the reference, used for whatever the generated code leaves)."""
    flat = _compile_flat_record(schema)
    if flat is not None:
        return flat
    parsed: dict[str, Any] = fastavro.parse_schema(schema)  # type: ignore[assignment] # a record's is a dict
    encoder = compile_encoder(parsed)

    def by_fastavro(value: Any) -> bytes:
        out = BytesIO()
        fastavro.schemaless_writer(out, parsed, value)
        return out.getvalue()

    if encoder is None:
        return by_fastavro

    def encode(value: Any) -> bytes:
        try:
            return encoder(value, b"")
        except Fallback:
            return by_fastavro(value)

    return encode


def _flat_base(schema: Any) -> str | None:
    """'string', 'long', 'enum', 'array<string>' or None (not a flat field)."""
    if isinstance(schema, str):
        return {"string": "string", "int": "long", "long": "long"}.get(schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("string", "int", "long"):
            return "long" if kind != "string" else "string"
        if kind == "enum":
            return "enum"
        if kind == "array" and _flat_base(schema.get("items")) == "string":
            return "array<string>"
    return None


def _compile_flat_record(schema: Any) -> Callable[[Any], bytes] | None:
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
        base = _flat_base(ftype)
        if base is None:
            return None
        ind = "    "
        lines.append(f"    x = v[{name!r}]")
        if nullable:
            lines.append(f"    if x is None:\n        a({zigzag(null_index)!r})")
            lines.append(f"    else:\n        a({zigzag(1 - null_index)!r})")
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


# ---------------------------------------------------------------------- decoder
def compile_decoder(writer: dict[str, Any], reader: dict[str, Any] | None = None) -> Decoder | None:
    """``decode(data, offset) -> (value, end)`` for data written with ``writer`` read as ``reader``
    (``None``: the writer itself), or ``None`` when the resolution needs fastavro."""
    try:
        named = _named_schemas(writer)
        appended: list[tuple[str, Any]] = []
        if reader is not None and reader is not writer:
            appended = _appended_null_fields(writer, reader)
        return _DecoderGen(named, resolving=bool(appended)).build(writer, appended)
    except Unsupported:
        return None


def _strip(schema: Any) -> Any:
    """A parsed schema without documentation and the parser's markers, to compare shapes."""
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in schema.items() if k not in ("doc", "__fastavro_parsed", "__named_schemas")}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def _appended_null_fields(writer: dict[str, Any], reader: dict[str, Any]) -> list[tuple[str, Any]]:
    """The reader-only fields when ``reader`` is ``writer`` plus trailing ``["null", ...]`` fields
    defaulting to null (how fastavro then resolves: the writer's fields, then each default)."""
    if (
        not (isinstance(writer, dict) and isinstance(reader, dict))
        or writer.get("type") != "record"
        or reader.get("type") != "record"
    ):
        raise Unsupported("resolution of non-records")
    wfields, rfields = writer["fields"], reader["fields"]
    if writer["name"] != reader["name"] or len(rfields) < len(wfields):
        raise Unsupported("renamed or shrunk record")
    if _strip(wfields) != _strip(rfields[: len(wfields)]):
        raise Unsupported("changed fields")
    if any("aliases" in f for f in rfields) or "aliases" in reader:
        raise Unsupported("aliases")
    wnamed, rnamed = _named_schemas(writer), _named_schemas(reader)
    for name, schema in wnamed.items():
        if name != writer["name"] and _strip(rnamed.get(name)) != _strip(schema):
            raise Unsupported(f"named type {name} differs")
    appended = []
    for field in rfields[len(wfields) :]:
        ftype = field["type"]
        if field.get("default", Unsupported) is not None or not (
            isinstance(ftype, list) and ftype and ftype[0] == "null"
        ):
            raise Unsupported("appended field without a null default")
        appended.append((field["name"], None))
    return appended


_ZIGZAG = tuple((b >> 1) ^ -(b & 1) for b in range(128))  # a one-byte varint, decoded


class _DecoderGen(_Source):
    """Statements reading a value from ``d`` at ``i`` into a local (``n = len(d)``, ``t`` = ``d``
    decoded as latin-1)."""

    def __init__(self, named: dict[str, Any], resolving: bool) -> None:
        super().__init__(
            named, {"RV": read_varint, "ZZ": _ZIGZAG, "UF": Struct("<f").unpack_from, "UD": Struct("<d").unpack_from}
        )
        # Resolving (a writer schema read with a reader that appends fields), fastavro matches each
        # union branch against the reader's branches, which may promote (int to float): null
        # unions only then. Its logical readers get the reader's node too (unused but by decimal).
        self.resolving = resolving

    def build(self, writer: Any, appended: list[tuple[str, Any]]) -> Decoder:
        prologue = ["n = len(d)", "t = d.decode('latin-1')"]
        if appended:
            if not (isinstance(writer, dict) and writer.get("type") == "record"):
                raise Unsupported("appended fields")
            body = [
                *prologue,
                *self.record_body(writer, [(name, repr(value)) for name, value in appended]),
                "return x, i",
            ]
        else:
            body = [*prologue, *self.stmts(writer, "x"), "return x, i"]
        self.add("decode", "d, i", body)
        return self.finish("decode")

    @staticmethod
    def long(var: str) -> list[str]:
        return [
            "b = d[i]",
            "i += 1",
            "if b < 128:",
            f"    {var} = ZZ[b]",
            "else:",
            "    b, i = RV(d, i, b)",
            f"    {var} = (b >> 1) ^ -(b & 1)",
        ]

    def stmts(self, schema: Any, var: str) -> list[str]:
        if isinstance(schema, list):
            return self.union(schema, var)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self.primitive(schema, var)
            return self.named_type(schema, var)
        kind = schema["type"]
        key = _logical_key(schema)
        if key is not None and key in LOGICAL_READERS:
            if self.resolving and key.endswith("decimal"):
                raise Unsupported("decimal while resolving")
            base = self.stmts(kind, var)
            convert, node = self.const(LOGICAL_READERS[key]), self.const(schema)
            return [*base, f"{var} = {convert}({var}, {node}, {node if self.resolving else None})"]
        if kind in ("record", "enum", "fixed"):
            return self.named_type(schema["name"], var)
        if kind == "array":
            return self.loop("[]", self.stmts(schema["items"], "x"), "ap(x)", var)
        if kind == "map":
            return self.loop("{}", [*self.string("k"), *self.stmts(schema["values"], "x")], "v[k] = x", var)
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return self.primitive(kind, var)
        raise Unsupported(f"type {kind!r}")

    def primitive(self, kind: str, var: str) -> list[str]:
        if kind == "null":
            return [f"{var} = None"]
        if kind == "boolean":
            return [
                "b = d[i]",
                "i += 1",
                "if b == 1:",
                f"    {var} = True",
                "elif b == 0:",
                f"    {var} = False",
                "else:",
                "    raise Fallback('boolean')",
            ]
        if kind in ("int", "long"):
            return self.long(var)
        if kind == "float":
            return [f"{var} = UF(d, i)[0]", "i += 4"]
        if kind == "double":
            return [f"{var} = UD(d, i)[0]", "i += 8"]
        if kind == "bytes":
            return [
                *self.long("b"),
                "j = i + b",
                "if b < 0 or j > n:",
                "    raise Fallback('bytes')",
                f"{var} = d[i:j]",
                "i = j",
            ]
        if kind == "string":
            return self.string(var)
        raise Unsupported(kind)

    def string(self, var: str) -> list[str]:
        # A slice of ``t`` that is ASCII is the UTF-8 decoding of those bytes (``str.isascii`` is
        # O(1)); anything else is decoded from the bytes.
        return [
            *self.long("b"),
            "j = i + b",
            "if b < 0 or j > n:",
            "    raise Fallback('string')",
            f"{var} = t[i:j]",
            f"if not {var}.isascii():",
            f"    {var} = d[i:j].decode()",
            "i = j",
        ]

    def loop(self, empty: str, body: list[str], store: str, var: str) -> list[str]:
        name = f"l{len(self.sources)}_{len(self.named)}"
        lines = [f"v = {empty}"]
        if empty == "[]":
            lines.append("ap = v.append")
        lines += [
            "while True:",
            *_indent(self.long("c")),
            "    if c == 0:",
            "        break",
            "    if c < 0:",
            "        raise Fallback('block size')",
        ]
        lines += ["    for _ in range(c):", *_indent(body, 2), f"        {store}", "return v, i"]
        self.add(name, "d, i, n, t", lines)
        return [f"{var}, i = {name}(d, i, n, t)"]

    def named_type(self, fullname: str, var: str) -> list[str]:
        if fullname not in self.named_schemas:
            raise Unsupported(f"unknown type {fullname}")
        schema = self.named_schemas[fullname]
        kind = schema["type"]
        key = _logical_key(schema)
        if key is not None and key in LOGICAL_READERS:
            raise Unsupported(f"logical named type {fullname}")
        if kind == "enum":
            table = self.const(dict(enumerate(schema["symbols"])))
            return [*self.long("b"), f"{var} = {table}[b]"]
        if kind == "fixed":
            size = int(schema["size"])
            return [f"j = i + {size}", "if j > n:", "    raise Fallback('fixed')", f"{var} = d[i:j]", "i = j"]
        if kind != "record":
            raise Unsupported(f"named {kind}")
        function = self.named.get(fullname)
        if function is None:
            function = self.named[fullname] = f"r{len(self.named)}"
            self.add(function, "d, i, n, t", [*self.record_body(schema, []), "return x, i"])
        return [f"{var}, i = {function}(d, i, n, t)"]

    def record_body(self, schema: dict[str, Any], appended: list[tuple[str, str]]) -> list[str]:
        body: list[str] = []
        items: list[str] = []
        for index, field in enumerate(schema["fields"]):
            name = field["name"]
            if not isinstance(name, str):
                raise Unsupported("field name")
            body += self.stmts(field["type"], f"f{index}")
            items.append(f"{name!r}: f{index}")
        items += [f"{name!r}: {value}" for name, value in appended]
        return [*body, "x = {" + ", ".join(items) + "}"]

    def union(self, branches: list[Any], var: str) -> list[str]:
        if self.resolving and (len(branches) != 2 or branches.count("null") != 1):
            raise Unsupported("union other than null and one type while resolving")
        # The index as its raw zigzag byte (0, 2, 4...); a multi-byte index is left to fastavro.
        lines = ["b = d[i]", "i += 1"]
        for index, branch in enumerate(branches):
            if isinstance(branch, list) or index > 63:
                raise Unsupported("nested or long union")
            lines += [f"{'if' if index == 0 else 'elif'} b == {index << 1}:", *_indent(self.stmts(branch, var))]
        return (
            [*lines, "else:", "    raise Fallback('union index')"]
            if branches
            else [*lines, "raise Fallback('empty union')"]
        )
