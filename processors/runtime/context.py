"""What a handler gets besides the event: the state of its key, ``emit`` and timers.

Nothing a handler does is visible outside until it returns: state changes, emitted events and
timer changes are staged in the context and taken by the engine only when the handler succeeds,
so a retried attempt starts from the same state and a failed one leaves no trace.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from processors.contracts import Envelope
from processors.contracts.envelope import AVRO_CONTENT_TYPE, SPEC_VERSION
from processors.contracts.envelope import _build as _envelope
from processors.contracts.slotted import slot_builder
from processors.runtime.agent import Event, Timer
from processors.runtime.state import keys as K

if TYPE_CHECKING:  # pragma: no cover
    from processors.runtime.processor import Processor

T = TypeVar("T")


class EmitError(ValueError):
    """``ctx.emit`` of an event type the agent did not declare in ``produces``."""


class TimerError(ValueError):
    """A timer call the agent cannot honour (no ``on_timer`` handler, no due time)."""


class InvalidStateError(TypeError):
    """The state is not JSON-serialisable (orjson refused it)."""


@dataclass(frozen=True, slots=True)
class Emitted:
    """One follow-up event produced by a handler: decoded form plus what goes on the wire."""

    event_type: str
    topic: str
    key: str | None
    value: dict[str, Any]
    envelope: Envelope
    data: bytes

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def idempotency_key(self) -> str:
        return self.envelope.idempotency_key


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid_from_sha1(
    data: bytes, _sha1: Callable[[bytes], Any] = hashlib.sha1, _variant: dict[str, str] = _VARIANT
) -> str:
    """RFC 4122 version-5 UUID text of sha1(``data``) (what ``uuid.uuid5`` computes for
    ``namespace.bytes + name``), formatted without building a UUID object (three per input: the
    variant nibble comes from a table rather than ``int(..., 16)``)."""
    h = _sha1(data).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_variant[h[16]]}{h[17:20]}-{h[20:32]}"


_ID_NS = uuid.UUID("7d0d8a52-0a43-4b7e-8f39-2b1b9d6a4c11").bytes


def derived_id(idempotency_key: str) -> str:
    """A stable CloudEvents id for an event whose idempotency key is known."""
    return uuid_from_sha1(_ID_NS + idempotency_key.encode("utf-8"))


# Emitted is frozen; one is built per follow-up, with every field, so without its __init__.
_emitted = slot_builder(Emitted)


class Context:
    """Per-invocation handle: ``ctx.state`` (a plain dict for this key, JSON-able), ``ctx.emit``,
    ``ctx.schedule_timer`` / ``ctx.cancel_timer``, ``ctx.call`` through a circuit breaker, and the
    input (``ctx.event`` and ``ctx.envelope``, or ``ctx.timer`` when a timer fired)."""

    def __init__(
        self,
        processor: Processor,
        view: Any,
        key: bytes,
        envelope: Envelope,
        event: Event | None = None,
        timer: Timer | None = None,
        partition: int = 0,
        now_ms: int | None = None,
    ) -> None:
        self._p = processor
        self._view = view
        self._key = key
        self.envelope = envelope
        self.event = event
        self.timer = timer
        self.partition = partition
        self.now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self._state_raw = view.get(K.state_key(key))
        self._state: dict[str, Any] | None = None
        self.emitted: list[Emitted] = []
        self._type_counts: dict[str, int] = {}
        self.timer_writes: dict[bytes, bytes | None] = {}
        self._log: logging.LoggerAdapter | None = None
        self._now_dt: dt.datetime | None = None
        self._change: tuple[bool, bytes | None] | None = None

    @property
    def log(self) -> logging.LoggerAdapter:
        """A logger whose JSON lines carry agent, partition, offset, event id and correlation id."""
        if self._log is None:
            extra = {
                "agent": self._p.spec.name,
                "partition": self.partition,
                "event_id": self.envelope.id,
                "correlation_id": self.envelope.correlation_id,
            }
            if self.event is not None:
                extra["offset"] = self.event.offset
                extra["topic"] = self.event.topic
            self._log = logging.LoggerAdapter(logging.getLogger(f"choreo.agent.{self._p.spec.name}"), extra)
        return self._log

    @property
    def now_dt(self) -> dt.datetime:
        if self._now_dt is None:
            self._now_dt = dt.datetime.now(dt.UTC)
        return self._now_dt

    # ------------------------------------------------------------------ identity
    @property
    def agent(self) -> str:
        return self._p.spec.name

    @property
    def key(self) -> str:
        return self._key.decode("utf-8", "backslashreplace")

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> dict[str, Any]:
        """The key's state as a dict; mutate it in place or assign a new dict. An empty dict at the
        end deletes the key."""
        if self._state is None:
            self._state = orjson.loads(self._state_raw) if self._state_raw is not None else {}
        return self._state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise InvalidStateError(f"state must be a dict, got {type(value).__name__}")
        self._state = value

    def clear_state(self) -> None:
        self._state = {}

    def state_before(self) -> dict[str, Any] | None:
        return orjson.loads(self._state_raw) if self._state_raw is not None else None

    def state_change(self) -> tuple[bool, bytes | None]:
        """(changed, new raw value or None for a delete), computed once the handler returned."""
        if self._change is None:
            self._change = self._compute_change()
        return self._change

    def _compute_change(self) -> tuple[bool, bytes | None]:
        if self._state is None:
            return False, self._state_raw
        if not self._state:
            return self._state_raw is not None, None
        try:
            raw = orjson.dumps(self._state)
        except TypeError as exc:
            raise InvalidStateError(f"state of key {self.key!r} is not JSON-serialisable: {exc}") from exc
        return raw != self._state_raw, raw

    # ------------------------------------------------------------------ emit
    def emit(
        self,
        event_type: str,
        key: str | bytes | None,
        value: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        tenant: str | None = None,
    ) -> Envelope:
        """Stage a follow-up event. It is validated against its contract now (a
        :class:`~processors.contracts.ContractViolation` propagates, and the input is dead-lettered
        as ``invalid_output`` unless the handler catches it). The idempotency key defaults to one
        derived from the cause, this agent, the type and the emit's ordinal, so a replay emits the
        same key; the event id is derived from the key. Returns the envelope."""
        p = self._p
        plan = p.emit_plans.get(event_type)
        if plan is None:
            raise EmitError(
                f"agent {p.spec.name!r} emitted {event_type!r}, which it does not declare in produces "
                f"({', '.join(p.spec.produces) or 'nothing'})"
            )
        topic, key_field, key_suffix = plan
        data = p.codec.encode(event_type, value)
        counts = self._type_counts
        n = counts.get(event_type, 0)
        counts[event_type] = n + 1
        cause = self.envelope
        if idempotency_key is None:
            # p.derive_key(cause key, type, n), the prefix and suffix bytes precomputed per type
            idempotency_key = uuid_from_sha1(
                p.key_prefix + cause.idempotency_key.encode("utf-8") + key_suffix + str(n).encode()
            )
        # What Envelope.child() gives (same flow and trace, caused by this event, one hop further),
        # built in one step, with an id derived from the key so a replay emits the same id.
        now = self._now_dt
        if now is None:
            now = self.now_dt
        cause_id = cause.id
        env = _envelope(
            uuid_from_sha1(_ID_NS + idempotency_key.encode("utf-8")),
            event_type,
            p.source,
            now,
            idempotency_key,
            cause.correlation_id or cause_id,
            cause_id,
            tenant if tenant is not None else cause.tenant,
            cause.hop_count + 1,
            cause.traceparent,
            cause.tracestate,
            AVRO_CONTENT_TYPE,
            SPEC_VERSION,
        )
        if key is None:
            key_value = value.get(key_field)
            key = None if key_value is None else str(key_value)
        elif isinstance(key, bytes):
            key = key.decode("utf-8")
        self.emitted.append(_emitted(event_type, topic, key, value, env, data))
        return env

    # ------------------------------------------------------------------ timers
    def schedule_timer(
        self, name: str, *, delay_s: float | None = None, at_ms: int | None = None, payload: Any = None
    ) -> int:
        """A durable timer for this key, replacing any timer of the same name; fires once, after
        restarts and rebalances too, by calling the agent's ``on_timer(timer, ctx)``. Returns the due
        time in ms since the epoch."""
        if self._p.spec.on_timer is None:
            raise TimerError(f"agent {self.agent!r} schedules timer {name!r} but declares no on_timer handler")
        if (delay_s is None) == (at_ms is None):
            raise TimerError("schedule_timer needs exactly one of delay_s or at_ms")
        due = int(at_ms if at_ms is not None else self.now_ms + delay_s * 1000)  # type: ignore[operator]
        record = orjson.dumps(
            {
                "payload": payload,
                "correlation_id": self.envelope.correlation_id or self.envelope.id,
                "hop_count": self.envelope.hop_count,
                "tenant": self.envelope.tenant,
                "scheduled_by": self.envelope.id,
            }
        )
        self.timer_writes[K.timer_key(self._key, name)] = K.pack_u64(max(0, due)) + record
        return due

    def cancel_timer(self, name: str) -> bool:
        """Cancel this key's timer ``name``; True when there was one."""
        tk = K.timer_key(self._key, name)
        existed = (self.timer_writes[tk] if tk in self.timer_writes else self._view.get(tk)) is not None
        self.timer_writes[tk] = None
        return existed

    def timers(self) -> dict[str, int]:
        """Pending timers of this key: name → due ms."""
        out: dict[str, int] = {}
        store = getattr(self._view, "store", self._view)
        prefix = K.TIMER + self._key + b"\x00"
        for tk, raw in store.timers_of(self._key):
            out[tk[len(prefix) :].decode()] = K.unpack_u64(raw)
        writes = getattr(self._view, "writes", {})
        for tk, raw in list(writes.items()) + list(self.timer_writes.items()):
            if tk.startswith(prefix):
                name = tk[len(prefix) :].decode()
                if raw is None:
                    out.pop(name, None)
                else:
                    out[name] = K.unpack_u64(raw)
        return out

    # ------------------------------------------------------------------ dependencies
    def call(self, dependency: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call an external dependency through its circuit breaker. An open breaker raises
        :class:`~processors.runtime.retry.CircuitOpenError`, which the engine retries with backoff."""
        try:
            breaker = self._p.breakers[dependency]
        except KeyError:
            raise KeyError(
                f"agent {self.agent!r} calls dependency {dependency!r} it does not declare "
                f"(declared: {', '.join(self._p.breakers) or 'none'})"
            ) from None
        return breaker.call(fn, *args, **kwargs)
