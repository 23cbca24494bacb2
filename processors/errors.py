"""The root of every error choreo-streams raises on purpose.

Callers (the CLI, a user's supervisor, tests) catch :class:`ChoreoError` to tell "the project
refused or could not do this, and says why" from a bug. Each area keeps its own subclass
(contracts, engine, tooling) so a caller can be as specific as it needs; the built-in base a
subclass also carries (``ValueError``, ``RuntimeError``) is kept where callers relied on it.
"""

from __future__ import annotations


class ChoreoError(Exception):
    """Base class of the project's own errors."""


__all__ = ["ChoreoError"]
