"""Typed errors of the contracts layer.

Every error here is about *input* (a contract file, a value, bytes, headers), never a bug in the
engine, so the engine can catch :class:`ContractError` and dead-letter the event with the message,
which always names the file, field path or header at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from processors.errors import ChoreoError


class ContractError(ChoreoError):
    """A contract file, schema or event does not honour its contract."""


MISSING = "missing"
UNKNOWN_FIELD = "unknown field"


def snippet(text: str | bytes, limit: int = 60) -> str:
    """A bounded rendering of something read from input (a header value, a key), for a message:
    its repr cut to ``limit`` characters, with the full length said when it was cut. Whatever a
    record carries, a message quoting it stays short."""
    shown = repr(text)
    if len(shown) <= limit:
        return shown
    unit = "bytes" if isinstance(text, bytes) else "characters"
    return f"{shown[:limit]}… ({len(text)} {unit})"


@dataclass(frozen=True)
class Problem:
    """One reason a value does not fit its schema, located by a field path like ``items[2].qty``.

    ``found`` says what was there by its type only (``string``, ``long``), or :data:`MISSING` for
    a required field that is absent, or :data:`UNKNOWN_FIELD` for a key the record does not declare
    (fastavro would silently drop it, losing data the producer meant to send). The value itself is
    in ``shown`` and never in the message: a field may be personal data (a card number where a
    token belongs), and messages go to logs, dead letters and terminals. Tools that were asked to
    show personal data (``--show-pii``) render :meth:`with_value`.
    """

    path: str
    expected: str
    found: str
    shown: str = ""

    def __str__(self) -> str:
        label = self.path or "<value>"
        if self.found == MISSING:
            return f"{label}: required field missing"
        if self.found == UNKNOWN_FIELD:
            return f"{label}: unknown field, not in {self.expected}"
        return f"{label}: expected {self.expected}, got {self.found}"

    def with_value(self) -> str:
        """The message with the offending value rendered (only for ``--show-pii`` output)."""
        if not self.shown or self.found in (MISSING, UNKNOWN_FIELD):
            return str(self)
        return f"{self.path or '<value>'}: expected {self.expected}, got {self.shown}"


class ContractViolation(ContractError):
    """A value was refused before produce; ``problems`` lists every mismatch, not just the first.
    The message names field paths and types, never values (see :class:`Problem`)."""

    def __init__(self, subject: str, problems: list[Problem]) -> None:
        self.subject = subject  # what was validated, e.g. "order.created v2"
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{subject}: value does not match its schema ({len(problems)} problem(s)):\n{lines}")

    def with_values(self) -> str:
        """The message with each offending value shown (only for ``--show-pii`` output)."""
        lines = "\n".join(f"  {p.with_value()}" for p in self.problems)
        return f"{self.subject}: value does not match its schema ({len(self.problems)} problem(s)):\n{lines}"


class DecodeError(ContractError):
    """Bytes that cannot be decoded: unknown framing, unknown schema, or a truncated body."""


class EnvelopeError(ContractError):
    """A required CloudEvents header is missing or malformed; ``header`` names it."""

    def __init__(self, header: str, message: str) -> None:
        self.header = header
        super().__init__(f"header {header}: {message}")
