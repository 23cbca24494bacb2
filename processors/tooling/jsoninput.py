"""Reading events from JSON people and exports write: one JSON array, NDJSON, or JSON values
one after another (pretty-printed objects as `jq` emits them), with the line where each starts.

Line numbers matter because an operator fixes an input file by line; so this walks the text with
`raw_decode` instead of loading it in one go, and a line that is not JSON is reported by number
while the rest is still read (so one run reports every broken line, not just the first).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class JsonRecord:
    """A record of the input: `value` when it parsed, else `error`; `line` is 1-based."""

    line: int
    value: Any = None
    error: str | None = None


def read_json_records(text: str) -> Iterator[JsonRecord]:
    """Yield every record of the text, in order (the elements of a top-level array are records)."""
    lines = _LineIndex(text)
    pos = _skip(text, 0)
    if pos < len(text) and text[pos] == "[":
        yield from _array(text, pos, lines)
        return
    while pos < len(text):
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield JsonRecord(lines.line(pos), error=f"not valid JSON: {exc.msg} (column {lines.column(exc.pos)})")
            pos = _skip(text, _next_line(text, pos))
            continue
        yield JsonRecord(lines.line(pos), value=value)
        pos = _skip(text, end)


def _array(text: str, pos: int, lines: _LineIndex) -> Iterator[JsonRecord]:
    start_line = lines.line(pos)
    pos = _skip(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while pos < len(text):
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield JsonRecord(
                lines.line(exc.pos),
                error=f"not valid JSON: {exc.msg} (column {lines.column(exc.pos)}); the rest of the array is not read",
            )
            return
        yield JsonRecord(lines.line(pos), value=value)
        pos = _skip(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            trailing = _skip(text, pos + 1)
            if trailing < len(text):
                yield JsonRecord(lines.line(trailing), error="unexpected content after the closing ] of the array")
            return
        break
    yield JsonRecord(
        lines.line(min(pos, max(0, len(text) - 1))), error=f"array opened on line {start_line} is not closed with ]"
    )


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _next_line(text: str, pos: int) -> int:
    newline = text.find("\n", pos)
    return len(text) if newline < 0 else newline + 1


class _LineIndex:
    """Offsets of line starts, for position -> line/column by bisection."""

    def __init__(self, text: str) -> None:
        self.starts = [0]
        index = text.find("\n")
        while index >= 0:
            self.starts.append(index + 1)
            index = text.find("\n", index + 1)

    def line(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def column(self, pos: int) -> int:
        return pos - self.starts[self.line(pos) - 1] + 1
