"""What an agent is: its declaration (:class:`AgentSpec`) and what its handlers receive
(:class:`Event`, :class:`Timer`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from processors.runtime.context import Context
from processors.runtime.inputs import Event, Timer
from processors.runtime.retry import BreakerPolicy, RetryPolicy

Handler = Callable[[Event, Context], None]
TimerHandler = Callable[[Timer, Context], None]


@dataclass(frozen=True)
class AgentSpec:
    """One agent: the event types it consumes and produces, its handler and its failure policy.

    ``max_hops`` declares a bound for a cycle the agent takes part in (the start-up check refuses an
    undeclared cycle) and is the hop-count limit its inputs are checked against (default: the app's).
    ``transient`` lists exception types worth retrying; anything else raised by the handler is
    permanent and dead-lettered at once. ``dependencies`` names external systems called through
    ``ctx.call(name, fn, ...)``, each behind its own circuit breaker.
    """

    name: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    handler: Handler
    version: str = "1"
    transient: tuple[type[BaseException], ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_hops: int | None = None
    dependencies: Mapping[str, BreakerPolicy] = field(default_factory=dict)
    on_timer: TimerHandler | None = None
    dedupe_ttl_s: float | None = None

    @staticmethod
    def normalize_dependencies(
        deps: Iterable[str] | Mapping[str, BreakerPolicy | None] | None,
    ) -> dict[str, BreakerPolicy]:
        if deps is None:
            return {}
        if isinstance(deps, Mapping):
            return {name: (policy or BreakerPolicy()) for name, policy in deps.items()}
        return {name: BreakerPolicy() for name in deps}


__all__ = ["AgentSpec", "Event", "Handler", "Timer", "TimerHandler"]
