"""Audit records: one per handled input, written in the same transaction (or flush) as the outputs.

The record follows the ``audit.record`` contract when the registry has it (Avro, like any event);
without it the same fields go out as JSON. State is shown as the fields that changed, before and
after, and every field named PII by a contract the agent touches is replaced by ``***`` — in the
state, in error messages and in log lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import orjson


class Outcome(StrEnum):
    """What became of one input. The values are the audit contract's ``outcome`` symbols (and the
    metrics' label values); ``IGNORED`` inputs get no audit record."""

    PROCESSED = "PROCESSED"
    DUPLICATE = "DUPLICATE"
    DEAD_LETTERED = "DEAD_LETTERED"
    IGNORED = "IGNORED"


PROCESSED = Outcome.PROCESSED
DUPLICATE = Outcome.DUPLICATE
DEAD_LETTERED = Outcome.DEAD_LETTERED
REDACTED = "***"
MAX_STATE_CHARS = 100_000  # the changed fields of the state shown in one audit record, at most


class Redactor:
    """Redacts by field name: a contract PII path ``shipping_address`` or ``items[].card_token``
    makes every key with that leaf name redacted at any depth (erring on the side of hiding)."""

    def __init__(self, pii_paths: Iterable[str]) -> None:
        self.names = frozenset(p.split(".")[-1].removesuffix("[]") for p in pii_paths if p)

    def __bool__(self) -> bool:
        return bool(self.names)

    def redact(self, value: Any) -> Any:
        if not self.names:
            return value
        if isinstance(value, dict):
            return {k: (REDACTED if k in self.names else self.redact(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value

    def touches(self, value: Any) -> bool:
        """Whether :meth:`redact` would replace anything in ``value`` (a PII name as a key of a dict
        at any depth). Cheaper than building the redacted copy, so state that holds no PII field (the
        usual case) is serialised as it is, with the same result."""
        names = self.names
        if not names:
            return False
        if isinstance(value, dict):
            if not names.isdisjoint(value):
                return True
            for v in value.values():  # noqa: SIM110 - a loop: any() over a generator costs more here
                if isinstance(v, (dict, list)) and self.touches(v):
                    return True
            return False
        if isinstance(value, list):
            for v in value:
                if isinstance(v, (dict, list)) and self.touches(v):
                    return True
        return False

    def secrets_in(self, value: Any) -> list[str]:
        """String values of PII fields inside a decoded event (to scrub them from messages)."""
        found: list[str] = []
        if not self.names:
            return found

        def walk(node: Any, pii: bool) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, pii or k in self.names)
            elif isinstance(node, list):
                for v in node:
                    walk(v, pii)
            elif pii and isinstance(node, (str, int, float)) and not isinstance(node, bool):
                text = str(node)
                if len(text) >= 3:
                    found.append(text)

        walk(value, False)
        return found

    def scrub(self, message: str, secrets: Iterable[str]) -> str:
        for secret in sorted(set(secrets), key=len, reverse=True):
            message = message.replace(secret, REDACTED)
        return message


def state_diff(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The top-level fields that changed, as (before, after) dicts; None stands for "no state"
    (key absent before, or deleted after)."""
    if before is None and after is None:
        return None, None
    b = before or {}
    a = after or {}
    changed = [k for k in {**b, **a} if b.get(k, _MISSING) != a.get(k, _MISSING)]
    before_out = None if before is None else {k: b[k] for k in changed if k in b}
    after_out = None if after is None else {k: a[k] for k in changed if k in a}
    return before_out, after_out


_MISSING = object()


def state_json(value: dict[str, Any] | None, redactor: Redactor) -> str | None:
    """The state as sorted-key JSON text with PII redacted (the redacted copy is made only when
    there is something to redact: orjson writes the same text for the original)."""
    if value is None:
        return None
    if redactor.touches(value):
        value = redactor.redact(value)
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > MAX_STATE_CHARS:
        # state grown from what records carried (a handler keeping a 900 KB field): the audit record
        # must still fit the producer, so it says how large the state was instead of showing it
        return orjson.dumps(
            {"truncated": True, "chars": len(text), "fields": [k[:100] for k in sorted(value)[:50]]}
        ).decode()
    return text
