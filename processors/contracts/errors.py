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


@dataclass(frozen=True)
class Problem:
    """One reason a value does not fit its schema, located by a field path like ``items[2].qty``.

    ``found`` is a short rendering of the offending value (``string "3"``), or :data:`MISSING` for a
    required field that is absent, or :data:`UNKNOWN_FIELD` for a key the record does not declare
    (fastavro would silently drop it, losing data the producer meant to send).
    """

    path: str
    expected: str
    found: str

    def __str__(self) -> str:
        label = self.path or "<value>"
        if self.found == MISSING:
            return f"{label}: required field missing"
        if self.found == UNKNOWN_FIELD:
            return f"{label}: unknown field, not in {self.expected}"
        return f"{label}: expected {self.expected}, got {self.found}"


class ContractViolation(ContractError):
    """A value was refused before produce; ``problems`` lists every mismatch, not just the first."""

    def __init__(self, subject: str, problems: list[Problem]) -> None:
        self.subject = subject  # what was validated, e.g. "order.created v2"
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{subject}: value does not match its schema ({len(problems)} problem(s)):\n{lines}")


class DecodeError(ContractError):
    """Bytes that cannot be decoded: unknown framing, unknown schema, or a truncated body."""


class EnvelopeError(ContractError):
    """A required CloudEvents header is missing or malformed; ``header`` names it."""

    def __init__(self, header: str, message: str) -> None:
        self.header = header
        super().__init__(f"header {header}: {message}")
