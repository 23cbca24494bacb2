"""Event metadata as CloudEvents Kafka-binding headers, so any consumer can route and trace an event
without decoding its payload.

Binary content mode: the payload is the Avro value, the attributes travel as ``ce_*`` headers
(UTF-8 strings), plus our extensions (idempotency key, correlation and causation ids, tenant, hop
count, root time) and W3C trace context. :meth:`Envelope.from_headers` runs for every consumed event, so it is
one pass over the header list with no regular expressions on the required attributes.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from processors.contracts.errors import EnvelopeError, snippet
from processors.contracts.ids import child_key
from processors.contracts.slotted import slot_builder

CE_ID = "ce_id"
CE_TYPE = "ce_type"
CE_SOURCE = "ce_source"
CE_TIME = "ce_time"
CE_SPECVERSION = "ce_specversion"
CONTENT_TYPE = "content-type"
CE_IDEMPOTENCYKEY = "ce_idempotencykey"
CE_CORRELATIONID = "ce_correlationid"
CE_CAUSATIONID = "ce_causationid"
CE_TENANT = "ce_tenant"
CE_HOPCOUNT = "ce_hopcount"
# The time of the flow's root event, epoch milliseconds in decimal: set by Envelope.child (from the
# root's ce_time at the first hop, then carried on), so an agent emitting a terminal event knows the
# flow time. Measurement only: a malformed value is dropped, never a reason to refuse the event.
CE_ROOTTIME = "ce_roottime"
MAX_ROOTTIME_DIGITS = 15
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

SPEC_VERSION = "1.0"
AVRO_CONTENT_TYPE = "application/avro"
REQUIRED_HEADERS = (CE_ID, CE_TYPE, CE_SOURCE, CE_SPECVERSION, CE_TIME, CE_IDEMPOTENCYKEY)
_KNOWN = frozenset(
    REQUIRED_HEADERS
    + (CONTENT_TYPE, CE_CORRELATIONID, CE_CAUSATIONID, CE_TENANT, CE_HOPCOUNT, TRACEPARENT, TRACESTATE, CE_ROOTTIME)
)
# The longest value a CloudEvents header of ours may have. Whatever is read from these headers is
# carried on: into follow-up events (correlation id, tenant, trace context), audit records, dead
# letter headers and log lines. A producer that writes a 520 KB ce_type would otherwise grow every
# one of them past what a Kafka producer accepts; such a record is refused here, by name.
MAX_HEADER_BYTES = 1024
MAX_HOP_DIGITS = 6
_UTC = dt.UTC
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

Headers = Sequence[tuple[str, bytes | str | None]] | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """The CloudEvents attributes and choreography extensions of one event."""

    id: str
    type: str
    source: str
    time: dt.datetime
    idempotency_key: str
    correlation_id: str | None = None
    causation_id: str | None = None
    tenant: str | None = None
    hop_count: int = 0
    traceparent: str | None = None
    tracestate: str | None = None
    content_type: str = AVRO_CONTENT_TYPE
    specversion: str = SPEC_VERSION
    root_time_ms: int | None = None  # ce_roottime: when the flow's root event happened (None: this is the root)

    @property
    def flow_root_ms(self) -> int:
        """When this event's flow began: the root time carried, else this event's own time (a root)."""
        root = self.root_time_ms
        return time_ms(self.time) if root is None else root

    @classmethod
    def new(
        cls,
        event_type: str,
        source: str,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        tenant: str | None = None,
        hop_count: int = 0,
        traceparent: str | None = None,
    ) -> Envelope:
        """A fresh envelope; a root event is its own idempotency key and correlation id by default."""
        event_id = str(uuid.uuid4())
        return cls(
            id=event_id,
            type=event_type,
            source=source,
            time=dt.datetime.now(dt.UTC),
            idempotency_key=idempotency_key or event_id,
            correlation_id=correlation_id or event_id,
            causation_id=causation_id,
            tenant=tenant,
            hop_count=hop_count,
            traceparent=traceparent,
        )

    def child(self, event_type: str, source: str, idempotency_key: str | None = None) -> Envelope:
        """The envelope of an event emitted because of this one.

        Same flow (correlation id, tenant, trace), caused by this event, one hop further. The
        idempotency key is derived from this event's key and the new type, so a retried or replayed
        step emits the same key and downstream deduplication collapses it.
        """
        if self.__class__ is not Envelope:
            return replace(
                self,
                id=str(uuid.uuid4()),
                type=event_type,
                source=source,
                time=dt.datetime.now(dt.UTC),
                idempotency_key=idempotency_key or child_key(self.idempotency_key, event_type),
                correlation_id=self.correlation_id or self.id,
                causation_id=self.id,
                hop_count=self.hop_count + 1,
                content_type=AVRO_CONTENT_TYPE,
                root_time_ms=self.flow_root_ms,
            )
        # dataclasses.replace, field for field, without its generic machinery.
        return build_envelope(
            str(uuid.uuid4()),
            event_type,
            source,
            dt.datetime.now(dt.UTC),
            idempotency_key or child_key(self.idempotency_key, event_type),
            self.correlation_id or self.id,
            self.id,
            self.tenant,
            self.hop_count + 1,
            self.traceparent,
            self.tracestate,
            AVRO_CONTENT_TYPE,
            self.specversion,
            self.flow_root_ms,
        )

    def to_headers(self) -> list[tuple[str, bytes]]:
        headers = [
            (CE_ID, self.id.encode()),
            (CE_TYPE, self.type.encode()),
            (CE_SOURCE, self.source.encode()),
            (CE_SPECVERSION, self.specversion.encode()),
            (CE_TIME, format_time(self.time).encode()),
            (CONTENT_TYPE, self.content_type.encode()),
            (CE_IDEMPOTENCYKEY, self.idempotency_key.encode()),
            (CE_HOPCOUNT, str(self.hop_count).encode()),
        ]
        # Unrolled (this runs for every emitted event): same names, same order as a loop would give.
        value = self.correlation_id
        if value is not None:
            headers.append((CE_CORRELATIONID, value.encode()))
        value = self.causation_id
        if value is not None:
            headers.append((CE_CAUSATIONID, value.encode()))
        value = self.tenant
        if value is not None:
            headers.append((CE_TENANT, value.encode()))
        value = self.traceparent
        if value is not None:
            headers.append((TRACEPARENT, value.encode()))
        value = self.tracestate
        if value is not None:
            headers.append((TRACESTATE, value.encode()))
        root = self.root_time_ms
        if root is not None:
            headers.append((CE_ROOTTIME, str(root).encode()))
        return headers

    @classmethod
    def from_headers(cls, headers: Headers) -> Envelope:
        """Read the envelope of a consumed message; :class:`EnvelopeError` names the bad header.

        An invalid ``traceparent`` is dropped rather than refused: W3C trace context says a
        receiver restarts the trace, and an event must not be dead-lettered for its tracing.
        """
        if headers.__class__ is list:
            fields = read_header_fields(headers)
            if fields is not None:
                return build_envelope(*fields) if cls is Envelope else cls(*fields)
        fields = read_header_fields_reference(headers)
        return build_envelope(*fields) if cls is Envelope else cls(*fields)


def read_header_fields(headers: list[tuple[str, bytes | str | None]]) -> tuple | None:
    """The envelope fields of a header list in which no name repeats (what every producer of ours
    and every CloudEvents binding writes), from one ``dict()`` of the list instead of a Python
    loop over it. None when a name repeats or a known header is not UTF-8 text: the reference pass
    (:func:`read_header_fields_reference`) then decides, so which value wins and which error is raised stay
    exactly as they were. The required checks run in the reference's order, with its messages."""
    values: dict[str, Any] = dict(headers)  # values: bytes, or str (checked by class below)
    if len(values) != len(headers):
        return None
    get = values.get
    try:
        # a header present with a None value counts as absent, as in the reference pass; the value
        # is text as given or the UTF-8 decoding of its bytes, as there
        ident = get(CE_ID)
        if ident is not None and ident.__class__ is not str:
            ident = ident.decode()
        etype = get(CE_TYPE)
        if etype is not None and etype.__class__ is not str:
            etype = etype.decode()
        source = get(CE_SOURCE)
        if source is not None and source.__class__ is not str:
            source = source.decode()
        spec = get(CE_SPECVERSION)
        if spec is not None and spec.__class__ is not str:
            spec = spec.decode()
        time = get(CE_TIME)
        if time is not None and time.__class__ is not str:
            time = time.decode()
        idem = get(CE_IDEMPOTENCYKEY)
        if idem is not None and idem.__class__ is not str:
            idem = idem.decode()
        content_type = get(CONTENT_TYPE)
        if content_type is None:
            content_type = AVRO_CONTENT_TYPE
        elif content_type.__class__ is not str:
            content_type = content_type.decode()
        correlation = get(CE_CORRELATIONID)
        if correlation is not None and correlation.__class__ is not str:
            correlation = correlation.decode()
        causation = get(CE_CAUSATIONID)
        if causation is not None and causation.__class__ is not str:
            causation = causation.decode()
        tenant = get(CE_TENANT)
        if tenant is not None and tenant.__class__ is not str:
            tenant = tenant.decode()
        hops = get(CE_HOPCOUNT)
        if hops is not None and hops.__class__ is not str:
            hops = hops.decode()
        traceparent = get(TRACEPARENT)
        if traceparent is not None and traceparent.__class__ is not str:
            traceparent = traceparent.decode()
        tracestate = get(TRACESTATE)
        if tracestate is not None and tracestate.__class__ is not str:
            tracestate = tracestate.decode()
        root = get(CE_ROOTTIME)
        if root is not None and root.__class__ is not str:
            root = root.decode()
    except (UnicodeDecodeError, AttributeError):  # let the reference pass name the first bad header
        return None
    for text in (
        ident,
        etype,
        source,
        spec,
        time,
        idem,
        content_type,
        correlation,
        causation,
        tenant,
        hops,
        traceparent,
        tracestate,
        root,
    ):
        if text is not None and len(text) > MAX_HEADER_BYTES:
            return None  # the reference pass names it
    if not ident:
        raise EnvelopeError(CE_ID, "missing" if ident is None else "empty")
    if not etype:
        raise EnvelopeError(CE_TYPE, "missing" if etype is None else "empty")
    if not source:
        raise EnvelopeError(CE_SOURCE, "missing" if source is None else "empty")
    if not spec:
        raise EnvelopeError(CE_SPECVERSION, "missing" if spec is None else "empty")
    if not time:
        raise EnvelopeError(CE_TIME, "missing" if time is None else "empty")
    if not idem:
        raise EnvelopeError(CE_IDEMPOTENCYKEY, "missing" if idem is None else "empty")
    if spec != SPEC_VERSION:
        raise EnvelopeError(CE_SPECVERSION, f"unsupported CloudEvents version {snippet(spec)}, expected '1.0'")
    if traceparent is not None and not _TRACEPARENT.match(traceparent):
        traceparent = None
    return (
        ident,
        etype,
        source,
        parse_time(time),
        idem,
        correlation,
        causation,
        tenant,
        0 if hops is None else _hop_count(hops),
        traceparent,
        tracestate if traceparent is not None else None,
        content_type,
        SPEC_VERSION,
        _root_time(root),
    )


def read_header_fields_reference(headers: Headers) -> tuple:
    """The envelope fields by one pass over the headers in order (a repeated name: the last
    non-None value wins; the first known header that is not UTF-8 is the error)."""
    values: dict[str, str] = {}
    for name, raw in headers or ():
        if name in _KNOWN and raw is not None:
            if len(raw) > MAX_HEADER_BYTES:
                raise EnvelopeError(name, f"{len(raw)} bytes long, over the limit of {MAX_HEADER_BYTES}")
            try:
                values[name] = raw if raw.__class__ is str else cast(bytes, raw).decode()
            except UnicodeDecodeError:
                raise EnvelopeError(name, f"not UTF-8 text: {snippet(raw[:40])}") from None
    for name in REQUIRED_HEADERS:
        if not values.get(name):
            raise EnvelopeError(name, "missing" if name not in values else "empty")
    if values[CE_SPECVERSION] != SPEC_VERSION:
        raise EnvelopeError(
            CE_SPECVERSION, f"unsupported CloudEvents version {snippet(values[CE_SPECVERSION])}, expected '1.0'"
        )
    traceparent = values.get(TRACEPARENT)
    if traceparent is not None and not _TRACEPARENT.match(traceparent):
        traceparent = None
    time = parse_time(values[CE_TIME])
    hop_count = _hop_count(values.get(CE_HOPCOUNT))
    return (
        values[CE_ID],
        values[CE_TYPE],
        values[CE_SOURCE],
        time,
        values[CE_IDEMPOTENCYKEY],
        values.get(CE_CORRELATIONID),
        values.get(CE_CAUSATIONID),
        values.get(CE_TENANT),
        hop_count,
        traceparent,
        values.get(TRACESTATE) if traceparent is not None else None,
        values.get(CONTENT_TYPE, AVRO_CONTENT_TYPE),
        SPEC_VERSION,
        _root_time(values.get(CE_ROOTTIME)),
    )


# Building a frozen dataclass through its __init__ costs one ``object.__setattr__`` lookup and call per
# field (about 1.8 µs for an envelope); the per-event paths build it with every field given, without
# __init__ (see processors.contracts.slotted, ~0.4 µs).
build_envelope: Callable[..., Envelope] = slot_builder(Envelope)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
# "YYYY-MM-DDTHH:MM:SS" by UTC second since the epoch: isoformat() is ~1.4 µs, this cache ~0.4 µs,
# and every emitted event's ce_time is formatted.
_SECOND_TEXT: dict[int, str] = {}


def format_time(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; milliseconds unless the value carries microseconds."""
    if value.__class__ is dt.datetime and value.tzinfo is _UTC:
        # Already UTC (every envelope this package makes or parses from a "Z"): the same text as
        # isoformat(timespec=...), with the seconds part cached per second.
        delta = value - _EPOCH
        second = delta.days * 86400 + delta.seconds
        prefix = _SECOND_TEXT.get(second)
        if prefix is None:
            if len(_SECOND_TEXT) >= 4096:
                _SECOND_TEXT.clear()
            prefix = _SECOND_TEXT[second] = value.replace(microsecond=0).isoformat()[:-6]
        micro = value.microsecond
        return prefix + (f".{micro:06d}Z" if micro % 1000 else f".{micro // 1000:03d}Z")
    if value.tzinfo is None:
        raise ValueError("envelope time must be timezone-aware")
    utc = value.astimezone(dt.UTC)
    spec = "milliseconds" if utc.microsecond % 1000 == 0 else "microseconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp (``Z`` or offset required, as RFC 3339 demands)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise EnvelopeError(CE_TIME, f"not an RFC 3339 timestamp: {snippet(text)}") from None
    if value.tzinfo is None or "T" not in text.upper():
        raise EnvelopeError(
            CE_TIME, f"not an RFC 3339 timestamp (needs a date, 'T', a time and an offset): {snippet(text)}"
        )
    return value


def time_ms(value: dt.datetime) -> int:
    """Epoch milliseconds of an aware datetime (what ce_roottime carries)."""
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _root_time(text: str | None) -> int | None:
    """A ce_roottime value: decimal epoch milliseconds of at most MAX_ROOTTIME_DIGITS digits; anything
    else is dropped (the flow-time metric skips the event) rather than refused."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > MAX_ROOTTIME_DIGITS:
        return None
    return int(text)


def _hop_count(text: str | None) -> int:
    if text is None:
        return 0
    if not text.isdigit() or not text.isascii() or len(text) > MAX_HOP_DIGITS:
        raise EnvelopeError(
            CE_HOPCOUNT,
            f"expected a non-negative decimal integer of at most {MAX_HOP_DIGITS} digits, got {snippet(text)}",
        )
    return int(text)
