"""Dead letters: the original record plus headers that say why, how often, by whom and where it came
from (names in :mod:`processors.runtime.conventions`), so ``choreo dlq`` can show it and redrive it
to its topic as it was.

A dead letter must be writable whatever the record was: a 1.01 MB value the broker accepted on a
topic with a larger limit, a 260 KB header, a huge key. :func:`dead_letter` keeps the original
untouched when the copy fits the producer's record limit, and otherwise cuts it down (oversized
header values first, then the value, then the key) and says so in ``choreo_dlq_truncated``, beside
the original coordinates, which always point at the record as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from processors.runtime import conventions

MAX_MESSAGE_BYTES = 2000
# librdkafka's default ``message.max.bytes``: what a producer accepts unless configured otherwise.
DEFAULT_MAX_RECORD_BYTES = 1_000_000
# Room kept free for the record's framing (varints, attributes, batch header share), so an
# estimate near the limit is never refused by the client's own, slightly different, count.
RECORD_OVERHEAD_BYTES = 1024
HEADER_OVERHEAD_BYTES = 12
MAX_HEADER_COPY_BYTES = 1024  # an original header value longer than this is cut first when a copy does not fit
MAX_HEADER_NAME_CHARS = 256
MAX_KEY_COPY_BYTES = 1024

Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an input could not be handled."""

    reason: str  # a conventions.DlqReason, or the reason of a Reject
    error_class: str
    message: str
    attempts: int
    first_failure_ms: int
    last_failure_ms: int


class DeadLetter(NamedTuple):
    """What goes to the DLQ topic: key, value and headers, within the record limit."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]


def max_record_bytes(kafka: Mapping[str, Any]) -> int:
    """The largest record the producer takes: ``message.max.bytes`` of the pass-through Kafka
    properties, or librdkafka's default."""
    try:
        return max(int(kafka.get("message.max.bytes", DEFAULT_MAX_RECORD_BYTES)), 4 * RECORD_OVERHEAD_BYTES)
    except (TypeError, ValueError):
        return DEFAULT_MAX_RECORD_BYTES


def rfc3339_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def dlq_headers(
    original: Sequence[Header] | None,
    failure: Failure,
    agent: str,
    topic: str,
    partition: int,
    offset: int,
) -> list[Header]:
    """The original headers in their order, then the DLQ headers (a reader taking the last value of
    a repeated name sees this failure, not an earlier one carried by a redriven record)."""
    return list(original or ()) + failure_headers(failure, agent, topic, partition, offset)


def failure_headers(failure: Failure, agent: str, topic: str, partition: int, offset: int) -> list[Header]:
    """The DLQ headers of one failure (bounded: the message is cut to :data:`MAX_MESSAGE_BYTES`)."""
    message = failure.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
    return [
        (conventions.DLQ_REASON, failure.reason.encode("utf-8", "replace")[:200]),
        (conventions.DLQ_ERROR_CLASS, failure.error_class.encode("utf-8", "replace")[:200]),
        (conventions.DLQ_ERROR_MESSAGE, message),
        (conventions.DLQ_ATTEMPTS, str(failure.attempts).encode()),
        (conventions.DLQ_AGENT, agent.encode()),
        (conventions.DLQ_FIRST_FAILURE, rfc3339_ms(failure.first_failure_ms).encode()),
        (conventions.DLQ_LAST_FAILURE, rfc3339_ms(failure.last_failure_ms).encode()),
        (conventions.DLQ_ORIGINAL_TOPIC, topic.encode()),
        (conventions.DLQ_ORIGINAL_PARTITION, str(partition).encode()),
        (conventions.DLQ_ORIGINAL_OFFSET, str(offset).encode()),
    ]


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    original: Sequence[Header] | None,
    failure: Failure,
    agent: str,
    coordinates: tuple[str, int, int],
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> DeadLetter:
    """The dead letter of one input: the original as it was when it fits ``max_record_bytes``,
    else cut down to fit, with ``choreo_dlq_truncated`` saying what was cut from what size."""
    topic, partition, offset = coordinates
    extra = failure_headers(failure, agent, topic, partition, offset)
    headers = list(original or ())
    budget = max_record_bytes - RECORD_OVERHEAD_BYTES
    if _size(key) + _size(value) + _headers_size(headers) + _headers_size(extra) <= budget:
        return DeadLetter(key, value, headers + extra)
    cuts: list[str] = []
    headers = _cut_headers(headers, cuts)
    if key is not None and len(key) > MAX_KEY_COPY_BYTES:
        cuts.append(f"key {len(key)} -> {MAX_KEY_COPY_BYTES} bytes")
        key = key[:MAX_KEY_COPY_BYTES]
    note_room = 400  # the truncation header itself
    rest = budget - _size(key) - _headers_size(headers) - _headers_size(extra) - note_room
    while rest < 0 and headers:  # thousands of small headers: drop from the end
        dropped = headers.pop()
        rest += _header_size(dropped)
        if not cuts or not cuts[-1].startswith("dropped"):
            cuts.append("dropped header(s) from the end")
    if value is not None and len(value) > max(rest, 0):
        cuts.append(f"value {len(value)} -> {max(rest, 0)} bytes")
        value = value[: max(rest, 0)]
    note = "; ".join(cuts).encode()[: note_room - 50]
    return DeadLetter(key, value, headers + extra + [(conventions.DLQ_TRUNCATED, note)])


def _cut_headers(headers: list[Header], cuts: list[str]) -> list[Header]:
    out: list[Header] = []
    cut = 0
    for name, raw in headers:
        if len(name) > MAX_HEADER_NAME_CHARS:
            name = name[:MAX_HEADER_NAME_CHARS]
            cut += 1
        if raw is not None and len(raw) > MAX_HEADER_COPY_BYTES:
            raw = raw[:MAX_HEADER_COPY_BYTES]
            cut += 1
        out.append((name, raw))
    if cut:
        cuts.append(f"{cut} header name(s) or value(s) cut to {MAX_HEADER_COPY_BYTES} bytes")
    return out


def _size(data: bytes | None) -> int:
    return 0 if data is None else len(data)


def _header_size(header: Header) -> int:
    name, raw = header
    return len(name.encode("utf-8", "replace")) + _size(raw) + HEADER_OVERHEAD_BYTES


def _headers_size(headers: Sequence[Header]) -> int:
    return sum(_header_size(h) for h in headers)
