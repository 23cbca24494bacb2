"""How an agent's follow-up events are made: contract-encoded, with derived ids and the envelope
of a child of their cause.

One :class:`Emitter` per agent holds what is constant for it (the plan of each type it produces,
its source, the codec); the context stages what one invocation emits and calls :meth:`Emitter.build`
once per emit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from processors.contracts.codec import AvroCodec
from processors.contracts.envelope import AVRO_CONTENT_TYPE, SPEC_VERSION, Envelope, build_envelope
from processors.contracts.ids import EMIT_KEY_PREFIX, EVENT_ID_PREFIX, emit_key_suffix, uuid_from_sha1
from processors.contracts.registry import ContractRegistry
from processors.contracts.slotted import slot_builder
from processors.runtime.errors import EmitError


@dataclass(frozen=True, slots=True)
class Emitted:
    """One follow-up event produced by a handler: decoded form plus what goes on the wire."""

    event_type: str
    topic: str
    key: str | None
    value: dict[str, Any]
    envelope: Envelope
    data: bytes

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def idempotency_key(self) -> str:
        return self.envelope.idempotency_key


# Emitted is frozen; one is built per follow-up, with every field, so without its __init__.
_emitted = slot_builder(Emitted)


class EmitPlan(NamedTuple):
    """What is constant for one produced type: its topic, the value field that keys it when the
    handler gives no key, and the part of the derived idempotency key's name after the cause key."""

    topic: str
    key_field: str | None
    key_suffix: bytes


class Emitter:
    """The follow-ups of one agent."""

    __slots__ = ("agent", "source", "plans", "encode", "produces")

    def __init__(
        self, agent: str, source: str, codec: AvroCodec, plans: dict[str, EmitPlan], produces: tuple[str, ...]
    ) -> None:
        self.agent = agent
        self.source = source
        self.plans = plans
        self.encode: Callable[[str, dict[str, Any]], bytes] = codec.encode
        self.produces = produces  # as declared, for the message naming them

    @classmethod
    def for_agent(
        cls, agent: str, source: str, codec: AvroCodec, registry: ContractRegistry, produces: Iterable[str]
    ) -> Emitter:
        produces = tuple(produces)
        plans = {}
        for event_type in produces:
            contract = registry.get(event_type)
            plans[event_type] = EmitPlan(contract.topic, contract.key_field, emit_key_suffix(agent, event_type))
        return cls(agent, source, codec, plans, produces)

    def undeclared(self, event_type: str) -> EmitError:
        return EmitError(
            f"agent {self.agent!r} emitted {event_type!r}, which it does not declare in produces "
            f"({', '.join(self.produces) or 'nothing'})"
        )

    def build(
        self,
        plan: EmitPlan,
        cause: Envelope,
        event_type: str,
        key: str | bytes | None,
        value: dict[str, Any],
        data: bytes,
        idempotency_key: str | None,
        tenant: str | None,
        ordinal: int,
        now: dt.datetime,
    ) -> Emitted:
        """The ``ordinal``-th ``event_type`` follow-up of ``cause``: what ``Envelope.child`` gives
        (same flow and trace, caused by ``cause``, one hop further), built in one step, with the
        idempotency key (unless given) and the id derived, so a replay emits the same ones."""
        if idempotency_key is None:
            # ids.emit_key(cause key, agent, type, ordinal), the constant parts precomputed
            idempotency_key = uuid_from_sha1(
                EMIT_KEY_PREFIX + cause.idempotency_key.encode("utf-8") + plan.key_suffix + str(ordinal).encode()
            )
        cause_id = cause.id
        envelope = build_envelope(
            uuid_from_sha1(EVENT_ID_PREFIX + idempotency_key.encode("utf-8")),  # ids.derived_id
            event_type,
            self.source,
            now,
            idempotency_key,
            cause.correlation_id or cause_id,
            cause_id,
            tenant if tenant is not None else cause.tenant,
            cause.hop_count + 1,
            cause.traceparent,
            cause.tracestate,
            AVRO_CONTENT_TYPE,
            SPEC_VERSION,
            cause.flow_root_ms,  # ce_roottime, as Envelope.child carries it
        )
        if key is None:
            key_value = value.get(plan.key_field)  # type: ignore[arg-type]
            key = None if key_value is None else str(key_value)
        elif isinstance(key, bytes):
            key = key.decode("utf-8")
        return _emitted(event_type, plan.topic, key, value, envelope, data)


__all__ = ["EmitError", "EmitPlan", "Emitted", "Emitter"]
