"""Kafka plumbing shared by the tooling commands: bounded reads, offset planning, topic checks,
header conversion, rate limiting and progress.

The tools read with `assign()` and never commit: an operator inspecting a DLQ or replaying a topic
must not move any consumer group's offsets or show up as a member of one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.kafka_errors import KafkaFailure, is_access_error
from processors.kafka_types import ConsumedRecord, Headers, record
from processors.runtime.topics import watermarks
from processors.settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

METADATA_TIMEOUT = 15.0


class ToolingError(Exception):
    """An operator-facing error (unknown topic, bad range, unreadable input); the CLI prints it and
    exits 2. The message names the topic, partition, offset, line or field at fault."""


# ---------------------------------------------------------------------------------- consumers
def reader_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A consumer that reads like an operator, not like a member: it assigns partitions and never
    commits, under the one group id the tools use (``tools_group_id``, so a secured cluster's ACL
    can name it), committed data only, and end-of-partition events so bounded reads know when to stop."""
    base = {
        "group.id": settings.tools_group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }
    return settings.kafka_config(**{**base, **overrides})


def topic_partitions(consumer: Consumer, topic: str, timeout: float = METADATA_TIMEOUT) -> list[int]:
    """Partition ids of an existing topic; a missing topic is a ToolingError, never auto-created."""
    metadata = consumer.list_topics(topic, timeout=timeout)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error.str() if info is not None and info.error is not None else "not found"
        raise ToolingError(f"topic {topic!r} does not exist ({reason})")
    return sorted(info.partitions)


def offsets_for_time(consumer: Consumer, topic: str, partitions: list[int], epoch_ms: int) -> dict[int, int | None]:
    """The first offset at or after `epoch_ms` per partition, None where no record is that recent."""
    wanted = [TopicPartition(topic, p, epoch_ms) for p in partitions]
    found = consumer.offsets_for_times(wanted, timeout=METADATA_TIMEOUT)
    out: dict[int, int | None] = {}
    for tp in found:
        if tp.error is not None:
            raise ToolingError(f"{topic}[{tp.partition}]: offset lookup by time failed: {tp.error}")
        out[tp.partition] = tp.offset if tp.offset >= 0 else None
    return out


# ---------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class PartitionRange:
    """Offsets `[start, end)` of one partition; empty when start >= end."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


def plan_ranges(
    consumer: Consumer,
    topic: str,
    partition: int | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
) -> list[PartitionRange]:
    """Turn the operator's bounds into fixed offset ranges, snapshotting the end at the current high
    watermark so a bounded read terminates even while producers keep writing.

    `from_offset` and `to_offset` are inclusive (as an operator reads "offsets 100 to 200") and are
    partition-specific, so they need `partition` on a multi-partition topic."""
    parts = topic_partitions(consumer, topic)
    if partition is not None:
        if partition not in parts:
            raise ToolingError(f"topic {topic!r} has no partition {partition} (partitions 0..{len(parts) - 1})")
        parts = [partition]
    if (from_offset is not None or to_offset is not None) and len(parts) > 1:
        raise ToolingError(
            f"--from-offset/--to-offset are per partition: topic {topic!r} has {len(parts)}, pick one with --partition"
        )
    if from_offset is not None and since_ms is not None:
        raise ToolingError("give either --since or --from-offset, not both")
    if to_offset is not None and until_ms is not None:
        raise ToolingError("give either --until or --to-offset, not both")
    since = offsets_for_time(consumer, topic, parts, since_ms) if since_ms is not None else {}
    until = offsets_for_time(consumer, topic, parts, until_ms) if until_ms is not None else {}
    ranges = []
    for p in parts:
        low, high = watermarks(consumer, topic, p)
        start = low
        if from_offset is not None:
            start = from_offset
        elif since_ms is not None:
            since_offset = since[p]
            start = high if since_offset is None else since_offset
        end = high
        until_offset = until.get(p)
        if to_offset is not None:
            end = to_offset + 1
        elif until_ms is not None and until_offset is not None:
            end = until_offset
        start = min(max(start, low), high)
        end = min(max(end, start), high)
        ranges.append(PartitionRange(topic, p, start, end))
    return ranges


def read_ranges(
    consumer: Consumer,
    ranges: Iterable[PartitionRange],
    stop: Callable[[], bool] | None = None,
    poll_timeout: float = 0.5,
) -> Iterator[ConsumedRecord]:
    """Yield the records of the ranges (in order within each partition) and return once every
    range is exhausted. Offsets may have gaps (transaction markers, compaction), so a partition
    also ends at its first offset >= end or at end-of-partition."""
    pending = {(r.topic, r.partition): r for r in ranges if r.size > 0}
    if not pending:
        return
    assigned = [TopicPartition(r.topic, r.partition, r.start) for r in pending.values()]
    consumer.assign(assigned)
    # A partition an earlier read of this consumer finished is still paused (librdkafka keeps the
    # pause across unassign/assign): it would deliver nothing, not even end-of-partition, forever.
    consumer.resume(assigned)
    try:
        while pending:
            if stop is not None and stop():
                return
            polled = consumer.poll(poll_timeout)
            if polled is None:
                continue
            msg = record(polled)  # an end-of-partition event has coordinates too
            coords = (msg.topic(), msg.partition())
            if msg.error() is not None:
                _handle_read_error(msg, pending, consumer)
                continue
            current = pending.get(coords)
            if current is None:
                continue
            if msg.offset() >= current.end:
                _finish(consumer, pending, coords)
                continue
            yield msg
            if msg.offset() >= current.end - 1:
                _finish(consumer, pending, coords)
    finally:
        consumer.unassign()


def _finish(consumer: Consumer, pending: dict[tuple[str, int], PartitionRange], coords: tuple[str, int]) -> None:
    pending.pop(coords, None)
    consumer.pause([TopicPartition(coords[0], coords[1])])


def _handle_read_error(msg: ConsumedRecord, pending: dict[tuple[str, int], PartitionRange], consumer: Consumer) -> None:
    err = msg.error()
    if err is None:
        return
    if err.code() == KafkaError._PARTITION_EOF:
        _finish(consumer, pending, (msg.topic(), msg.partition()))
        return
    if is_access_error(err):
        raise KafkaFailure(err, topic=msg.topic(), action=f"read partition {msg.partition()}")
    if err.fatal() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise ToolingError(f"reading {msg.topic()}[{msg.partition()}]: {err.str()}")
    if not err.retriable():
        raise KafkaException(err)


# ---------------------------------------------------------------------------------- headers
def header_text(value: bytes | None) -> str | None:
    """Header values as text for people and JSON; bytes that are not UTF-8 are escaped, not lost."""
    if value is None:
        return None
    return value.decode("utf-8", errors="backslashreplace")


# What the tools print of a record's headers and key: anything read from a record is bounded, so
# a 500 KB header or ten thousand of them cannot flood a terminal or a log.
MAX_SHOWN_CHARS = 256
MAX_SHOWN_HEADERS = 64
MAX_SHOWN_ERROR = 1024  # an error names a field path and types; a longer one is cut


def bounded(text: str | None, limit: int = MAX_SHOWN_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars, {limit} shown)"


def shown_bytes(data: bytes | None) -> tuple[str | None, bool]:
    """Bytes read from a record (a key, a header value) as bounded text, and whether it was cut;
    bytes that are not UTF-8 are escaped, never an error."""
    if data is None:
        return None, False
    head = data[:MAX_SHOWN_CHARS].decode("utf-8", "backslashreplace")
    if len(data) <= MAX_SHOWN_CHARS:
        return head, False
    return f"{head}... ({len(data)} bytes, {MAX_SHOWN_CHARS} shown)", True


def shown_headers(headers: Headers | None) -> tuple[dict[str, str | None], bool]:
    """Headers for output, and whether anything was cut: at most :data:`MAX_SHOWN_HEADERS`
    headers, names and values of at most :data:`MAX_SHOWN_CHARS` characters or bytes."""
    out: dict[str, str | None] = {}
    items = list(headers or [])
    cut = False
    for index, (name, value) in enumerate(items):
        if index >= MAX_SHOWN_HEADERS:
            out["..."] = f"{len(items) - index} more header(s) not shown"
            return out, True
        text, value_cut = shown_bytes(value)
        shown_name = bounded(name) or ""
        cut = cut or value_cut or shown_name != name
        out[shown_name] = text
    return out, cut


def headers_dict(headers: Headers | None) -> dict[str, str | None]:
    """Headers for display and filtering; a repeated header keeps its last value (Kafka allows
    repeats, our conventions never use them)."""
    return {name: header_text(value) for name, value in (headers or [])}


def header_value(headers: Headers | None, name: str) -> str | None:
    for key, value in reversed(headers or []):
        if key == name:
            return header_text(value)
    return None


def encode_headers(headers: dict[str, Any] | list[Any] | None) -> Headers:
    """Headers from JSON (an object, or a list of [name, value] pairs) into produce form."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    out: Headers = []
    for name, value in items:
        out.append((str(name), None if value is None else str(value).encode("utf-8")))
    return out


# ---------------------------------------------------------------------------------- throttling
class RateLimiter:
    """Token bucket in records per second. The bucket holds at most one second of tokens, so a
    paused run does not burst afterwards, yet a batch of `n` never waits on single tokens."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ToolingError(f"--rate must be positive, got {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._capacity = max(1.0, rate or 1.0)
        self._tokens = self._capacity
        self._last = clock()

    def acquire(self, n: int = 1) -> float:
        """Block until `n` records may go; return the seconds slept."""
        if self.rate is None:
            return 0.0
        slept = 0.0
        need = float(n)
        while True:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            take = min(need, self._tokens)
            self._tokens -= take
            need -= take
            if need <= 1e-9:
                return slept
            wait = min(need, self._capacity) / self.rate
            self._sleep(wait)
            slept += wait


# ---------------------------------------------------------------------------------- progress
class ProgressReporter:
    """A rich progress bar (count, rate, ETA) when stderr is a terminal; otherwise a plain line
    every `interval` seconds, so logs of long unattended runs still show life without escape codes."""

    def __init__(self, description: str, total: int | None, enabled: bool = True, interval: float = 10.0) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self.enabled = enabled
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = self._started
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> ProgressReporter:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if self.enabled and now - self._last_line >= self._interval:
            self._last_line = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        """`replay: 1200/5000 (24%), 240/s, ETA 16s` — the non-terminal progress line."""
        elapsed = max(1e-6, (now or time.monotonic()) - self._started)
        speed = self.done / elapsed
        text = f"{self.description}: {self.done}"
        if self.total:
            text += f"/{self.total} ({100 * self.done // max(1, self.total)}%)"
        text += f", {speed:.0f}/s"
        if self.total and speed > 0:
            text += f", ETA {max(0, self.total - self.done) / speed:.0f}s"
        return text
