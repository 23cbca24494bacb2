"""What an agent is: its declaration (:class:`AgentSpec`) and what its handlers receive
(:class:`Event`, :class:`Timer`)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from processors.runtime.context import Context
from processors.runtime.inputs import Event, Timer
from processors.runtime.retry import BreakerPolicy, RetryPolicy

Handler = Callable[[Event, Context], None] | Callable[[Event, Context], Awaitable[None]]
TimerHandler = Callable[[Timer, Context], None]


class Routing(StrEnum):
    """Which inputs an agent takes as being where they belong (see the README, "Foreign records").

    State and seen keys live in the store of the partition a record came on, so an agent that
    keeps either relies on every record of a key coming on one partition: the one Kafka's default
    partitioner (murmur2 of the key) gives it. A record elsewhere is dead-lettered ``misrouted``."""

    CONTRACT = "contract"  # keyed by the contract's key field, on murmur2(key) % partitions (default)
    KEY = "key"  # any key (state per record key, whatever the producer chose), on murmur2(key) % partitions
    ANY = "any"  # no check: a stateless agent that takes records wherever they are


# Inputs of different keys handled at once by an async (or threads=True) agent, unless declared or
# set otherwise. Chosen by measurement (benchmarks/RESULTS.md, "I/O-bound agents (issue 14)", the
# sweep of 2026-12-02 14:00 UTC: benchmarks/io_bound.py, one worker, 6 partitions, exactly_once): 128
# is the knee. At 50 ms it reaches the agent's CPU-bound rate (1,252 events/s, 256 gave 1,301; 64 only
# 836) and at 200 ms 0.88x of 128/latency; 256 buys nothing more at 20-50 ms (the agent's own CPU is
# the bound there) while it doubles the connections a dependency sees and what a stop or a rebalance
# drains. Finished inputs behind a slow one of their partition do not count against it (the
# executor holds up to 4x as many, _concurrency.HELD_PER_SLOT).
DEFAULT_MAX_IN_FLIGHT = 128


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

    ``max_in_flight`` bounds the inputs of different keys handled at once (inputs of one key are
    always handled one after another, in offset order): an ``async def`` handler, or a sync one
    declared with ``threads=True`` (run on a pool of that many threads), may wait on several
    dependencies' answers at once. None takes :data:`DEFAULT_MAX_IN_FLIGHT` for those and 1 for
    a plain sync handler; settings may change it per agent (``[agents.<name>] max_in_flight``).
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
    max_in_flight: int | None = None
    threads: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def concurrency(self, override: int | None = None) -> int:
        """How many inputs this agent handles at once: ``override`` (the settings'), else its
        declaration, else the default for its kind of handler."""
        limit = override or self.max_in_flight
        if limit is None:
            return DEFAULT_MAX_IN_FLIGHT if (self.is_async or self.threads) else 1
        return limit

    def concurrency_problem(self, limit: int) -> str | None:
        """Why ``limit`` cannot be this agent's, or None."""
        if limit < 1:
            return f"agent {self.name!r}: max_in_flight must be at least 1, got {limit}"
        if limit > 1 and not (self.is_async or self.threads):
            return (
                f"agent {self.name!r}: max_in_flight {limit} needs an async def handler or threads=True "
                "(a plain sync handler handles one input at a time)"
            )
        return None

    @staticmethod
    def normalize_dependencies(
        deps: Iterable[str] | Mapping[str, BreakerPolicy | None] | None,
    ) -> dict[str, BreakerPolicy]:
        if deps is None:
            return {}
        if isinstance(deps, Mapping):
            return {name: (policy or BreakerPolicy()) for name, policy in deps.items()}
        return {name: BreakerPolicy() for name in deps}


__all__ = ["DEFAULT_MAX_IN_FLIGHT", "AgentSpec", "Event", "Handler", "Routing", "Timer", "TimerHandler"]
