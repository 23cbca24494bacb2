"""What an agent is: its declaration (:class:`AgentSpec`) and what its handlers receive
(:class:`Event`, :class:`Timer`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from processors.runtime.context import Context
from processors.runtime.inputs import Event, Timer
from processors.runtime.retry import BreakerPolicy, RetryPolicy

Handler = Callable[[Event, Context], None]
TimerHandler = Callable[[Timer, Context], None]


class Routing(StrEnum):
    """Which inputs an agent takes as being where they belong (see the README, "Foreign records").

    State and seen keys live in the store of the partition a record came on, so an agent that
    keeps either relies on every record of a key coming on one partition: the one Kafka's default
    partitioner (murmur2 of the key) gives it. A record elsewhere is dead-lettered ``misrouted``."""

    CONTRACT = "contract"  # keyed by the contract's key field, on murmur2(key) % partitions (default)
    KEY = "key"  # any key (state per record key, whatever the producer chose), on murmur2(key) % partitions
    ANY = "any"  # no check: a stateless agent that takes records wherever they are


@dataclass(frozen=True)
class AgentSpec:
    """One agent: the event types it consumes and produces, its handler and its failure policy.

    ``max_hops`` declares a bound for a cycle the agent takes part in (the start-up check refuses an
    undeclared cycle) and is the hop-count limit its inputs are checked against (default: the app's).
    ``transient`` lists exception types worth retrying; anything else raised by the handler is
    permanent and dead-lettered at once. ``dependencies`` names external systems called through
    ``ctx.call(name, fn, ...)``, each behind its own circuit breaker. ``routing`` says which
    records the agent takes as correctly keyed and partitioned (:class:`Routing`). ``terminal`` names
    the produced types that end a flow (an order confirmed or cancelled): emitting one observes the
    flow time (from the flow's root event, ``ce_roottime``) in ``choreo_flow_seconds``; the engine
    itself knows no flow.
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
    routing: Routing = Routing.CONTRACT
    terminal: frozenset[str] = frozenset()

    @staticmethod
    def normalize_dependencies(
        deps: Iterable[str] | Mapping[str, BreakerPolicy | None] | None,
    ) -> dict[str, BreakerPolicy]:
        if deps is None:
            return {}
        if isinstance(deps, Mapping):
            return {name: (policy or BreakerPolicy()) for name, policy in deps.items()}
        return {name: BreakerPolicy() for name in deps}


__all__ = ["AgentSpec", "Event", "Handler", "Routing", "Timer", "TimerHandler"]
