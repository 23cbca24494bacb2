"""What a handler gets besides the event: the state of its key, ``emit`` and timers.

Nothing a handler does is visible outside until it returns: state changes, emitted events and
timer changes are staged in the context and taken by the engine only when the handler succeeds,
so a retried attempt starts from the same state and a failed one leaves no trace.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from processors.contracts import Envelope
from processors.runtime.dependencies import Dependencies, call_key
from processors.runtime.emitter import Emitted, Emitter
from processors.runtime.errors import EmitError, InvalidStateError, TimerError
from processors.runtime.inputs import Event, Timer
from processors.runtime.state import keys
from processors.runtime.state.store import KeyValueStore, StateView

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AgentServices:
    """What every invocation of one agent's handlers shares, built once per agent by the processor:
    its name, whether it may schedule timers (it has an ``on_timer`` handler), how its follow-ups
    are made and the breakers of its dependencies."""

    agent: str
    handles_timers: bool
    emitter: Emitter
    dependencies: Dependencies


class Context:
    """Per-invocation handle: ``ctx.state`` (a plain dict for this key, JSON-able), ``ctx.emit``,
    ``ctx.schedule_timer`` / ``ctx.cancel_timer``, ``ctx.call`` through a circuit breaker, and the
    input (``ctx.event`` and ``ctx.envelope``, or ``ctx.timer`` when a timer fired)."""

    def __init__(
        self,
        services: AgentServices,
        view: StateView,
        key: bytes,
        envelope: Envelope,
        event: Event | None = None,
        timer: Timer | None = None,
        partition: int = 0,
        now_ms: int | None = None,
    ) -> None:
        self._services = services
        self._view = view
        self._key = key
        self.envelope = envelope
        self.event = event
        self.timer = timer
        self.partition = partition
        self.now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self._state_raw = view.get(keys.state_key(key))
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
            agent = self._services.agent
            extra = {
                "agent": agent,
                "partition": self.partition,
                "event_id": self.envelope.id,
                "correlation_id": self.envelope.correlation_id,
            }
            if self.event is not None:
                extra["offset"] = self.event.offset
                extra["topic"] = self.event.topic
            self._log = logging.LoggerAdapter(logging.getLogger(f"choreo.agent.{agent}"), extra)
        return self._log

    @property
    def now_dt(self) -> dt.datetime:
        if self._now_dt is None:
            self._now_dt = dt.datetime.now(dt.UTC)
        return self._now_dt

    # ------------------------------------------------------------------ identity
    @property
    def agent(self) -> str:
        return self._services.agent

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
        emitter = self._services.emitter
        plan = emitter.plans.get(event_type)
        if plan is None:
            raise emitter.undeclared(event_type)
        data = emitter.encode(event_type, value)
        counts = self._type_counts
        n = counts.get(event_type, 0)
        counts[event_type] = n + 1
        now = self._now_dt
        if now is None:
            now = self.now_dt
        emitted = emitter.build(plan, self.envelope, event_type, key, value, data, idempotency_key, tenant, n, now)
        self.emitted.append(emitted)
        return emitted.envelope

    # ------------------------------------------------------------------ timers
    def schedule_timer(
        self, name: str, *, delay_s: float | None = None, at_ms: int | None = None, payload: Any = None
    ) -> int:
        """A durable timer for this key, replacing any timer of the same name; fires once, after
        restarts and rebalances too, by calling the agent's ``on_timer(timer, ctx)``. Returns the due
        time in ms since the epoch."""
        if not self._services.handles_timers:
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
                # the flow's root time, so a flow the timer ends is timed from its start
                "root_time_ms": self.envelope.flow_root_ms,
            }
        )
        self.timer_writes[keys.timer_key(self._key, name)] = keys.pack_u64(max(0, due)) + record
        return due

    def cancel_timer(self, name: str) -> bool:
        """Cancel this key's timer ``name``; True when there was one."""
        tk = keys.timer_key(self._key, name)
        existed = (self.timer_writes[tk] if tk in self.timer_writes else self._view.get(tk)) is not None
        self.timer_writes[tk] = None
        return existed

    def timers(self) -> dict[str, int]:
        """Pending timers of this key: name → due ms."""
        out: dict[str, int] = {}
        store: KeyValueStore = getattr(self._view, "store", None) or self._view  # type: ignore[assignment]
        prefix = keys.TIMER + self._key + b"\x00"
        for tk, raw in store.timers_of(self._key):
            out[tk[len(prefix) :].decode()] = keys.unpack_u64(raw)
        writes = getattr(self._view, "writes", {})
        for tk, raw in list(writes.items()) + list(self.timer_writes.items()):
            if tk.startswith(prefix):
                name = tk[len(prefix) :].decode()
                if raw is None:
                    out.pop(name, None)
                else:
                    out[name] = keys.unpack_u64(raw)
        return out

    # ------------------------------------------------------------------ dependencies
    _call_counts: dict[str, int]  # calls made so far per dependency, set by the first call

    def call(self, dependency: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call an external dependency within its limits (timeout, bulkhead, rate limit, retries,
        circuit breaker: :mod:`processors.runtime.dependencies`). ``fn`` is given an idempotency key
        of its own when it takes a keyword parameter ``idempotency_key``: derived from the input's
        key, this agent, the dependency and the call's ordinal in this handling, so a retry or a
        replay hands the callee the same key. A refused or timed-out call raises
        :class:`~processors.runtime.dependencies.DependencyUnavailable` and an open breaker
        :class:`~processors.runtime.retry.CircuitOpenError`; the engine retries both with backoff."""
        if _on_a_running_loop():
            _warn_blocking_call(self._services.agent, dependency)
        return self._services.dependencies.invoke(dependency, self._next_call_key(dependency), fn, args, kwargs)

    def call_async(
        self, dependency: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, T]:
        """``await ctx.call_async(dependency, fn, ...)``: :meth:`call` for an async ``fn``, from an
        async handler. The same key (the ordinal counter per dependency is the one ``call`` uses,
        taken when ``call_async`` is called, not when it is awaited, so calls gathered at once get
        their ordinals in the order they were made) and the same limits, with waits that never
        block the loop and a timeout that cancels ``fn`` (it sees :class:`asyncio.CancelledError`)."""
        return self._services.dependencies.invoke_async(dependency, self._next_call_key(dependency), fn, args, kwargs)

    def _next_call_key(self, dependency: str) -> str:
        """The idempotency key of this handling's next call to ``dependency`` (its ordinal counted
        here, shared by ``call`` and ``call_async``)."""
        try:
            counts = self._call_counts
        except AttributeError:
            counts = self._call_counts = {}
        ordinal = counts.get(dependency, 0)
        counts[dependency] = ordinal + 1
        return call_key(self.envelope.idempotency_key, self._services.agent, dependency, ordinal)


_warned_blocking: set[tuple[str, str]] = set()


def _on_a_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _warn_blocking_call(agent: str, dependency: str) -> None:
    """A sync ``ctx.call`` from an ``async def`` handler blocks the agent's loop, so no other input
    of the agent runs while it waits: said once per agent and dependency, not refused (it works,
    only without concurrency)."""
    if (agent, dependency) in _warned_blocking:
        return
    _warned_blocking.add((agent, dependency))
    logging.getLogger("choreo.runtime").warning(
        "ctx.call from an async def handler blocks every other input of the agent while it waits; "
        "use await ctx.call_async",
        extra={"agent": agent, "dependency": dependency},
    )


__all__ = ["AgentServices", "Context", "EmitError", "Emitted", "InvalidStateError", "TimerError"]
