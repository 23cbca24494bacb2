"""Every id the project derives rather than draws: deterministic, so a retried or replayed step
produces the same ids and downstream deduplication collapses it.

All of them are RFC 4122 version-5 UUIDs (SHA-1 of a namespace and a name). Three namespaces keep
the three kinds apart, so no derived idempotency key can equal a derived event id:

* :data:`EVENT_ID_NAMESPACE`: event ids from an idempotency key, and the ids of the engine's own
  records (audit records, fired timers, unreadable inputs) from their coordinates;
* :data:`EMIT_KEY_NAMESPACE`: idempotency keys of the follow-ups an agent emits (cause, agent,
  type and ordinal);
* :data:`CHILD_KEY_NAMESPACE`: idempotency keys of :meth:`Envelope.child
  <processors.contracts.envelope.Envelope.child>` (cause and type), for producers outside agents.

The values are on the wire and in stores (seen keys): changing a namespace or a name's layout
changes every id, so each is pinned by the golden test and :func:`uuid5_reference` parity tests.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

EVENT_ID_NAMESPACE = uuid.UUID("7d0d8a52-0a43-4b7e-8f39-2b1b9d6a4c11")
EMIT_KEY_NAMESPACE = uuid.UUID("2f1d9a8e-6c1b-4f4e-9a57-0c3b7d8e5a10")
CHILD_KEY_NAMESPACE = uuid.UUID("5b0c4a9e-3f57-4c0e-9d4b-2f4d7c1e8a61")

# Bytes prefixes of the hashed names, for callers that precompute the constant part of a name.
EVENT_ID_PREFIX = EVENT_ID_NAMESPACE.bytes
EMIT_KEY_PREFIX = EMIT_KEY_NAMESPACE.bytes
SEPARATOR = "\x1f"

_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid5_reference(namespace: uuid.UUID, name: str) -> str:
    """What :func:`uuid_from_sha1` must equal: the standard library's version-5 UUID text."""
    return str(uuid.uuid5(namespace, name))


def uuid_from_sha1(
    data: bytes, _sha1: Callable[[bytes], Any] = hashlib.sha1, _variant: dict[str, str] = _VARIANT
) -> str:
    """``uuid5_reference(namespace, name)`` for ``data = namespace.bytes + name.encode()``, formatted
    straight from the hex digest: ``uuid.uuid5`` builds three objects per id, and ids are derived
    several times per input (follow-up key and id, audit id)."""
    h = _sha1(data).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_variant[h[16]]}{h[17:20]}-{h[20:32]}"


def derived_id(name: str) -> str:
    """The event id of an event whose idempotency key (or other stable name) is ``name``."""
    return uuid_from_sha1(EVENT_ID_PREFIX + name.encode("utf-8"))


def emit_key(cause_key: str, agent: str, event_type: str, ordinal: int) -> str:
    """Idempotency key of the ``ordinal``-th ``event_type`` event ``agent`` emits for the cause
    keyed ``cause_key``."""
    return uuid_from_sha1(
        EMIT_KEY_PREFIX + cause_key.encode("utf-8") + emit_key_suffix(agent, event_type) + str(ordinal).encode()
    )


def emit_key_suffix(agent: str, event_type: str) -> bytes:
    """The part of :func:`emit_key`'s name between the cause key and the ordinal (constant per
    agent and type, so the per-emit path precomputes it)."""
    return f"{SEPARATOR}{agent}{SEPARATOR}{event_type}{SEPARATOR}".encode()


def child_key(cause_key: str, event_type: str) -> str:
    """Idempotency key of the ``event_type`` event caused by an event keyed ``cause_key``."""
    return uuid_from_sha1(CHILD_KEY_NAMESPACE.bytes + f"{cause_key}{SEPARATOR}{event_type}".encode())


def audit_id_prefix(agent: str) -> bytes:
    """The constant head of :func:`audit_id`'s hashed bytes for one agent."""
    return EVENT_ID_PREFIX + f"audit{SEPARATOR}{agent}{SEPARATOR}".encode()


def audit_id(agent: str, input_key: str, outcome: str) -> str:
    """Id (and idempotency key) of the audit record of one input and outcome."""
    return derived_id(f"audit{SEPARATOR}{agent}{SEPARATOR}{input_key}{SEPARATOR}{outcome}")


def timer_id(agent: str, key: str, name: str, due_ms: int) -> str:
    """Id of one scheduling of a timer: the same if it ever fires again."""
    return derived_id(f"timer{SEPARATOR}{agent}{SEPARATOR}{key}{SEPARATOR}{name}{SEPARATOR}{due_ms}")


def coordinates_id(topic: str, partition: int, offset: int) -> str:
    """Id of a record whose headers could not be read, from where it was consumed."""
    return derived_id(f"coords{SEPARATOR}{topic}/{partition}/{offset}")


__all__ = [
    "CHILD_KEY_NAMESPACE",
    "EMIT_KEY_NAMESPACE",
    "EMIT_KEY_PREFIX",
    "EVENT_ID_NAMESPACE",
    "EVENT_ID_PREFIX",
    "audit_id",
    "audit_id_prefix",
    "child_key",
    "coordinates_id",
    "emit_key",
    "emit_key_suffix",
    "derived_id",
    "timer_id",
    "uuid5_reference",
    "uuid_from_sha1",
]
