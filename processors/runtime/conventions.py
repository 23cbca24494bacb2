"""Topic and header names shared by the engine and the operator tooling (DLQ, replay, tail).

Kept in one place so a dead-lettered record written by a worker is read the same way by
`choreo dlq` and redriven without guessing.
"""

from __future__ import annotations

from enum import StrEnum

AUDIT_TOPIC = "choreo.audit"
DLQ_SUFFIX = ".dlq"

# Headers the engine adds to a dead-lettered record; the original key, value and headers are
# kept untouched beside them.
# DLQ_REASON: a short machine code, one of DlqReason (undecodable, contract_violation, ...) or the
# reason of an agent's Reject (invalid_transition, ...).
DLQ_REASON = "choreo_dlq_reason"
DLQ_ERROR_CLASS = "choreo_dlq_error_class"
DLQ_ERROR_MESSAGE = "choreo_dlq_error_message"
DLQ_ATTEMPTS = "choreo_dlq_attempts"
DLQ_AGENT = "choreo_dlq_agent"
DLQ_FIRST_FAILURE = "choreo_dlq_first_failure"  # RFC 3339, UTC, milliseconds
DLQ_LAST_FAILURE = "choreo_dlq_last_failure"
DLQ_ORIGINAL_TOPIC = "choreo_dlq_original_topic"
DLQ_ORIGINAL_PARTITION = "choreo_dlq_original_partition"
DLQ_ORIGINAL_OFFSET = "choreo_dlq_original_offset"
# Present only on a dead letter whose original did not fit the producer's record limit: what was
# cut, from what size (the original coordinates still point at the record as it was).
DLQ_TRUNCATED = "choreo_dlq_truncated"
DLQ_HEADERS = (
    DLQ_REASON,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ATTEMPTS,
    DLQ_AGENT,
    DLQ_FIRST_FAILURE,
    DLQ_LAST_FAILURE,
    DLQ_ORIGINAL_TOPIC,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_OFFSET,
    DLQ_TRUNCATED,
)

# Set by `choreo dlq redrive`: how many times this record has been sent back to its topic.
REDRIVE_COUNT = "choreo_redrive_count"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of an input topic: `<input topic>.dlq`."""
    return topic + DLQ_SUFFIX


def is_dlq_topic(topic: str) -> bool:
    return topic.endswith(DLQ_SUFFIX)


def original_topic_of(dlq: str) -> str:
    return dlq[: -len(DLQ_SUFFIX)] if is_dlq_topic(dlq) else dlq


def changelog_topic(app_id: str, agent: str, store: str) -> str:
    """Compacted changelog of one agent's state store; partition N backs the store of input
    partition N, so state moves with partitions."""
    return f"{app_id}.{agent}.{store}.changelog"


class DlqReason(StrEnum):
    """Reason codes the engine writes in DLQ_REASON (an agent adds its own with ``Reject(reason, ...)``)."""

    UNDECODABLE = "undecodable"  # bytes the codec cannot read (unknown framing, corrupt body, tombstone)
    CONTRACT_VIOLATION = "contract_violation"  # a type that has no business on this topic
    MISSING_HEADER = "missing_header"  # a required CloudEvents header missing or malformed
    HANDLER_ERROR = "handler_error"  # the handler raised a non-transient exception
    RETRIES_EXHAUSTED = "retries_exhausted"  # transient failures past the retry budget
    LOOP = "loop"  # hop count past the agent's bound
    INVALID_OUTPUT = "invalid_output"  # the handler emitted an undeclared type or a value its contract refuses
    INVALID_STATE = "invalid_state"  # the handler left state that is not JSON-serialisable
    TIMER_ERROR = "timer_error"  # a timer handler failed (dead-lettered to `<app>.<agent>.timers.dlq`)
    OUTPUT_REFUSED = "output_refused"  # the broker refused what handling the input wrote (too large, ...)
    # key or partition not where Kafka's default partitioner (murmur2 of the contract's key) puts it
    MISROUTED = "misrouted"
    UNEXPECTED = "unexpected_error"  # the engine failed on this input in a way no other reason names


ENGINE_REASONS = tuple(DlqReason)
