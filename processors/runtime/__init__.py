"""The choreo-streams engine: agents over Kafka with RocksDB state, contracts, exactly-once or
at-least-once processing, dedupe, DLQ, audit, timers and a loop guard.

Public API (everything an agent author needs)::

    from processors.runtime import App, Context, Event, Timer, RetryPolicy, BreakerPolicy

Running: ``choreo worker --app MODULE:APP`` or :class:`Worker`; testing:
:mod:`processors.runtime.testing` (``AgentDriver``, ``run_agents``).
"""

from processors.runtime._aio import on_loop_close
from processors.runtime.agent import AgentSpec, Routing
from processors.runtime.app import App
from processors.runtime.context import Context
from processors.runtime.emitter import Emitted
from processors.runtime.errors import (
    AppError,
    EmitError,
    InvalidStateError,
    TimerError,
    TopicError,
    TopologyError,
    WorkerError,
)
from processors.runtime.inputs import Event, Timer
from processors.runtime.reject import Reject
from processors.runtime.retry import BreakerPolicy, CircuitBreaker, CircuitOpenError, RetryPolicy
from processors.runtime.supervisor import Worker
from processors.runtime.topology import Topology, check_copartitioned
from processors.runtime.worker import AT_LEAST_ONCE, EXACTLY_ONCE, WorkerOptions

__all__ = [
    "AT_LEAST_ONCE",
    "EXACTLY_ONCE",
    "AgentSpec",
    "App",
    "AppError",
    "BreakerPolicy",
    "CircuitBreaker",
    "CircuitOpenError",
    "Context",
    "EmitError",
    "Emitted",
    "Event",
    "InvalidStateError",
    "Reject",
    "RetryPolicy",
    "Routing",
    "Timer",
    "TimerError",
    "TopicError",
    "Topology",
    "on_loop_close",
    "TopologyError",
    "Worker",
    "WorkerError",
    "WorkerOptions",
    "check_copartitioned",
]
