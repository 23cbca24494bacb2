"""The engine's own errors, in a leaf module so that every engine module can raise them without
importing another (and the app, topology, context and processor modules import no cycle).

Each keeps the built-in base it always had (``ValueError``, ``TypeError``, ``RuntimeError``), so code
catching those still does, and gains :class:`~processors.errors.ChoreoError`, so a caller can tell
the engine refusing something from a bug. A record's own problems never raise these past the
processor (they are dead-lettered); :class:`WorkerError` is for what no input can fix: a fenced or
fatally failed client, topics that cannot be created, a changelog that cannot be restored.
"""

from __future__ import annotations

from processors.errors import ChoreoError


class AppError(ChoreoError, ValueError):
    """The app's declarations are inconsistent (unknown event type, duplicate agent, ...)."""


class TopologyError(ChoreoError, ValueError):
    """The agent graph cannot run: an undeclared cycle, or inputs that are not co-partitioned."""


class EmitError(ChoreoError, ValueError):
    """``ctx.emit`` of an event type the agent did not declare in ``produces``."""


class TimerError(ChoreoError, ValueError):
    """A timer call the agent cannot honour (no ``on_timer`` handler, no due time)."""


class InvalidStateError(ChoreoError, TypeError):
    """The state is not JSON-serialisable (orjson refused it)."""


class LoopError(ChoreoError):
    """An event came past the hop-count bound: the chain of agents loops."""


class WorkerError(ChoreoError, RuntimeError):
    """The worker cannot go on (fenced producer, fatal client error, bad topology)."""


class TopicError(WorkerError):
    """A topic the agents need could not be created."""


__all__ = [
    "AppError",
    "EmitError",
    "InvalidStateError",
    "LoopError",
    "TimerError",
    "TopicError",
    "TopologyError",
    "WorkerError",
]
