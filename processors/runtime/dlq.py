"""Dead letters: the original record, untouched, plus headers that say why, how often, by whom and
where it came from (names in :mod:`processors.runtime.conventions`), so ``choreo dlq`` can show it
and redrive it to its topic as it was."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from processors.runtime import conventions as C

# Reasons (the value of the DLQ_REASON header), defined with the other shared names.
UNDECODABLE = C.REASON_UNDECODABLE
CONTRACT_VIOLATION = C.REASON_CONTRACT_VIOLATION
MISSING_HEADER = C.REASON_MISSING_HEADER
HANDLER_ERROR = C.REASON_HANDLER_ERROR
RETRIES_EXHAUSTED = C.REASON_RETRIES_EXHAUSTED
LOOP = C.REASON_LOOP
INVALID_OUTPUT = C.REASON_INVALID_OUTPUT
INVALID_STATE = C.REASON_INVALID_STATE
TIMER_ERROR = C.REASON_TIMER_ERROR

MAX_MESSAGE_BYTES = 2000


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an input could not be handled."""

    reason: str
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
        (C.DLQ_REASON, failure.reason.encode()),
        (C.DLQ_ERROR_CLASS, failure.error_class.encode()),
        (C.DLQ_ERROR_MESSAGE, message),
        (C.DLQ_ATTEMPTS, str(failure.attempts).encode()),
        (C.DLQ_AGENT, agent.encode()),
        (C.DLQ_FIRST_FAILURE, rfc3339_ms(failure.first_failure_ms).encode()),
        (C.DLQ_LAST_FAILURE, rfc3339_ms(failure.last_failure_ms).encode()),
        (C.DLQ_ORIGINAL_TOPIC, topic.encode()),
        (C.DLQ_ORIGINAL_PARTITION, str(partition).encode()),
        (C.DLQ_ORIGINAL_OFFSET, str(offset).encode()),
    ]
