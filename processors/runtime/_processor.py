"""Handling one input (or one due timer) of one agent, independent of Kafka.

:meth:`Processor.handle` turns a consumed record into a :class:`HandleResult`: the records to
produce (follow-ups, dead letter, audit) and the store writes, staged in a batch view. The worker
feeds it Kafka messages and makes the result durable; the test driver feeds it events directly.
Every failure of the input (bytes, headers, key, partition, contract, handler) becomes a dead
letter here. :meth:`Processor.handle` is the per-record guard: whatever goes wrong anywhere on the
path of one record, including in the engine's own code on input it did not foresee, ends as a dead
letter (reason ``unexpected_error`` when nothing more precise applies), so no record can stop an
agent. Everything taken from a record into a message, header or audit field is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from processors.contracts import ContractError, DecodeError, Envelope, EnvelopeError, ids
from processors.contracts.codec import SINGLE_OBJECT_MAGIC
from processors.contracts.codegen import compile_writer
from processors.contracts.slotted import slot_builder
from processors.kafka_types import ConsumedRecord, unreadable
from processors.kafka_types import headers as read_headers
from processors.partitioner import partition_for
from processors.runtime import audit, dlq
from processors.runtime._aio import LoopThread
from processors.runtime.agent import AgentSpec, Routing
from processors.runtime.app import App
from processors.runtime.context import AgentServices, Context
from processors.runtime.conventions import REDRIVE_COUNT, DlqReason, dlq_topic
from processors.runtime.dependencies import TRANSIENT_CALL_ERRORS, Dependencies
from processors.runtime.emitter import Emitted, Emitter
from processors.runtime.errors import EmitError, InvalidStateError, LoopError, TimerError
from processors.runtime.inputs import Event, Timer
from processors.runtime.metrics import AgentMetrics
from processors.runtime.reject import Reject
from processors.runtime.retry import CircuitBreaker
from processors.runtime.state import keys
from processors.runtime.state.store import StateView

log = logging.getLogger("choreo.runtime")

MAX_FAILURE_MESSAGE_CHARS = 1000  # an error message in a dead letter, an audit record, a log line
MAX_FALLBACK_FIELD_CHARS = 200  # a raw header value shown for a record whose envelope is unreadable
MAX_TRACEBACK_CHARS = 4000  # the stack of an unexpected failure in a log line (never its message)

IGNORED = audit.Outcome.IGNORED
_SAMPLE_ENV = Envelope.new("x.y", "/sample", correlation_id="c-1")
_SAMPLE_ENV_NO_CORR = Envelope(id="i", type="x.y", source="/s", time=_SAMPLE_ENV.time, idempotency_key="i")
_H_SPECVERSION = ("ce_specversion", b"1.0")
_H_HOPCOUNT_0 = ("ce_hopcount", b"0")
# Event is frozen: built once per input with every field given, so without its __init__.
_event = slot_builder(Event)
_SEEN = keys.SEEN
_unpack_u64 = keys.unpack_u64
_pack_u64 = keys.pack_u64


# Headers of a consumed record (a list from Kafka; any sequence from a test), and of one to produce.
InputHeaders = Sequence[tuple[str, bytes | None]] | None
RecordHeaders = list[tuple[str, bytes]] | list[tuple[str, bytes | None]]


class RecordKind(StrEnum):
    """Where an :class:`OutRecord` goes (the values are what the worker and tests compare)."""

    OUTPUT = "output"
    DLQ = "dlq"
    AUDIT = "audit"


@dataclass(slots=True)
class OutRecord:
    """One record to produce."""

    kind: RecordKind
    topic: str
    key: bytes | None
    value: bytes | None
    headers: RecordHeaders
    event_type: str | None = None
    partition: int | None = None


@dataclass(slots=True)
class HandleResult:
    outcome: audit.Outcome
    event_type: str | None
    records: list[OutRecord] = field(default_factory=list)
    emitted: list[Emitted] = field(default_factory=list)
    failure: dlq.Failure | None = None
    audit: dict[str, Any] | None = None
    key: bytes | None = None

    @property
    def reason(self) -> str | None:
        return self.failure.reason if self.failure else None


@dataclass(slots=True)
class Admitted:
    """An input that passed every check needing no state (headers, type, hop count, contract,
    routing): what its handler runs with once the earlier inputs of its key are done."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: InputHeaders
    timestamp_ms: int
    received: int
    envelope: Envelope
    event_type: str
    decoded: dict[str, Any]
    state_key: bytes  # the key its state lives under: the record's key, else its contract's key field
    seen_at: bytes  # its seen key (keys.seen_key of its idempotency key)


# What running a handler came to: its context (success), the failure that dead-letters the input,
# or an exception the engine did not foresee (an unexpected_error dead letter).
Outcome = Context | dlq.Failure | Exception


class _Dead(Exception):
    def __init__(self, failure: dlq.Failure) -> None:
        self.failure = failure


def _now_ms() -> int:
    return int(time.time() * 1000)


class Processor:
    """Handles inputs of one agent. One per agent per worker (per driver in tests)."""

    def __init__(
        self,
        app: App,
        spec: AgentSpec,
        worker_id: str,
        metrics: AgentMetrics | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[float, float], float] = random.uniform,
        breaker_clock: Callable[[], float] | None = None,
        max_record_bytes: int = dlq.DEFAULT_MAX_RECORD_BYTES,
        dependency_limits: Mapping[str, Mapping[str, str]] | None = None,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``dependency_limits``: the settings' ``dependencies`` (the worker passes the settings it
        was started with, so ``--config`` is honoured); None reads them from the environment.
        ``async_sleep``: the backoff of an ``async def`` handler (default: ``asyncio.sleep``, or
        ``sleep`` itself when another one is given, as a test driver's clock does)."""
        self.app = app
        self.spec = spec
        self.worker_id = worker_id
        self.registry = app.registry
        self.codec = app.codec
        self.metrics = metrics
        self.clock_ms = clock_ms
        self.sleep = sleep
        self.monotonic = monotonic
        self.rng = rng
        self.async_sleep = async_sleep or (asyncio.sleep if sleep is time.sleep else _awaitable(sleep))
        self.is_async = inspect.iscoroutinefunction(spec.handler)
        self.loop = LoopThread(f"agent-{spec.name}-io")  # where async handlers run (started on first use)
        self.source = f"/choreo/{app.app_id}/{spec.name}"
        self.produces = frozenset(spec.produces)
        self.consumes = frozenset(spec.consumes)
        self.max_hops = spec.max_hops if spec.max_hops is not None else app.max_hops
        ttl = spec.dedupe_ttl_s if spec.dedupe_ttl_s is not None else app.dedupe_ttl_s
        self.dedupe_ttl_ms = int(ttl * 1000)
        self.transient = tuple(spec.transient) + TRANSIENT_CALL_ERRORS
        self.breakers = self._breakers(breaker_clock or monotonic)
        # Topics whose contracts this agent reads: an event of a type it does not consume on one of
        # them is ignored, anything else is a contract violation.
        self.topic_types: dict[str, frozenset[str]] = {}
        for et in spec.consumes:
            c = self.registry.get(et)
            self.topic_types[c.topic] = frozenset(x.event_type for x in self.registry.for_topic(c.topic))
        pii = [p for et in (*spec.consumes, *spec.produces) for p in self.registry.get(et).pii_fields]
        self.redactor = audit.Redactor(pii)
        self.timer_dlq_topic = dlq_topic(app.timers_topic_name(spec.name))
        self.max_record_bytes = max_record_bytes
        # How each consumed type is keyed, and how many partitions each input topic has (the
        # contract's count until the worker tells the real one): where a record belongs.
        self.routing = spec.routing
        by_contract = spec.routing == Routing.CONTRACT
        self.key_fields = {et: self.registry.get(et).key_field for et in spec.consumes} if by_contract else {}
        self.partitions: dict[str, int] = {}
        for et in spec.consumes:
            c = self.registry.get(et)
            self.partitions[c.topic] = c.partitions
        # What every context of this agent is given, built once.
        self.services = AgentServices(
            spec.name,
            spec.on_timer is not None,
            Emitter.for_agent(spec.name, self.source, self.codec, self.registry, spec.produces),
            Dependencies(spec.name, self.breakers, dependency_limits),
        )
        self._init_audit()

    def close(self) -> None:
        """Stop the loop of ``async def`` handlers (the session that ran them ended)."""
        self.loop.close()

    def _breakers(self, clock: Callable[[], float]) -> dict[str, CircuitBreaker]:
        """One breaker per declared dependency, its state changes published as a metric."""
        metrics = self.metrics
        breakers: dict[str, CircuitBreaker] = {}
        for name, policy in self.spec.dependencies.items():
            on_change = None
            if metrics is not None:
                on_change = (lambda dep: lambda old, new: metrics.circuit_state(dep, new))(name)
            breakers[name] = CircuitBreaker(name, policy, clock=clock, on_state_change=on_change)
            if metrics is not None:
                metrics.circuit_state(name, "closed")
        return breakers

    def _init_audit(self) -> None:
        """The audit record's encoder and the constant parts of its CloudEvents headers."""
        app = self.app
        self.audit_type = app.audit_event_type
        self.audit_topic = app.audit_topic
        self.audit_avro = app.audit_event_type in set(self.registry.event_types())
        self._audit_encode = self._audit_encoder()
        self._audit_ct = b"application/avro" if self.audit_avro else b"application/json"
        self._time_cache: tuple[int, bytes] = (-1, b"")
        # Audit ids: ids.audit_id(agent, input key, outcome), the constant head precomputed.
        self._audit_id_prefix = ids.audit_id_prefix(self.spec.name)
        self._h_audit_type = ("ce_type", self.audit_type.encode())
        self._h_audit_source = ("ce_source", self.source.encode())
        self._h_audit_ct = ("content-type", self._audit_ct)

    # ---------------------------------------------------------------- keys
    def derive_key(self, cause_key: str, event_type: str, ordinal: int) -> str:
        """Idempotency key of the ``ordinal``-th ``event_type`` event this agent emits for a cause,
        the same on every replay (what ``ctx.emit`` gives when the handler passes none)."""
        return ids.emit_key(cause_key, self.spec.name, event_type, ordinal)

    def use_partition_counts(self, counts: Mapping[str, int]) -> None:
        """The real partition counts of the input topics (the worker reads them from the cluster;
        a topic may have been created with more partitions than its contract says)."""
        for topic in self.partitions:
            if counts.get(topic):
                self.partitions[topic] = counts[topic]

    # ---------------------------------------------------------------- inputs
    def handle_message(self, view: StateView, message: ConsumedRecord) -> HandleResult:
        """Handle one consumed record (its error already checked): everything read from it is read
        here, headers through :func:`processors.kafka_types.headers`, which never raises."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        try:
            key, value, timestamp_ms = message.key(), message.value(), message.timestamp()[1]
        except Exception as exc:  # noqa: BLE001 - the client could not give what a producer wrote
            return self._unexpected(exc, topic, partition, offset, None, None, None, self.clock_ms())
        return self.handle(view, topic, partition, offset, key, value, read_headers(message), timestamp_ms)

    def handle(
        self,
        view: StateView,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        timestamp_ms: int = 0,
    ) -> HandleResult:
        """The per-record guard: the result of one input, whatever its bytes, headers or size."""
        received = self.clock_ms()
        try:
            return self._handle(view, topic, partition, offset, key, value, headers, timestamp_ms, received)
        except Exception as exc:  # noqa: BLE001 - no record may stop the agent: it is dead-lettered
            return self._unexpected(exc, topic, partition, offset, key, value, headers, received)

    def _handle(
        self,
        view: StateView,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        timestamp_ms: int,
        received: int,
    ) -> HandleResult:
        admitted = self._admit(topic, partition, offset, key, value, headers, timestamp_ms, received)
        if isinstance(admitted, HandleResult):
            return admitted
        event = self.start(view, admitted)
        if isinstance(event, HandleResult):
            return event
        return self.finish(view, admitted, self.invoke(view, admitted, event, observe=True))

    # The phases of one input, which the key-ordered executor (:mod:`processors.runtime._concurrency`)
    # runs apart: admit (no state: headers, type, hops, contract, routing), start (the dedupe check,
    # against the state as the key's earlier inputs left it), invoke (the handler, with retries; the
    # one phase that may run off the agent's thread) and finish (its records and store writes).
    def admit(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        timestamp_ms: int = 0,
    ) -> Admitted | HandleResult:
        """An input ready for its handler, or its final result (ignored or dead-lettered) when a
        check that needs no state already decides it. Never raises."""
        received = self.clock_ms()
        try:
            return self._admit(topic, partition, offset, key, value, headers, timestamp_ms, received)
        except Exception as exc:  # noqa: BLE001 - no record may stop the agent: it is dead-lettered
            return self._unexpected(exc, topic, partition, offset, key, value, headers, received)

    def admit_message(self, message: ConsumedRecord) -> Admitted | HandleResult:
        """:meth:`admit` of a consumed record (its error already checked)."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        try:
            key, value, timestamp_ms = message.key(), message.value(), message.timestamp()[1]
        except Exception as exc:  # noqa: BLE001 - the client could not give what a producer wrote
            return self._unexpected(exc, topic, partition, offset, None, None, None, self.clock_ms())
        return self.admit(topic, partition, offset, key, value, read_headers(message), timestamp_ms)

    def _admit(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        timestamp_ms: int,
        received: int,
    ) -> Admitted | HandleResult:
        envelope: Envelope | None = None
        event_type: str | None = None
        try:
            if unreadable(headers):
                raise _Dead(self._failure(DlqReason.MISSING_HEADER, EnvelopeError("*", _UNREADABLE), 1, received))
            try:
                envelope = Envelope.from_headers(headers)
            except EnvelopeError as exc:
                raise _Dead(self._failure(DlqReason.MISSING_HEADER, exc, 1, received)) from None
            event_type = envelope.type
            types_here = self.topic_types.get(topic, ())
            if event_type not in self.consumes or event_type not in types_here:
                if event_type in types_here:
                    return HandleResult(IGNORED, event_type)
                raise self._not_consumed(event_type, topic, received)
            if envelope.hop_count > self.max_hops:
                raise self._looping(envelope, received)
            decoded = self._decode(event_type, value, received)
            misrouted = self._misrouted(event_type, topic, partition, key, decoded)
            if misrouted is not None:
                raise _Dead(self._failure(DlqReason.MISROUTED, MisroutedError(misrouted), 1, received))
        except _Dead as dead:
            return self._dead(
                dead.failure, envelope, event_type, topic, partition, offset, key, value, headers, received
            )
        if key is None:
            key_value = decoded.get(self.registry.get(event_type).key_field)
            state_key = b"" if key_value is None else str(key_value).encode()
        else:
            state_key = key
        seen_at = _SEEN + envelope.idempotency_key.encode("utf-8")  # keys.seen_key
        return Admitted(
            topic, partition, offset, key, value, headers, timestamp_ms, received, envelope, event_type, decoded,
            state_key, seen_at,
        )  # fmt: skip

    def start(self, view: StateView, admitted: Admitted) -> Event | HandleResult:
        """The event the handler is given, or the input's result when it is a duplicate (its seen
        key is in the store and not expired, and it is not a redrive past its dead letter)."""
        a = admitted
        try:
            raw_seen = view.get(a.seen_at)
            if raw_seen is not None and _unpack_u64(raw_seen) > a.received and not _redriven_past(raw_seen, a.headers):
                return self._duplicate(a.envelope, a.event_type, a.topic, a.partition, a.offset, a.received, a.key)
            return _event(
                a.event_type,
                a.state_key.decode("utf-8", "backslashreplace"),
                a.decoded,
                a.envelope,
                a.topic,
                a.partition,
                a.offset,
                a.timestamp_ms,
            )
        except Exception as exc:  # noqa: BLE001 - no record may stop the agent: it is dead-lettered
            return self._unexpected(exc, a.topic, a.partition, a.offset, a.key, a.value, a.headers, a.received)

    def invoke(self, view: StateView, admitted: Admitted, event: Event, observe: bool = False) -> Outcome:
        """Run the handler (retrying transient failures): its context, the failure that dead-letters
        the input, or the unforeseen exception. Safe on any thread; ``observe`` records the
        handler's latency in the agent's metrics, which only the agent's own thread may do."""
        a = admitted
        handler = self.spec.handler
        try:
            return self._run(
                lambda c: handler(event, c), view, a.state_key, a.envelope, event, None, a.partition, a.received,
                a.decoded, observe,
            )  # fmt: skip
        except _Dead as dead:
            return dead.failure
        except Exception as exc:  # noqa: BLE001 - judged by finish: an unexpected error of this input
            return exc

    async def invoke_async(self, view: StateView, admitted: Admitted, event: Event) -> Outcome:
        """:meth:`invoke` of an ``async def`` handler, on the agent's event loop."""
        a = admitted
        handler = self.spec.handler
        try:
            return await self._run_async(
                lambda c: handler(event, c), view, a.state_key, a.envelope, event, a.partition, a.received, a.decoded
            )
        except _Dead as dead:
            return dead.failure
        except Exception as exc:  # noqa: BLE001 - judged by finish: an unexpected error of this input
            return exc

    def finish(self, view: StateView, admitted: Admitted, outcome: Outcome) -> HandleResult:
        """The input's result from its handler's outcome, its store writes staged in ``view``."""
        a = admitted
        try:
            if isinstance(outcome, Context):
                mark = (a.seen_at, _pack_u64(a.received + self.dedupe_ttl_ms))
                return self._success(
                    outcome, view, a.state_key, a.envelope, a.event_type, a.topic, a.partition, a.offset, a.received,
                    a.key, mark,
                )  # fmt: skip
            if isinstance(outcome, dlq.Failure):
                # Decided on (refused, or the handler failed): a replay or a re-send of the same
                # input must not be judged again against newer state; a redrive may.
                expiry = a.received + self.dedupe_ttl_ms
                view.put(a.seen_at, keys.dead_lettered_seen_value(expiry, _redrive_count(a.headers)))
                return self._dead(
                    outcome, a.envelope, a.event_type, a.topic, a.partition, a.offset, a.key, a.value, a.headers,
                    a.received,
                )  # fmt: skip
            raise outcome
        except Exception as exc:  # noqa: BLE001 - no record may stop the agent: it is dead-lettered
            return self._unexpected(exc, a.topic, a.partition, a.offset, a.key, a.value, a.headers, a.received)

    def refuse(
        self,
        view: StateView,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        reason: str,
        message: str,
    ) -> HandleResult:
        """Dead-letter an input without handling it again: the worker found that its outputs cannot
        be written (``output_refused``). Its seen key records the decision, as for any dead letter."""
        received = self.clock_ms()
        try:
            envelope: Envelope | None = None if unreadable(headers) else Envelope.from_headers(headers)
        except Exception:  # noqa: BLE001 - the record was read once already; its verdict stands
            envelope = None
        if envelope is not None:
            expiry = received + self.dedupe_ttl_ms
            seen = _SEEN + envelope.idempotency_key.encode("utf-8")
            view.put(seen, keys.dead_lettered_seen_value(expiry, _redrive_count(headers)))
        failure = dlq.Failure(reason, "OutputRefused", message, 1, received, received)
        event_type = envelope.type if envelope is not None else None
        return self._dead(failure, envelope, event_type, topic, partition, offset, key, value, headers, received)

    def _not_consumed(self, event_type: str, topic: str, received: int) -> _Dead:
        """A type with no business here: not one the agent reads on this topic, or one it reads
        whose contract puts it on another topic (its bytes would be judged by the wrong contract)."""
        if event_type in self.consumes:
            home = self.registry.get(event_type).topic
            message = f"event type {event_type!r} belongs on topic {home!r}, not on {topic!r}"
        else:
            message = f"event type {event_type!r} is not a type agent {self.spec.name!r} reads on topic {topic!r}"
        return _Dead(self._failure(DlqReason.CONTRACT_VIOLATION, ContractError(message), 1, received))

    def _misrouted(
        self, event_type: str, topic: str, partition: int, key: bytes | None, decoded: dict[str, Any]
    ) -> str | None:
        """Why a record is not where its key puts it, or None. Every agent keeps state and seen
        keys per partition, so a record of key K must be on murmur2(K) % partitions (where Java,
        Go, .NET clients and our producers put it) and keyed by its contract's key field; on any
        other partition its state and its duplicates are another partition's, and it would be
        handled against nothing. Messages name the field, never a value."""
        if self.routing == Routing.ANY:
            return None
        field = self.key_fields.get(event_type)
        wanted = None if field is None else decoded.get(field)
        routing_key, what = key, "its key"
        if wanted is not None:
            by_field = str(wanted).encode()
            if key is None:  # a null key: it belongs where its key field's value does
                routing_key, what = by_field, f"its {field} (the record has no key)"
            elif key != by_field:
                try:
                    key.decode("utf-8")
                except UnicodeDecodeError:
                    return f"the record's key ({len(key)} bytes) is not UTF-8 text; {event_type} is keyed by {field}"
                return f"the record's key is not the value of its key field {field}"
        count = self.partitions.get(topic)
        if routing_key is None or not count or partition >= count:
            return None  # no key to judge by, or a partition past the known count (the topic grew)
        home = partition_for(routing_key, count)
        if home == partition:
            return None
        return (
            f"on partition {partition} of {count}, but Kafka's default partitioner (murmur2) puts {what} on "
            f"partition {home}: produced by a client with another partitioner (e.g. librdkafka's "
            "consistent_random) or to an explicit partition"
        )

    def _unexpected(
        self,
        exc: BaseException,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        received: int,
    ) -> HandleResult:
        """The dead letter of an input the engine failed on in a way nothing else names: the full
        dead letter (audit record and all) when it can be built, else the bare copy."""
        log.error(
            "unexpected error on an input, dead-lettering it",
            extra={
                "agent": self.spec.name,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "error_class": type(exc).__name__,
                # where it failed, without the message (it may quote the record: any size, any data)
                "traceback": _stack(exc),
            },
        )
        failure = self._failure(DlqReason.UNEXPECTED, exc, 1, received)
        safe_headers = _safe_headers(headers)
        try:
            return self._dead(failure, None, None, topic, partition, offset, key, value, safe_headers, received)
        except Exception:  # noqa: BLE001 - the last resort: the copy alone, from nothing but bounded parts
            log.error(
                "could not build the audit record of a dead letter",
                extra={"agent": self.spec.name, "traceback": _stack()},
            )
            letter = dlq.dead_letter(
                key, value, None, failure, self.spec.name, (topic, partition, offset), self.max_record_bytes
            )
            result = HandleResult(audit.DEAD_LETTERED, None, failure=failure, key=key)
            result.records.append(OutRecord(RecordKind.DLQ, dlq_topic(topic), *letter))
            return result

    def _looping(self, envelope: Envelope, received: int) -> _Dead:
        message = (
            f"hop count {envelope.hop_count} is past the bound {self.max_hops} of agent {self.spec.name!r}: "
            "the event chain loops"
        )
        return _Dead(self._failure(DlqReason.LOOP, LoopError(message), 1, received))

    def _decode(self, event_type: str, value: bytes | None, received: int) -> dict[str, Any]:
        """The input's value by its contract; any failure is the input's (a dead letter)."""
        if value is None:
            raise _Dead(
                self._failure(DlqReason.UNDECODABLE, DecodeError("record has no value (tombstone)"), 1, received)
            )
        try:
            return self.codec.decode(event_type, value)
        except DecodeError as exc:
            raise _Dead(self._failure(DlqReason.UNDECODABLE, exc, 1, received)) from None
        except ContractError as exc:
            raise _Dead(self._failure(DlqReason.CONTRACT_VIOLATION, exc, 1, received)) from None
        except Exception as exc:  # noqa: BLE001 - a codec bug on odd bytes must not kill the worker
            raise _Dead(self._failure(DlqReason.UNDECODABLE, exc, 1, received)) from None

    def _duplicate(
        self,
        envelope: Envelope,
        event_type: str,
        topic: str,
        partition: int,
        offset: int,
        received: int,
        key: bytes | None,
    ) -> HandleResult:
        result = HandleResult(audit.DUPLICATE, event_type, key=key)
        result.audit = self._audit_record(
            envelope, event_type, topic, partition, offset, audit.DUPLICATE, None, None, [], received, None, key
        )
        result.records.append(self._audit_out(result.audit, envelope, key))
        return result

    # ---------------------------------------------------------------- timers
    def fire_timer(self, view: StateView, timer_store_key: bytes, partition: int) -> HandleResult | None:
        """Fire one due timer (the caller found it in the store's due index). Deletes it first: it
        fires once. Returns None when the batch already cancelled or moved it."""
        now = self.clock_ms()
        raw = view.get(timer_store_key)
        if raw is None or keys.unpack_u64(raw) > now:
            return None
        view.put(timer_store_key, None)
        try:
            return self._fire_timer(view, timer_store_key, raw, partition, now)
        except Exception as exc:  # noqa: BLE001 - the timer's guard: a stored payload no one foresaw
            log.error(
                "unexpected error firing a timer, dead-lettering it",
                extra={
                    "agent": self.spec.name,
                    "partition": partition,
                    "error_class": type(exc).__name__,
                    "traceback": _stack(exc),
                },
            )
            failure = self._failure(DlqReason.TIMER_ERROR, exc, 1, now)
            letter = dlq.dead_letter(
                timer_store_key,
                raw,
                None,
                failure,
                self.spec.name,
                (f"timer:{partition}", partition, -1),
                self.max_record_bytes,
            )
            result = HandleResult(audit.DEAD_LETTERED, None, failure=failure, key=timer_store_key)
            result.records.append(OutRecord(RecordKind.DLQ, self.timer_dlq_topic, *letter))
            return result

    def _fire_timer(
        self, view: StateView, timer_store_key: bytes, raw: bytes, partition: int, now: int
    ) -> HandleResult:
        due = keys.unpack_u64(raw)
        record = orjson.loads(raw[8:])
        state_key, name = keys.split_timer_suffix(timer_store_key[2:])
        timer, envelope = self._timer_input(state_key, name, due, record)
        # The timer's own follow-ups are one hop further, like any follow-up.
        topic = f"timer:{name}"
        on_timer = self.spec.on_timer
        assert on_timer is not None
        try:
            ctx = self._run(lambda c: on_timer(timer, c), view, state_key, envelope, None, timer, partition, now, None)
        except _Dead as dead:
            value = orjson.dumps({"timer": name, "key": timer.key, "due_ms": due, **record})
            failure = dead.failure
            if failure.reason == DlqReason.HANDLER_ERROR:
                failure = replace(failure, reason=DlqReason.TIMER_ERROR)
            return self._dead(
                failure,
                envelope,
                envelope.type,
                topic,
                partition,
                -1,
                state_key,
                value,
                envelope.to_headers(),
                now,
                dlq_to=self.timer_dlq_topic,
            )
        return self._success(ctx, view, state_key, envelope, envelope.type, topic, partition, -1, now, state_key, None)

    def _timer_input(self, state_key: bytes, name: str, due: int, record: dict[str, Any]) -> tuple[Timer, Envelope]:
        """The fired timer as its handler sees it, and the envelope its follow-ups descend from."""
        key_text = state_key.decode("utf-8", "backslashreplace")
        timer_id = ids.timer_id(self.spec.name, key_text, name, due)
        timer = Timer(
            name=name,
            key=key_text,
            due_ms=due,
            payload=record.get("payload"),
            id=timer_id,
            correlation_id=record.get("correlation_id"),
            hop_count=int(record.get("hop_count") or 0),
            tenant=record.get("tenant"),
        )
        envelope = Envelope(
            id=timer_id,
            type=f"timer:{name}",
            source=self.source,
            time=dt.datetime.now(dt.UTC),
            idempotency_key=timer_id,
            correlation_id=timer.correlation_id,
            causation_id=record.get("scheduled_by"),
            tenant=timer.tenant,
            hop_count=timer.hop_count,
            root_time_ms=_root_time(record.get("root_time_ms")),
        )
        return timer, envelope

    # ---------------------------------------------------------------- internals
    def _run(
        self,
        call: Callable[[Context], Any],
        view: StateView,
        state_key: bytes,
        envelope: Envelope,
        event: Event | None,
        timer: Timer | None,
        partition: int,
        received: int,
        decoded: dict[str, Any] | None,
        observe: bool = True,
    ) -> Context:
        """The handler's successful attempt; transient failures retried with backoff, anything
        else (or retries exhausted) raised as :class:`_Dead` with its reason. An ``async def``
        handler called here (in order, one input at a time) runs to its end on the agent's loop."""
        attempts = 0
        first_failure = 0
        start = self.monotonic()
        metrics = self.metrics if observe else None
        perf = time.perf_counter
        services = self.services
        while True:
            attempts += 1
            ctx = Context(services, view, state_key, envelope, event, timer, partition, received)
            t0 = perf()
            try:
                returned = call(ctx)
                if returned is not None and inspect.isawaitable(returned):
                    self.loop.run(returned)
                ctx.state_change()  # surfaces unserialisable state as InvalidStateError now
                if metrics is not None:
                    metrics.handler_latency(perf() - t0)
                return ctx
            except Exception as exc:  # noqa: BLE001 - judged by _failed_attempt: retried or dead-lettered
                delay, first_failure = self._failed_attempt(exc, attempts, first_failure, start, envelope,
                                                            partition, decoded)  # fmt: skip
            self.sleep(delay)

    async def _run_async(
        self,
        call: Callable[[Context], Any],
        view: StateView,
        state_key: bytes,
        envelope: Envelope,
        event: Event,
        partition: int,
        received: int,
        decoded: dict[str, Any],
    ) -> Context:
        """:meth:`_run` of an ``async def`` handler on the agent's loop (backoffs awaited, so other
        keys' inputs go on meanwhile)."""
        attempts = 0
        first_failure = 0
        start = self.monotonic()
        while True:
            attempts += 1
            ctx = Context(self.services, view, state_key, envelope, event, None, partition, received)
            try:
                await call(ctx)
                ctx.state_change()
                return ctx
            except Exception as exc:  # noqa: BLE001 - judged by _failed_attempt: retried or dead-lettered
                delay, first_failure = self._failed_attempt(exc, attempts, first_failure, start, envelope,
                                                            partition, decoded)  # fmt: skip
            await self.async_sleep(delay)

    def _failed_attempt(
        self,
        exc: Exception,
        attempts: int,
        first_failure: int,
        start: float,
        envelope: Envelope,
        partition: int,
        decoded: dict[str, Any] | None,
    ) -> tuple[float, int]:
        """A failed attempt's verdict: (the delay before the next one, when the failures began) for a
        transient failure within the retry budget; else :class:`_Dead` with the reason."""
        if isinstance(exc, Reject):  # a refusal is final, whatever the agent declares transient
            raise self._given_up(exc.reason, exc, attempts, first_failure, decoded) from None
        if isinstance(exc, self.transient):
            now = self.clock_ms()
            first_failure = first_failure or now
            delay = self._backoff_or_give_up(exc, attempts, first_failure, now, start, decoded)
            self._log_retry(exc, envelope, partition, attempts, delay)
            return delay, first_failure
        if isinstance(exc, InvalidStateError):
            raise self._given_up(DlqReason.INVALID_STATE, exc, attempts, first_failure, decoded) from None
        if isinstance(exc, (ContractError, EmitError, TimerError)):
            raise self._given_up(DlqReason.INVALID_OUTPUT, exc, attempts, first_failure, decoded) from None
        # a handler bug is the event's problem, not the worker's
        raise self._given_up(DlqReason.HANDLER_ERROR, exc, attempts, first_failure, decoded) from None

    def _given_up(
        self, reason: str, exc: BaseException, attempts: int, first_failure: int, decoded: dict[str, Any] | None
    ) -> _Dead:
        now = self.clock_ms()
        return _Dead(self._failure(reason, exc, attempts, first_failure or now, now, decoded))

    def _backoff_or_give_up(
        self,
        exc: BaseException,
        attempts: int,
        first_failure: int,
        now: int,
        start: float,
        decoded: dict[str, Any] | None,
    ) -> float:
        """The delay before the next attempt; :class:`_Dead` when the retry budget is spent."""
        policy = self.spec.retry
        delay = policy.backoff(attempts, self.rng)
        elapsed = self.monotonic() - start
        if attempts >= policy.max_attempts or elapsed + delay > policy.max_elapsed_s:
            raise _Dead(
                self._failure(DlqReason.RETRIES_EXHAUSTED, exc, attempts, first_failure, now, decoded)
            ) from None
        if self.metrics is not None:
            self.metrics.retry()
        return delay

    def _log_retry(self, exc: BaseException, envelope: Envelope, partition: int, attempts: int, delay: float) -> None:
        log.info(
            "transient failure, retrying",
            extra={
                "agent": self.spec.name,
                "partition": partition,
                "event_id": envelope.id,
                "correlation_id": envelope.correlation_id,
                "attempt": attempts,
                "delay_s": round(delay, 3),
                "error_class": type(exc).__name__,
            },
        )

    def _success(
        self,
        ctx: Context,
        view: StateView,
        state_key: bytes,
        envelope: Envelope,
        event_type: str,
        topic: str,
        partition: int,
        offset: int,
        received: int,
        key: bytes | None,
        seen_mark: tuple[bytes, bytes] | None,
    ) -> HandleResult:
        """The handled input's records, and then (nothing left that could fail) its store writes:
        the seen key, the state, the timers, in that order."""
        changed, new_raw = ctx.state_change()
        before = after = None
        if changed:
            before, after = audit.state_diff(ctx.state_before(), None if new_raw is None else ctx.state)
        emitted = ctx.emitted
        result = HandleResult(audit.PROCESSED, event_type, emitted=emitted, key=key)
        records = result.records
        for em in emitted:
            em_key = em.key
            records.append(
                OutRecord(
                    RecordKind.OUTPUT,
                    em.topic,
                    None if em_key is None else em_key.encode(),
                    em.data,
                    em.envelope.to_headers(),
                    em.event_type,
                )
            )
        result.audit = self._audit_record(
            envelope,
            event_type,
            topic,
            partition,
            offset,
            audit.PROCESSED,
            before,
            after,
            [em.envelope.id for em in emitted],
            received,
            None,
            key,
        )
        records.append(self._audit_out(result.audit, envelope, key))
        if seen_mark is not None:
            view.put(*seen_mark)
        if changed:
            view.put(keys.STATE + state_key, new_raw)
        timer_writes = ctx.timer_writes
        if timer_writes:
            for tk, tv in timer_writes.items():
                view.put(tk, tv)
        return result

    def _dead(
        self,
        failure: dlq.Failure,
        envelope: Envelope | None,
        event_type: str | None,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: InputHeaders,
        received: int,
        dlq_to: str | None = None,
    ) -> HandleResult:
        result = HandleResult(audit.DEAD_LETTERED, event_type, failure=failure, key=key)
        letter = dlq.dead_letter(
            key, value, headers, failure, self.spec.name, (topic, partition, offset), self.max_record_bytes
        )
        result.records.append(OutRecord(RecordKind.DLQ, dlq_to or dlq_topic(topic), *letter, event_type))
        if envelope is None:
            envelope = _fallback_envelope(headers, topic, partition, offset, self.source)
        result.audit = self._audit_record(
            envelope,
            event_type or envelope.type,
            topic,
            partition,
            offset,
            audit.DEAD_LETTERED,
            None,
            None,
            [],
            received,
            f"{failure.reason}: {failure.error_class}: {failure.message}",
            key,
        )
        result.records.append(self._audit_out(result.audit, envelope, key))
        self._log_dead(failure, envelope, topic, partition, offset)
        return result

    def _log_dead(self, failure: dlq.Failure, envelope: Envelope, topic: str, partition: int, offset: int) -> None:
        log.warning(
            "dead-lettered",
            extra={
                "agent": self.spec.name,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "event_id": envelope.id,
                "correlation_id": envelope.correlation_id,
                "reason": failure.reason,
                "error_class": failure.error_class,
                "error": failure.message[:500],
                "attempts": failure.attempts,
            },
        )

    def _failure(
        self,
        reason: str,
        exc: BaseException,
        attempts: int,
        first_ms: int,
        last_ms: int | None = None,
        decoded: dict[str, Any] | None = None,
    ) -> dlq.Failure:
        message = _message_of(exc)
        if decoded is not None and self.redactor:
            message = self.redactor.scrub(message, self.redactor.secrets_in(decoded))
        if len(message) > MAX_FAILURE_MESSAGE_CHARS:
            message = message[:MAX_FAILURE_MESSAGE_CHARS] + f"… ({len(message)} characters)"
        return dlq.Failure(reason, type(exc).__name__, message, attempts, first_ms, last_ms or first_ms)

    def _audit_record(
        self,
        envelope: Envelope,
        event_type: str,
        topic: str,
        partition: int,
        offset: int,
        outcome: audit.Outcome,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        emitted: list[str],
        received: int,
        error: str | None,
        key: bytes | None,
    ) -> dict[str, Any]:
        redactor = self.redactor
        return {
            "agent_name": self.spec.name,
            "agent_version": self.spec.version,
            "worker_id": self.worker_id,
            "input_event_id": envelope.id,
            "input_event_type": event_type,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "outcome": outcome,
            "state_before": None if before is None else audit.state_json(before, redactor),
            "state_after": None if after is None else audit.state_json(after, redactor),
            "emitted_event_ids": emitted,
            "correlation_id": envelope.correlation_id,
            "received_at": received,
            "handled_at": self.clock_ms(),
            "error": error,
        }

    def _audit_encoder(self) -> Callable[[dict[str, Any]], bytes]:
        """The audit record encoder: the contracts codec, or a compiled writer proven to write the
        same bytes for sample records (several times faster on this per-input path)."""
        if not self.audit_avro:
            return orjson.dumps
        codec, audit_type = self.codec, self.audit_type

        def by_codec(record: dict[str, Any]) -> bytes:
            return codec.encode(audit_type, record, validate=False)

        try:
            body = compile_writer(self.registry.get(audit_type).raw_schema())
            header = SINGLE_OBJECT_MAGIC + codec.fingerprint(audit_type)

            def fast(record: dict[str, Any]) -> bytes:
                return header + body(record)

            samples = self._audit_samples()
            if all(fast(r) == by_codec(r) for r in samples):
                return fast
        except Exception:  # noqa: BLE001 - any doubt: the codec
            pass
        return by_codec

    def _audit_samples(self) -> list[dict[str, Any]]:
        """Audit records covering each field's shapes (null and not, empty and not, non-ASCII)."""
        return [
            self._audit_record(
                _SAMPLE_ENV,
                "x.y",
                "t",
                1,
                2,
                audit.PROCESSED,
                {"a": 1},
                {"a": 2},
                ["e1", "e2"],
                1_700_000_000_000,
                None,
                b"k",
            ),
            self._audit_record(
                _SAMPLE_ENV_NO_CORR, "x.y", "t", 0, 300, audit.DEAD_LETTERED, None, None, [], -5, "boom ✓", None
            ),
        ]

    def _time_header(self, now_ms: int) -> bytes:
        second, cached = self._time_cache
        if now_ms // 1000 != second:
            second = now_ms // 1000
            cached = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._time_cache = (second, cached)
        return cached + b".%03dZ" % (now_ms % 1000)

    def _audit_out(self, record: dict[str, Any], envelope: Envelope, key: bytes | None) -> OutRecord:
        """The audit record as a CloudEvent of the audit type, caused by the input (headers built
        directly from precomputed parts: this runs once per input)."""
        # ids.audit_id(agent, input idempotency key, outcome), its constant head precomputed
        audit_id = ids.uuid_from_sha1(
            self._audit_id_prefix
            + envelope.idempotency_key.encode("utf-8")
            + b"\x1f"
            + record["outcome"].encode("utf-8")
        ).encode()
        headers: list[tuple[str, bytes | None]] = [
            ("ce_id", audit_id),
            self._h_audit_type,
            self._h_audit_source,
            _H_SPECVERSION,
            ("ce_time", self._time_header(record["handled_at"])),
            self._h_audit_ct,
            ("ce_idempotencykey", audit_id),
            _H_HOPCOUNT_0,
            ("ce_causationid", envelope.id.encode()),
        ]
        correlation_id = envelope.correlation_id
        if correlation_id is not None:
            headers.append(("ce_correlationid", correlation_id.encode()))
        tenant = envelope.tenant
        if tenant is not None:
            headers.append(("ce_tenant", tenant.encode()))
        return OutRecord(
            RecordKind.AUDIT,
            self.audit_topic,
            record["input_event_id"].encode(),
            self._audit_encode(record),
            headers,
            self.audit_type,
        )


def _root_time(value: Any) -> int | None:
    """A stored timer's flow root time (epoch ms); None (the timer is its flow's root) for a timer
    stored before it was recorded, or anything that is not a plausible time."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**15:
        return value
    return None


def _awaitable(sleep: Callable[[float], None]) -> Callable[[float], Awaitable[None]]:
    async def asleep(seconds: float) -> None:
        sleep(seconds)

    return asleep


_UNREADABLE = "the Kafka client could not read the record's headers (a header name that is not UTF-8 text)"


class MisroutedError(ContractError):
    """A record not on the partition, or not under the key, its contract's key puts it."""


def _stack(exc: BaseException | None = None) -> str:
    """Where an exception was raised, frame by frame, bounded, without its message (which may
    quote a record: any size, any data)."""
    if exc is None:
        exc = sys.exc_info()[1]
    frames = traceback.format_tb(exc.__traceback__) if exc is not None else []
    return (type(exc).__name__ + "\n" + "".join(frames))[-MAX_TRACEBACK_CHARS:]


def _message_of(exc: BaseException) -> str:
    """The exception's message, cut to a bound before anything else looks at it (str() of an
    exception that quotes a 520 KB header is 520 KB)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails still has a class
        text = ""
    if len(text) > 4 * MAX_FAILURE_MESSAGE_CHARS:
        text = text[: 4 * MAX_FAILURE_MESSAGE_CHARS]
    return text or type(exc).__name__


def _safe_headers(headers: Any) -> list[tuple[str, bytes | None]]:
    """The headers as a list of (str, bytes | None) pairs, whatever was passed; what is not such a
    pair is left out (the dead letter of a record the engine failed on must be buildable)."""
    out: list[tuple[str, bytes | None]] = []
    try:
        for name, raw in headers or ():
            if isinstance(name, str) and (raw is None or isinstance(raw, bytes)):
                out.append((name, raw))
    except Exception:  # noqa: BLE001 - not iterable as pairs: none
        return out
    return out


def _fallback_envelope(headers: InputHeaders, topic: str, partition: int, offset: int, source: str) -> Envelope:
    """An envelope for audit/log lines of a record whose headers could not be read (each value
    bounded: they are what made the headers unreadable, a 520 KB ce_type among them)."""
    values = {}
    for name, raw in headers or ():
        if raw is not None and name in _FALLBACK_NAMES:
            values[name] = raw[: MAX_FALLBACK_FIELD_CHARS * 4].decode("utf-8", "replace")[:MAX_FALLBACK_FIELD_CHARS]
    event_id = values.get("ce_id") or ids.coordinates_id(topic, partition, offset)
    idem = values.get("ce_idempotencykey") or event_id
    env = Envelope.new(
        values.get("ce_type") or "unknown", source, idempotency_key=idem, correlation_id=values.get("ce_correlationid")
    )
    return replace(env, id=event_id, correlation_id=values.get("ce_correlationid") or event_id)


_FALLBACK_NAMES = frozenset({"ce_id", "ce_type", "ce_idempotencykey", "ce_correlationid"})


def _redrive_count(headers: InputHeaders) -> int:
    """The ``choreo_redrive_count`` header as a number; 0 when absent or not a plausible count
    (the header comes from outside: a non-number or thousands of digits count as none)."""
    for name, raw in headers or ():
        if name == REDRIVE_COUNT and raw is not None and 0 < len(raw) <= 9 and raw.isdigit():
            return int(raw)
    return 0


def _redriven_past(raw_seen: bytes, headers: InputHeaders) -> bool:
    """A dead-lettered input comes again through ``choreo dlq redrive`` (a higher redrive count than
    the one its decision was recorded with): handle it again rather than drop it."""
    recorded = keys.dead_lettered_redrive_count(raw_seen)
    return recorded is not None and _redrive_count(headers) > recorded
