"""How a handler refuses an input on business grounds, with a reason of its own.

Raising :class:`Reject` dead-letters the input at once (no retry) with the given reason in the
``choreo_dlq_reason`` header, so operators can tell a refused state transition from a bug.
"""

from __future__ import annotations

import re

from processors.errors import ChoreoError

_REASON = re.compile(r"^[a-z][a-z0-9_]*$")


class Reject(ChoreoError):
    """Refuse the current input: it goes to the DLQ with ``reason`` and ``message``; nothing the
    handler staged (state, emits, timers) is applied."""

    def __init__(self, reason: str, message: str) -> None:
        if not _REASON.match(reason):
            raise ValueError(f"reject reason must be snake_case letters and digits, got {reason!r}")
        super().__init__(message)
        self.reason = reason
