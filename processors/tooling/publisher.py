"""Validated publishing of domain events: the `Publisher` API behind `choreo publish`.

An invalid event is refused before it reaches Kafka, with its line and field path. By default a
batch is all or nothing: every record is validated and encoded before the first produce, so a file
with one bad line sends nothing and the producer fixes the file and reruns. Keys are
deterministic unless told otherwise, so that rerun (or any retry) cannot act twice downstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from processors.contracts import AvroCodec, Contract, ContractError, ContractRegistry, ContractViolation, Envelope
from processors.contracts.errors import MISSING, Problem
from processors.contracts.validation import describe, kind_of
from processors.kafka_errors import stop_on_access_error
from processors.kafka_types import coordinates, produce_headers
from processors.settings import Settings
from processors.tooling.jsonavro import content_key, from_json
from processors.tooling.jsoninput import JsonRecord
from processors.tooling.kafka_io import (
    ProgressReporter,
    RateLimiter,
    ToolingError,
    reader_config,
    topic_partitions,
)

DEFAULT_SOURCE = "urn:choreo:publish"


@dataclass(frozen=True)
class PreparedEvent:
    """An event ready to produce: validated, encoded, keyed, with its envelope headers."""

    line: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    envelope: Envelope


@dataclass(frozen=True)
class Reject:
    """An input record that was refused, with every reason (`items[2].qty: expected int, got ...`)."""

    line: int
    problems: list[str]
    record: Any

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "problems": self.problems, "record": self.record}

    def __str__(self) -> str:
        return "\n".join(f"line {self.line}: {problem}" for problem in self.problems)


@dataclass(frozen=True)
class Delivery:
    topic: str
    partition: int
    offset: int
    idempotency_key: str


@dataclass
class PublishResult:
    """What happened to a batch. `refused` means nothing was sent because some input was invalid."""

    event_type: str
    topic: str
    total: int = 0
    sent: int = 0
    failed: int = 0
    rejects: list[Reject] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused: bool = False
    dry_run: bool = False

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "topic": self.topic,
            "total": self.total,
            "sent": self.sent,
            "rejected": self.rejected,
            "failed": self.failed,
            "refused": self.refused,
            "dry_run": self.dry_run,
            "rejects": [r.to_json() for r in self.rejects],
            "errors": self.errors,
        }


class Publisher:
    """Publish contract events with envelope headers and confirmed delivery.

    >>> with Publisher(Settings.load()) as pub:
    ...     pub.publish("order.created", {...})                        # one event, waits for the ack
    ...     result = pub.publish_many("order.created", events, rate=200)  # all or nothing
    """

    def __init__(
        self,
        settings: Settings | None = None,
        registry: ContractRegistry | None = None,
        codec: AvroCodec | None = None,
        source: str = DEFAULT_SOURCE,
        **producer_overrides: Any,
    ) -> None:
        self.settings = settings or Settings.load()
        self.registry = registry or ContractRegistry.load(self.settings.contracts_dir, self.settings.schemas_dir)
        self.codec = codec or AvroCodec(self.registry, self.settings.schema_registry_url)
        self.source = source
        self._producer_overrides = producer_overrides
        self._producer: Producer | None = None
        self._checked_topics: set[str] = set()

    # ------------------------------------------------------------------ preparing
    def prepare(
        self,
        event_type: str,
        value: Any,
        line: int = 0,
        idempotency_key: str | None = None,
        idempotency_field: str | None = None,
        correlation_id: str | None = None,
        tenant: str | None = None,
        version: int | None = None,
    ) -> PreparedEvent:
        """Validate and encode one event. Raises `ContractViolation` (every bad field) or
        `ContractError`. ISO-8601 strings are accepted for timestamp fields."""
        contract = self.registry.get(event_type)
        if not isinstance(value, dict):
            raise ContractViolation(event_type, [Problem("", "a JSON object", type(value).__name__)])
        avro_value = from_json(contract.raw_schema(version), value)
        payload = self.codec.encode(event_type, avro_value, version=version)
        key = (
            idempotency_key
            or _key_from_field(event_type, value, idempotency_field)
            or content_key(event_type, avro_value)
        )
        envelope = Envelope.new(
            event_type, self.source, idempotency_key=key, correlation_id=correlation_id, tenant=tenant
        )
        return PreparedEvent(
            line, contract.topic, str(avro_value[contract.key_field]).encode(), payload, envelope.to_headers(), envelope
        )

    def check(
        self, event_type: str, records: Iterable[JsonRecord | dict[str, Any]], **options: Any
    ) -> tuple[list[PreparedEvent], list[Reject]]:
        """Prepare every record, collecting rejects instead of stopping at the first."""
        self.registry.get(event_type)  # an unknown type is a usage error, not one reject per line
        prepared, rejects = [], []
        for index, item in enumerate(records, start=1):
            record = item if isinstance(item, JsonRecord) else JsonRecord(index, value=item)
            if record.error is not None:
                rejects.append(Reject(record.line, [record.error], None))
                continue
            try:
                prepared.append(self.prepare(event_type, record.value, line=record.line, **options))
            except ContractViolation as exc:
                rejects.append(Reject(record.line, [str(p) for p in exc.problems], record.value))
            except ContractError as exc:
                rejects.append(Reject(record.line, [str(exc)], record.value))
        return prepared, rejects

    # ------------------------------------------------------------------ sending
    def publish(self, event_type: str, value: dict[str, Any], timeout: float = 30.0, **options: Any) -> Delivery:
        """Publish one event and wait for the broker's acknowledgement."""
        event = self.prepare(event_type, value, **options)
        self._ensure_topic(self.registry.get(event_type))
        outcome: list[Delivery | KafkaError] = []
        self._send(
            [event], RateLimiter(None), None, lambda ev, err, msg: outcome.append(err if err else _delivery(ev, msg))
        )
        self.producer.flush(timeout)
        if not outcome:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no delivery report within {timeout}s"))
        if isinstance(outcome[0], KafkaError):
            raise KafkaException(outcome[0])
        return outcome[0]

    def publish_many(
        self,
        event_type: str,
        records: Iterable[JsonRecord | dict[str, Any]],
        skip_invalid: bool = False,
        rate: float | None = None,
        dry_run: bool = False,
        progress: bool = False,
        **options: Any,
    ) -> PublishResult:
        """Validate all records, then (unless some are invalid and `skip_invalid` is off) produce the
        valid ones at `rate` per second and wait for every delivery report."""
        contract = self.registry.get(event_type)
        limiter = RateLimiter(rate)
        prepared, rejects = self.check(event_type, records, **options)
        result = PublishResult(
            event_type, contract.topic, total=len(prepared) + len(rejects), rejects=rejects, dry_run=dry_run
        )
        if rejects and not skip_invalid:
            result.refused = True
            return result
        if dry_run or not prepared:
            return result
        self._ensure_topic(contract)

        def report(event: PreparedEvent, err: KafkaError | None, _msg: Message | None) -> None:
            stop_on_access_error(err, topic=contract.topic)
            if err is None:
                result.sent += 1
            else:
                result.failed += 1
                if len(result.errors) < 20:
                    result.errors.append(f"line {event.line}: delivery failed: {err.str()}")

        with ProgressReporter(f"publish {event_type}", len(prepared), progress) as bar:
            self._send(prepared, limiter, bar, report)
            while self.producer.flush(1.0) > 0:  # every message gets a report within message.timeout.ms
                pass
        return result

    def _send(
        self,
        events: list[PreparedEvent],
        limiter: RateLimiter,
        bar: ProgressReporter | None,
        report: Callable[[PreparedEvent, KafkaError | None, Message], None],
    ) -> None:
        producer = self.producer
        for event in events:
            limiter.acquire()
            while True:
                try:
                    producer.produce(
                        event.topic,
                        key=event.key,
                        value=event.value,
                        # confluent-kafka's stub types produce(headers=) as an invariant List of
                        # (str, str | bytes | None), refusing our read-only list of bytes pairs.
                        headers=produce_headers(event.headers),
                        on_delivery=partial(report, event),
                    )
                    break
                except BufferError:
                    producer.poll(0.2)
            producer.poll(0)
            if bar is not None:
                bar.advance()

    def _ensure_topic(self, contract: Contract) -> None:
        """Refuse to publish to a missing topic rather than let broker auto-creation make one with
        the wrong partition count (which would break key placement for good)."""
        if contract.topic in self._checked_topics:
            return
        consumer = Consumer(reader_config(self.settings))
        try:
            topic_partitions(consumer, contract.topic)
        except ToolingError as exc:
            raise ToolingError(
                f"{exc}: create it with {contract.partitions} partitions (contract {contract.event_type})"
            ) from None
        finally:
            consumer.close()
        self._checked_topics.add(contract.topic)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self.settings.producer_config(**self._producer_overrides))
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key_from_field(event_type: str, value: dict[str, Any], path: str | None) -> str | None:
    """The idempotency key taken from a (dotted) field; missing or empty is a violation, because a
    generated key would silently break the producer's deduplication scheme."""
    if path is None:
        return None
    current: Any = value
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            raise ContractViolation(event_type, [Problem(path, "the idempotency key field (--key)", MISSING)])
        current = current[part]
    if current is None or current == "" or isinstance(current, (dict, list)):
        raise ContractViolation(
            event_type, [Problem(path, "a non-empty scalar for the idempotency key (--key)", *_found(current))]
        )
    return str(current)


def _found(value: Any) -> tuple[str, str]:
    """What was in the key field, for the message by type only (bounded, no value), and the value
    aside for ``--show-pii`` output: any field may be personal data."""
    return ("empty string" if value == "" else kind_of(value)), describe(value)


def _delivery(event: PreparedEvent, msg: Message) -> Delivery:
    return Delivery(*coordinates(msg), event.envelope.idempotency_key)
