"""Dead-letter inspection and redrive, reading the headers the engine writes
(`processors.runtime.conventions`).

A redrive sends the original key, value and headers back to the original topic with
`choreo_redrive_count` incremented and the `choreo_dlq_*` headers stripped. It is safe to repeat:
the event keeps its idempotency key, so an agent that handled it since drops the repeat, and within
one redrive several dead letters of the same event (it failed, was redriven, failed again) are sent
once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer

from processors.kafka_errors import stop_on_access_error
from processors.kafka_types import UNREADABLE_HEADERS, ConsumedRecord, coordinates, produce_headers
from processors.kafka_types import headers as read_headers
from processors.runtime import conventions as conv
from processors.runtime.topics import existing_topics
from processors.settings import Settings
from processors.tooling.kafka_io import (
    MAX_SHOWN_ERROR,
    Headers,
    ProgressReporter,
    RateLimiter,
    ToolingError,
    bounded,
    header_value,
    plan_ranges,
    read_ranges,
    reader_config,
    shown_bytes,
    shown_headers,
    topic_partitions,
)
from processors.tooling.timeparse import format_ms

IDEMPOTENCY_HEADER = "ce_idempotencykey"  # processors.contracts.envelope.CE_IDEMPOTENCYKEY
UNKNOWN = "unknown"


@dataclass(frozen=True)
class DeadLetter:
    """One record of a DLQ topic with its error headers read out."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers

    @classmethod
    def from_message(cls, msg: Message | ConsumedRecord) -> DeadLetter:
        ts_type, ts = msg.timestamp()
        topic, partition, offset = coordinates(msg)
        return cls(topic, partition, offset, ts if ts_type else None, msg.key(), msg.value(), read_headers(msg))

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    @property
    def reason(self) -> str:
        return self.header(conv.DLQ_REASON) or UNKNOWN

    @property
    def error_class(self) -> str:
        return self.header(conv.DLQ_ERROR_CLASS) or UNKNOWN

    @property
    def agent(self) -> str:
        return self.header(conv.DLQ_AGENT) or UNKNOWN

    @property
    def original_topic(self) -> str:
        return self.header(conv.DLQ_ORIGINAL_TOPIC) or conv.original_topic_of(self.topic)

    @property
    def redrive_count(self) -> int:
        text = self.header(conv.REDRIVE_COUNT)
        try:
            return int(text) if text is not None else 0
        except ValueError:
            return 0

    @property
    def idempotency_key(self) -> str | None:
        return self.header(IDEMPOTENCY_HEADER)

    def original_headers(self) -> Headers:
        """The headers the event had before it was dead-lettered (the DLQ ones and our counter removed)."""
        drop = set(conv.DLQ_HEADERS) | {conv.REDRIVE_COUNT}
        return [(k, v) for k, v in self.headers if k not in drop and not k.startswith("choreo_dlq_")]

    def redrive_headers(self) -> Headers:
        return self.original_headers() + [(conv.REDRIVE_COUNT, str(self.redrive_count + 1).encode())]

    def summary(self) -> dict[str, Any]:
        """The error metadata, for tables and JSON."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": format_ms(self.timestamp),
            "key": shown_bytes(self.key)[0],
            "reason": bounded(self.reason),
            "error_class": bounded(self.error_class),
            "agent": bounded(self.agent),
            "error_message": bounded(self.header(conv.DLQ_ERROR_MESSAGE), MAX_SHOWN_ERROR),
            "attempts": bounded(self.header(conv.DLQ_ATTEMPTS)),
            "first_failure": bounded(self.header(conv.DLQ_FIRST_FAILURE)),
            "last_failure": bounded(self.header(conv.DLQ_LAST_FAILURE)),
            "original": {
                "topic": bounded(self.original_topic),
                "partition": bounded(self.header(conv.DLQ_ORIGINAL_PARTITION)),
                "offset": bounded(self.header(conv.DLQ_ORIGINAL_OFFSET)),
            },
            "redrive_count": self.redrive_count,
            "headers": shown_headers(self.headers)[0],
        }


@dataclass
class DlqFilter:
    """Which dead letters to show or redrive; empty sets mean "any". Offsets are DLQ offsets,
    optionally with their partition (`(None, 42)` matches offset 42 of any partition)."""

    reasons: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    error_classes: frozenset[str] = frozenset()
    offsets: frozenset[tuple[int | None, int]] = frozenset()
    partition: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def selects_all(self) -> bool:
        return not (
            self.reasons
            or self.agents
            or self.error_classes
            or self.offsets
            or self.partition is not None
            or self.since_ms is not None
            or self.until_ms is not None
        )

    def matches(self, rec: DeadLetter) -> bool:
        if self.reasons and rec.reason not in self.reasons:
            return False
        if self.agents and rec.agent not in self.agents:
            return False
        if self.error_classes and rec.error_class not in self.error_classes:
            return False
        return not (
            self.offsets and (rec.partition, rec.offset) not in self.offsets and (None, rec.offset) not in self.offsets
        )


def parse_offset(text: str) -> tuple[int | None, int]:
    """`42` or `2:42` (partition:offset)."""
    part, _, off = text.rpartition(":")
    try:
        return (int(part) if part else None, int(off))
    except ValueError:
        raise ToolingError(f"--offset {text!r}: expected OFFSET or PARTITION:OFFSET, e.g. 42 or 2:42") from None


MAX_SHOWN_COUNTS = 20  # distinct reasons (or error classes) listed per topic; the rest are summed


def top_counts(counter: Counter[str]) -> dict[str, int]:
    """The most common keys with their counts, at most MAX_SHOWN_COUNTS of them, then one entry
    summing the others: a DLQ whose records carry thousands of distinct reasons stays one row."""
    ranked = counter.most_common()
    shown = dict(ranked[:MAX_SHOWN_COUNTS])
    if len(ranked) > MAX_SHOWN_COUNTS:
        shown[f"({len(ranked) - MAX_SHOWN_COUNTS} others)"] = sum(n for _, n in ranked[MAX_SHOWN_COUNTS:])
    return shown


@dataclass
class DlqSummary:
    topic: str
    original_topic: str
    total: int
    by_error_class: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    oldest: int | None = None
    newest: int | None = None

    def add(self, rec: DeadLetter) -> None:
        self.total += 1
        # header values anyone may have written: each key bounded, and the keys shown capped
        self.by_error_class[bounded(rec.error_class) or UNKNOWN] += 1
        self.by_reason[bounded(rec.reason) or UNKNOWN] += 1
        if rec.timestamp is not None:
            self.oldest = rec.timestamp if self.oldest is None else min(self.oldest, rec.timestamp)
            self.newest = rec.timestamp if self.newest is None else max(self.newest, rec.timestamp)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "original_topic": self.original_topic,
            "total": self.total,
            "by_error_class": top_counts(self.by_error_class),
            "by_reason": top_counts(self.by_reason),
            "oldest": format_ms(self.oldest),
            "newest": format_ms(self.newest),
        }


@dataclass
class RedriveResult:
    topic: str
    dry_run: bool
    selected: int = 0
    redriven: int = 0
    failed: int = 0
    skipped_duplicates: int = 0
    skipped_max_redrives: int = 0
    errors: list[str] = field(default_factory=list)
    by_destination: Counter[str] = field(default_factory=Counter)
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "dry_run": self.dry_run,
            "selected": self.selected,
            "redriven": self.redriven,
            "failed": self.failed,
            "skipped_duplicates": self.skipped_duplicates,
            "skipped_max_redrives": self.skipped_max_redrives,
            "errors": self.errors,
            "by_destination": dict(self.by_destination),
            "items": self.items,
        }


class DlqInspector:
    """List, show and redrive dead letters with a non-member, non-committing reader."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer = Consumer(reader_config(settings))

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> DlqInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ discovery
    def topics(self) -> list[str]:
        return sorted(t for t in existing_topics(self._consumer) if conv.is_dlq_topic(t))

    def matching(self, patterns: Iterable[str]) -> list[str]:
        """The DLQ topics named by ``patterns``: DLQ topic names or the topics they belong to,
        exact or shell-style (``orders.*``). A pattern that matches nothing is an error, so a typo
        is not read as "no dead letters"."""
        dlqs = self.topics()
        chosen: set[str] = set()
        for pattern in patterns:
            found = [t for t in dlqs if fnmatchcase(t, pattern) or fnmatchcase(t, conv.dlq_topic(pattern))]
            if not found:
                raise ToolingError(f"no DLQ topic matches {bounded(pattern)!r} (DLQ topics: {len(dlqs)})")
            chosen.update(found)
        return sorted(chosen)

    def resolve(self, topic: str) -> str:
        """Accept the DLQ topic or the topic it belongs to (`order.created` means `order.created.dlq`)."""
        names = existing_topics(self._consumer)
        if conv.is_dlq_topic(topic) and topic in names:
            return topic
        if conv.dlq_topic(topic) in names:
            return conv.dlq_topic(topic)
        known = ", ".join(sorted(t for t in names if conv.is_dlq_topic(t))) or "none"
        raise ToolingError(f"no DLQ topic {topic!r} or {conv.dlq_topic(topic)!r} (DLQ topics: {known})")

    # ------------------------------------------------------------------ reading
    def records(
        self, topic: str, filt: DlqFilter | None = None, stop: Callable[[], bool] | None = None
    ) -> Iterator[DeadLetter]:
        """Matching dead letters of one DLQ topic, up to its end at the time of the call."""
        filt = filt or DlqFilter()
        ranges = plan_ranges(self._consumer, topic, filt.partition, since_ms=filt.since_ms, until_ms=filt.until_ms)
        for msg in read_ranges(self._consumer, ranges, stop=stop):
            rec = DeadLetter.from_message(msg)
            if filt.matches(rec):
                yield rec

    def summarize(self, topics: Iterable[str] | None = None) -> list[DlqSummary]:
        """Counts by error class and reason per DLQ topic (each topic is read to its end). All
        topics are read in one pass: one assignment of every partition rather than one read per
        topic, which cost about a second each on a cluster with many DLQ topics."""
        names = sorted(topics if topics is not None else self.topics())
        summaries = {t: DlqSummary(t, conv.original_topic_of(t), 0) for t in names}
        ranges = [r for t in names for r in plan_ranges(self._consumer, t, None)]
        for msg in read_ranges(self._consumer, ranges):
            summaries[msg.topic()].add(DeadLetter.from_message(msg))
        return [summaries[t] for t in names]

    # ------------------------------------------------------------------ redrive
    def select_for_redrive(
        self, topic: str, filt: DlqFilter, max_redrives: int | None
    ) -> tuple[list[DeadLetter], RedriveResult]:
        """The dead letters to send back: one per idempotency key (the latest, which carries the
        highest redrive count), none that has been redriven `max_redrives` times already."""
        result = RedriveResult(topic, dry_run=False)
        latest: dict[str, DeadLetter] = {}
        chosen: list[DeadLetter] = []
        for rec in self.records(topic, filt):
            result.selected += 1
            if max_redrives is not None and rec.redrive_count >= max_redrives:
                result.skipped_max_redrives += 1
                continue
            refusal = _not_redrivable(rec.headers)
            if refusal is not None:
                result.errors.append(f"{rec.topic}[{rec.partition}]@{rec.offset}: {refusal}, not redriven")
                continue
            key = rec.idempotency_key
            if key is None:
                chosen.append(rec)
                continue
            if key in latest:
                result.skipped_duplicates += 1
            latest[key] = rec
        chosen.extend(latest.values())
        chosen.sort(key=lambda r: (r.partition, r.offset))
        return chosen, result

    def redrive(
        self,
        topic: str,
        filt: DlqFilter,
        rate: float | None = None,
        dry_run: bool = False,
        max_redrives: int | None = None,
        progress: bool = True,
        stop: Callable[[], bool] | None = None,
    ) -> RedriveResult:
        """Send the selected dead letters back to their original topics (see the module doc)."""
        chosen, result = self.select_for_redrive(topic, filt, max_redrives)
        result.dry_run = dry_run
        destinations = sorted({rec.original_topic for rec in chosen})
        for dest in destinations:
            topic_partitions(self._consumer, dest)
        result.items = [_item(rec) for rec in chosen]
        if dry_run:
            result.by_destination.update(rec.original_topic for rec in chosen)
            return result
        self._send(chosen, result, RateLimiter(rate), progress, stop or (lambda: False))
        return result

    def _send(
        self,
        chosen: list[DeadLetter],
        result: RedriveResult,
        limiter: RateLimiter,
        progress: bool,
        stop: Callable[[], bool],
    ) -> None:
        producer = Producer(self.settings.producer_config())

        def report(rec: DeadLetter, err: KafkaError | None, _msg: Message) -> None:
            stop_on_access_error(err, topic=rec.original_topic)
            if err is None:
                result.redriven += 1
                result.by_destination[rec.original_topic] += 1
            else:
                result.failed += 1
                result.errors.append(f"{rec.topic}[{rec.partition}]@{rec.offset} -> {rec.original_topic}: {err.str()}")

        with ProgressReporter(f"redrive {result.topic}", len(chosen), progress) as bar:
            for rec in chosen:
                if stop():
                    break
                limiter.acquire()
                while True:
                    try:
                        producer.produce(
                            rec.original_topic,
                            key=rec.key,
                            value=rec.value,
                            # confluent-kafka's stub types produce(headers=) as an invariant List of
                            # (str, str | bytes | None), refusing our read-only list of bytes pairs.
                            headers=produce_headers(rec.redrive_headers()),
                            on_delivery=partial(report, rec),
                        )
                        break
                    except BufferError:
                        producer.poll(0.2)
                producer.poll(0)
                bar.advance()
            while producer.flush(1.0) > 0:  # every message gets a report within message.timeout.ms
                pass


def _item(rec: DeadLetter) -> dict[str, Any]:
    return {
        "partition": rec.partition,
        "offset": rec.offset,
        "to": rec.original_topic,
        "reason": bounded(rec.reason),
        "idempotency_key": bounded(rec.idempotency_key),
        "redrive_count": rec.redrive_count + 1,
    }


def _not_redrivable(headers: Headers) -> str | None:
    """Why a dead letter's copy is not the original event (None when it is): sending it back would
    handle something other than what was sent — a copy without the headers the client could not
    read, or one the engine cut to fit the producer's size limit."""
    names = {name for name, _ in headers}
    if UNREADABLE_HEADERS in names:
        return "headers unreadable by the Kafka client"
    if conv.DLQ_TRUNCATED in names:
        return f"a truncated copy ({conv.DLQ_TRUNCATED}): the original no longer exists whole"
    return None
