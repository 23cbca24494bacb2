"""Dead letters: the original record, untouched, plus headers that say why, how often, by whom and
where it came from (names in :mod:`processors.runtime.conventions`), so ``choreo dlq`` can show it
and redrive it to its topic as it was."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from processors.runtime import conventions

MAX_MESSAGE_BYTES = 2000


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an input could not be handled."""

    reason: str  # a conventions.DlqReason, or the reason of a Reject
    error_class: str
    message: str
    attempts: int
    first_failure_ms: int
    last_failure_ms: int


def rfc3339_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def dlq_headers(
    original: Sequence[tuple[str, bytes | None]] | None,
    failure: Failure,
    agent: str,
    topic: str,
    partition: int,
    offset: int,
) -> list[tuple[str, bytes | None]]:
    """The original headers in their order, then the DLQ headers (a reader taking the last value of
    a repeated name sees this failure, not an earlier one carried by a redriven record)."""
    message = failure.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
    return list(original or ()) + [
        (conventions.DLQ_REASON, failure.reason.encode()),
        (conventions.DLQ_ERROR_CLASS, failure.error_class.encode()),
        (conventions.DLQ_ERROR_MESSAGE, message),
        (conventions.DLQ_ATTEMPTS, str(failure.attempts).encode()),
        (conventions.DLQ_AGENT, agent.encode()),
        (conventions.DLQ_FIRST_FAILURE, rfc3339_ms(failure.first_failure_ms).encode()),
        (conventions.DLQ_LAST_FAILURE, rfc3339_ms(failure.last_failure_ms).encode()),
        (conventions.DLQ_ORIGINAL_TOPIC, topic.encode()),
        (conventions.DLQ_ORIGINAL_PARTITION, str(partition).encode()),
        (conventions.DLQ_ORIGINAL_OFFSET, str(offset).encode()),
    ]
