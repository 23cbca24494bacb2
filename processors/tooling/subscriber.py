"""Reading outcome topics as decoded events: the `Subscriber` API behind `choreo tail`.

Every record comes out, decoded or not: an undecodable payload, a tombstone or broken envelope
headers are reported on the event (`error`, `envelope_error`) instead of being dropped, because a
consumer that silently skips what it cannot read hides exactly the records someone must look at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors.contracts import AvroCodec, ContractError, ContractRegistry, Envelope
from processors.kafka_types import ConsumedRecord, coordinates, record
from processors.kafka_types import headers as read_headers
from processors.runtime.audit import Redactor
from processors.settings import Settings
from processors.tooling.jsonavro import to_json_bytes
from processors.tooling.kafka_io import (
    MAX_SHOWN_ERROR,
    Headers,
    PartitionRange,
    ToolingError,
    bounded,
    headers_dict,
    offsets_for_time,
    read_ranges,
    reader_config,
    shown_bytes,
    shown_headers,
    topic_partitions,
    watermarks,
)
from processors.tooling.timeparse import format_ms

_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")
_NOT_DECODED = object()


@dataclass(frozen=True)
class ReceivedEvent:
    """One record of a topic, decoded by its contract when possible."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    headers: Headers
    event_type: str | None = None
    value: dict[str, Any] | None = None
    envelope: Envelope | None = None
    error: str | None = None
    envelope_error: str | None = None

    @property
    def decoded(self) -> bool:
        return self.error is None

    def header_dict(self) -> dict[str, str | None]:
        """Every header in full (for filters); output uses :meth:`shown_headers`."""
        return headers_dict(self.headers)

    def shown_headers(self) -> tuple[dict[str, str | None], bool]:
        """Headers for output, bounded, and whether anything was cut."""
        return shown_headers(self.headers)

    def to_json(self, redactor: Redactor | None = None) -> dict[str, Any]:
        """The NDJSON form of `choreo tail --format json`; `choreo replay --file` reads it back."""
        redacting = redactor is not None and bool(redactor) and self.value is not None
        value = redactor.redact(self.value) if redacting else self.value  # type: ignore[union-attr]
        headers, headers_cut = self.shown_headers()
        key, key_cut = shown_bytes(self.key)
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": format_ms(self.timestamp),
            "key": key,
            "event_type": self.event_type,
            "headers": headers,
            "value": value,
        }
        if self.error is not None:
            out["error"] = bounded(self.error, MAX_SHOWN_ERROR)
        if self.envelope_error is not None:
            out["envelope_error"] = bounded(self.envelope_error, MAX_SHOWN_ERROR)
        if redacting:
            out["redacted"] = True  # so `replay --file` refuses to backfill "***" as data
        if headers_cut or key_cut:
            out["truncated"] = True  # headers or key cut for output: not a faithful copy either
        return out


@dataclass(frozen=True)
class FieldFilter:
    """`FIELD=VALUE`: FIELD is a value path (`customer_id`, `items[0].sku`, `shipping_address.city`),
    `headers.NAME`, `@key` or `@type`. Values compare as their JSON text, so `qty=3` and
    `flag=true` work."""

    path: str
    expected: str

    @classmethod
    def parse(cls, text: str) -> FieldFilter:
        path, sep, expected = text.partition("=")
        if not sep or not path.strip():
            raise ToolingError(
                f"--filter {text!r}: expected FIELD=VALUE, e.g. customer_id=c-42 or headers.ce_tenant=acme"
            )
        return cls(path.strip(), expected)

    def needs_value(self) -> bool:
        return not (self.path.startswith("headers.") or self.path in ("@key", "@type"))

    def matches(self, event: ReceivedEvent) -> bool | None:
        """True/False, or None when the event could not be decoded and the filter needs its value."""
        if self.path.startswith("headers."):
            return event.header_dict().get(self.path[len("headers.") :]) == self.expected
        if self.path == "@key":
            return event.key is not None and event.key.decode("utf-8", "backslashreplace") == self.expected
        if self.path == "@type":
            return event.event_type == self.expected
        if not event.decoded:
            return None
        found = _resolve(event.value, self.path)
        return found is not _NOT_DECODED and _as_text(found) == self.expected


def _resolve(value: Any, path: str) -> Any:
    current = value
    for part in path.split("."):
        index = None
        match = _INDEX.match(part)
        if match:
            part, index = match.group(1), int(match.group(2))
        if part:
            if not isinstance(current, dict) or part not in current:
                return _NOT_DECODED
            current = current[part]
        if index is not None:
            if not isinstance(current, list) or index >= len(current):
                return _NOT_DECODED
            current = current[index]
    return current


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return to_json_bytes(value).decode().strip('"')


def matches_all(event: ReceivedEvent, filters: Iterable[FieldFilter]) -> bool:
    """An event passes when no filter says no; undecodable events pass value filters, so they are
    shown (as undecodable) rather than filtered out unseen."""
    return all(f.matches(event) is not False for f in filters)


class Subscriber:
    """Iterate decoded events of one or more topics.

    Start: `from_beginning`, `since_ms` (first record at or after), `last` (the last N records of
    each partition), else the end (new events only). Without `follow` the iteration ends at the end
    of each partition as it was when it started; with `follow` it waits for new events until
    `stop()` says so or the iterator is closed.

    As a reader it assigns partitions and never commits. With `group_id` it is a group member
    instead (`subscribe`, at-least-once: an event's offset is committed once the caller asks for
    the next one, so the event it broke out on comes again), and the start options only apply to a
    group without committed offsets."""

    def __init__(
        self,
        topics: list[str],
        settings: Settings | None = None,
        registry: ContractRegistry | None = None,
        codec: AvroCodec | None = None,
        from_beginning: bool = False,
        since_ms: int | None = None,
        last: int | None = None,
        follow: bool = False,
        filters: Iterable[FieldFilter] = (),
        group_id: str | None = None,
        stop: Callable[[], bool] | None = None,
        poll_timeout: float = 0.5,
    ) -> None:
        if sum((from_beginning, since_ms is not None, last is not None)) > 1:
            raise ToolingError("give one of --from-beginning, --since or --last")
        if group_id is not None and (since_ms is not None or last is not None):
            raise ToolingError("since/last need a reader; a group member resumes from its committed offsets")
        self.topics = list(topics)
        self.settings = settings or Settings.load()
        self.registry = registry or ContractRegistry.load(self.settings.contracts_dir, self.settings.schemas_dir)
        self.codec = codec or AvroCodec(self.registry, self.settings.schema_registry_url)
        self.from_beginning, self.since_ms, self.last = from_beginning, since_ms, last
        self.follow = follow
        self.filters = list(filters)
        self.group_id = group_id
        self._stop = stop or (lambda: False)
        self._poll_timeout = poll_timeout
        overrides: dict[str, Any] = {"enable.partition.eof": not follow}
        if group_id is not None:
            overrides.update(
                {
                    "group.id": group_id,
                    "enable.auto.commit": True,
                    "enable.partition.eof": False,
                    "auto.offset.reset": "earliest" if from_beginning else "latest",
                }
            )
        self._consumer = Consumer(reader_config(self.settings, **overrides))

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[ReceivedEvent]:
        for msg in self._messages():
            event = self.decode(msg)
            if matches_all(event, self.filters):
                yield event

    def _messages(self) -> Iterator[ConsumedRecord]:
        if self.group_id is not None:
            yield from self._group_messages()
            return
        ranges = self._plan()
        if not self.follow:
            yield from read_ranges(self._consumer, ranges, stop=self._stop, poll_timeout=self._poll_timeout)
            return
        self._consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
        while not self._stop():
            msg = self._consumer.poll(self._poll_timeout)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                _raise_unless_transient(msg, err)
                continue
            yield record(msg)

    def _group_messages(self) -> Iterator[ConsumedRecord]:
        self._consumer.subscribe(self.topics)
        while not self._stop():
            msg = self._consumer.poll(self._poll_timeout)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                _raise_unless_transient(msg, err)
                continue
            yield record(msg)
            # Resumed: the caller asked for the next event, so it is done with this one. A caller
            # that breaks out instead never gets here, and the event is delivered again.
            self._consumer.store_offsets(msg)

    def _plan(self) -> list[PartitionRange]:
        ranges = []
        counter = Consumer(reader_config(self.settings)) if self.last else None  # with end-of-partition events
        try:
            for topic in self.topics:
                ranges += self._plan_topic(topic, counter)
        finally:
            if counter is not None:
                counter.close()
        return ranges

    def _plan_topic(self, topic: str, counter: Consumer | None) -> list[PartitionRange]:
        ranges = []
        parts = topic_partitions(self._consumer, topic)
        since = offsets_for_time(self._consumer, topic, parts, self.since_ms) if self.since_ms is not None else {}
        for p in parts:
            low, high = watermarks(self._consumer, topic, p)
            if self.from_beginning:
                start = low
            elif self.since_ms is not None:
                at = since[p]
                start = high if at is None else at
            elif self.last is not None:  # --last 0 (no counter) starts at the end
                start = self._start_of_last(counter, topic, p, low, high) if counter is not None else high
            else:
                start = high
            ranges.append(PartitionRange(topic, p, start, high))
        return ranges

    def _start_of_last(self, counter: Consumer, topic: str, partition: int, low: int, high: int) -> int:
        """The offset of the N-th record from the end. Offsets are not records: transaction
        markers, aborted and compacted records take offsets too, so the last N offsets may hold
        fewer than N records (none, after one transaction). Read back in widening windows until
        N records are found or the beginning is reached."""
        wanted = self.last or 0
        window = 2 * wanted
        while True:
            start = max(low, high - window)
            ranges = [PartitionRange(topic, partition, start, high)]
            offsets = [coordinates(m)[2] for m in read_ranges(counter, ranges, stop=self._stop)]
            if len(offsets) >= wanted:
                return offsets[-wanted]
            if start == low:
                return low
            window *= 4

    # ------------------------------------------------------------------ decoding
    def decode(self, msg: Message | ConsumedRecord) -> ReceivedEvent:
        """Decode one record; failures become fields of the event, never exceptions."""
        ts_type, ts = msg.timestamp()
        topic, partition, offset = coordinates(msg)
        headers = read_headers(msg)
        envelope, envelope_error = None, None
        try:
            envelope = Envelope.from_headers(headers)
        except ContractError as exc:
            envelope_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a reader of foreign records reports what it cannot read
            envelope_error = f"unreadable envelope headers: {type(exc).__name__}"
        base: dict[str, Any] = dict(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=ts if ts_type else None,
            key=msg.key(),
            headers=headers,
            envelope=envelope,
            envelope_error=envelope_error,
        )
        data = msg.value()
        if data is None:
            return ReceivedEvent(**base, error="tombstone: null value")
        try:
            event_type, value = self.codec.decode_any(data)
        except ContractError as exc:
            return ReceivedEvent(**base, error=f"undecodable ({len(data)} bytes): {exc}")
        except Exception as exc:  # noqa: BLE001 - same: whatever the bytes make the decoder raise
            return ReceivedEvent(**base, error=f"undecodable ({len(data)} bytes): {type(exc).__name__}")
        return ReceivedEvent(**base, event_type=event_type, value=value)

    def redactor_for(self, event: ReceivedEvent) -> Redactor:
        """The PII redactor of the event's contract (by name, at any depth, as in audit records)."""
        if event.event_type is None:
            return Redactor(())
        try:
            return Redactor(self.registry.get(event.event_type).pii_fields)
        except ContractError:
            return Redactor(())

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_unless_transient(msg: Message, err: KafkaError) -> None:
    if err.code() == KafkaError._PARTITION_EOF:
        return
    if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
        raise ToolingError(f"reading {msg.topic()}[{msg.partition()}]: {err.str()}")
    if not err.retriable():
        raise KafkaException(err)
