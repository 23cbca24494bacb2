"""Errors of the worker: what makes an agent stop rather than handle the next record.

A record's own problems never get here (they are dead-lettered by the processor); these are the
conditions no input can fix: a fenced or fatally failed client, topics that cannot be created,
a changelog that cannot be restored or rolled back.
"""

from __future__ import annotations

from processors.errors import ChoreoError


class WorkerError(ChoreoError, RuntimeError):
    """The worker cannot go on (fenced producer, fatal client error, bad topology)."""


class TopicError(WorkerError):
    """A topic the agents need could not be created."""


__all__ = ["TopicError", "WorkerError"]
