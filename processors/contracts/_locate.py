"""Where Avro bytes stop being readable: the field path and type, never the bytes.

fastavro says *what* went wrong (a ``UnicodeDecodeError`` with the bytes of the bad string, an
``EOFError``) but not *where*, and its messages quote the input: the bytes of a broken
``customer_email`` are an email address. :func:`locate_corruption` walks the writer schema over the
body a second time, only when decoding failed, and names the first field it cannot read (say
``customer_email (string): not UTF-8 text``), so a dead letter, an audit record or a log line can
say what is wrong without carrying what was there.
"""

from __future__ import annotations

import struct
from typing import Any

_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")
_MAX_VARINT_BYTES = 10


class _Unreadable(Exception):
    def __init__(self, path: str, kind: str, problem: str) -> None:
        self.path, self.kind, self.problem = path, kind, problem


class _Reader:
    __slots__ = ("data", "pos", "named")

    def __init__(self, data: bytes, pos: int, named: dict[str, Any]) -> None:
        self.data, self.pos, self.named = data, pos, named

    def take(self, n: int, path: str, kind: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise _Unreadable(path, kind, "truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def long(self, path: str, kind: str) -> int:
        shift = result = 0
        for _ in range(_MAX_VARINT_BYTES):
            if self.pos >= len(self.data):
                raise _Unreadable(path, kind, "truncated")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7
        raise _Unreadable(path, kind, "a variable-length integer longer than 10 bytes")

    def read(self, schema: Any, path: str) -> None:  # noqa: C901, PLR0912 - one branch per Avro type
        if isinstance(schema, list):
            index = self.long(path, "union")
            if not 0 <= index < len(schema):
                raise _Unreadable(path, "union", f"branch {index} of a union of {len(schema)}")
            self.read(schema[index], path)
            return
        if isinstance(schema, str):
            if schema in self.named:
                self.read(self.named[schema], path)
                return
            schema = {"type": schema}
        kind = schema.get("type")
        if isinstance(kind, (dict, list)):
            self.read(kind, path)
            return
        if kind in self.named and kind not in _PRIMITIVES:
            self.read(self.named[kind], path)
            return
        label = schema.get("name") or kind
        if kind == "null":
            return
        if kind == "boolean":
            if self.take(1, path, kind)[0] > 1:
                raise _Unreadable(path, kind, "a byte other than 0 or 1")
        elif kind in ("int", "long"):
            self.long(path, kind)
        elif kind == "float":
            self.take(_FLOAT.size, path, kind)
        elif kind == "double":
            self.take(_DOUBLE.size, path, kind)
        elif kind in ("bytes", "string"):
            size = self.long(path, kind)
            if size < 0:
                raise _Unreadable(path, kind, "a negative length")
            chunk = self.take(size, path, kind)
            if kind == "string":
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Unreadable(path, kind, "not UTF-8 text") from None
        elif kind == "fixed":
            self.take(int(schema["size"]), path, f"fixed {label}")
        elif kind == "enum":
            index = self.long(path, f"enum {label}")
            if not 0 <= index < len(schema["symbols"]):
                raise _Unreadable(path, f"enum {label}", f"symbol {index} of {len(schema['symbols'])}")
        elif kind in ("record", "error"):
            for fld in schema["fields"]:
                self.read(fld["type"], f"{path}.{fld['name']}" if path else fld["name"])
        elif kind == "array":
            self._blocks(path, "array", lambda i: self.read(schema["items"], f"{path}[{i}]"))
        elif kind == "map":

            def entry(i: int) -> None:
                self.read("string", f"{path}[key {i}]")
                self.read(schema["values"], f"{path}[{i}]")

            self._blocks(path, "map", entry)
        else:
            raise _Unreadable(path, str(kind), "a type this reader does not know")

    def _blocks(self, path: str, kind: str, item: Any) -> None:
        index = 0
        while True:
            count = self.long(path, kind)
            if count == 0:
                return
            if count < 0:
                count = -count
                self.long(path, kind)  # the block's size in bytes
            if count > len(self.data):
                raise _Unreadable(path, kind, f"a block of {count} items in {len(self.data)} bytes")
            for _ in range(count):
                item(index)
                index += 1


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def locate_corruption(parsed_schema: Any, data: bytes, offset: int) -> str:
    """The first unreadable field of an Avro body, as ``path (type): problem``; what follows the
    body when the schema reads it whole (``N trailing byte(s)``); or ``""`` if this walk finds
    nothing wrong (then only the reader's schema resolution failed). Never any of the bytes."""
    named = parsed_schema.get("__named_schemas", {}) if isinstance(parsed_schema, dict) else {}
    reader = _Reader(bytes(data), offset, named)
    try:
        reader.read(parsed_schema, "")
    except _Unreadable as exc:
        return f"{exc.path or '<value>'} ({exc.kind}): {exc.problem}"
    except RecursionError:
        return "nested too deeply to read"
    except (KeyError, TypeError, ValueError):
        return ""
    if reader.pos != len(data):
        return f"{len(data) - reader.pos} trailing byte(s) after the body"
    return ""


__all__ = ["locate_corruption"]
