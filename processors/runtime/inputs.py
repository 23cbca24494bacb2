"""What a handler is called with: a decoded input event or a timer that came due.

A leaf module (it imports only the contracts' envelope) so the context and the agent declaration
both use these types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.contracts.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded input event: its contract type, Kafka key, Avro value, CloudEvents envelope and
    coordinates."""

    type: str
    key: str | None
    value: dict[str, Any]
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def correlation_id(self) -> str | None:
        return self.envelope.correlation_id

    @property
    def idempotency_key(self) -> str:
        return self.envelope.idempotency_key or self.envelope.id


@dataclass(frozen=True, slots=True)
class Timer:
    """A durable per-key timer that came due. ``id`` is stable for one scheduling (key, name, due
    time), so follow-ups it emits get the same idempotency keys if it ever fires again."""

    name: str
    key: str
    due_ms: int
    payload: Any
    id: str
    correlation_id: str | None
    hop_count: int
    tenant: str | None
