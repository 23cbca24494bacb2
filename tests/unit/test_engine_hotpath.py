"""The shortcuts of the per-event path give exactly what the plain code they replace gives.

Each shortcut keeps its reference beside it (or here): the envelope's one-``dict()`` header read
against the reference pass over the list, slot-built dataclasses against their ``__init__``, the
redaction check against redacting, the varint memo and the inlined length varints against the
plain encoder, batched histogram observations against ``observe``, and a store apply that reuses the
batch's reads against one that reads again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from processors.contracts import Envelope, EnvelopeError
from processors.contracts.codegen import compile_writer, zigzag, zigzag_varint
from processors.contracts.envelope import build_envelope, parse_time, read_header_fields, read_header_fields_reference
from processors.contracts.ids import derived_id, uuid_from_sha1
from processors.contracts.slotted import slot_builder
from processors.runtime.agent import Event
from processors.runtime.audit import Redactor, state_json
from processors.runtime.emitter import Emitted
from processors.runtime.metrics import HANDLER_BUCKETS, AgentMetrics
from processors.runtime.state import BatchView, MemoryStore, keys

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------- envelope headers
KNOWN = [
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_specversion",
    "ce_time",
    "ce_idempotencykey",
    "content-type",
    "ce_correlationid",
    "ce_causationid",
    "ce_tenant",
    "ce_hopcount",
    "traceparent",
    "tracestate",
]
GOOD: dict[str, list[Any]] = {
    "ce_id": [b"e-1", b"", "e-2"],
    "ce_type": [b"order.created", b""],
    "ce_source": [b"/s", b""],
    "ce_specversion": [b"1.0", b"0.3", b"", "1.0"],
    "ce_time": [
        b"2024-05-01T12:30:15.123Z",
        b"2024-05-01T12:30:15+02:00",
        b"2024-05-01",
        b"nope",
        b"2024-05-01T12:30:15",
        b"2024-05-01 12:30:15Z",
        b"",
    ],
    "ce_idempotencykey": [b"k-1", b"", "k-2"],
    "content-type": [b"application/avro", b"application/json"],
    "ce_correlationid": [b"c", b""],
    "ce_causationid": [b"x"],
    "ce_tenant": [b"acme", "t\u00e9"],
    "ce_hopcount": [b"0", b"3", b"-1", b"x", "\u0663", b""],
    "traceparent": [b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"00-zz", b""],
    "tracestate": [b"a=1"],
}
values = st.one_of(st.none(), st.binary(max_size=6), st.sampled_from([b"\xff\xfe", b"\xc3"]))


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, object]]:
    names = draw(st.lists(st.sampled_from(KNOWN + ["x-other", "ce_other"]), max_size=18))
    if draw(st.booleans()):  # mostly complete envelopes, so the later checks are reached too
        names = KNOWN[:6] + names
    out = []
    for name in names:
        choices = GOOD.get(name, [b"v"])
        out.append((name, draw(st.one_of(st.sampled_from(choices), values))))
    return draw(st.permutations(out)) if draw(st.booleans()) else out


def _outcome(fn, headers):
    try:
        return ("ok", fn(headers))
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        return ("error", type(exc), str(exc), getattr(exc, "header", None))


@settings(max_examples=1500, deadline=None)
@given(header_lists())
def test_fast_header_read_equals_the_reference_pass(headers):
    fast = _outcome(read_header_fields, headers)
    reference = _outcome(read_header_fields_reference, headers)
    if fast == ("ok", None):  # the fast read declined: from_headers runs the reference pass
        assert len({n for n, _ in headers}) != len(headers) or any(
            isinstance(v, bytes) and n in KNOWN and _not_utf8(v) for n, v in headers
        )
    else:
        assert fast == reference
    assert _outcome(Envelope.from_headers, headers) == _outcome(
        lambda h: Envelope(*read_header_fields_reference(h)), headers
    )


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_repeated_header_names_keep_the_last_non_none_value():
    base = [
        ("ce_id", b"a"),
        ("ce_type", b"t"),
        ("ce_source", b"/s"),
        ("ce_specversion", b"1.0"),
        ("ce_time", b"2024-05-01T12:30:15Z"),
    ]
    env = Envelope.from_headers(base + [("ce_idempotencykey", b"k1"), ("ce_idempotencykey", None)])
    assert env.idempotency_key == "k1"
    env = Envelope.from_headers(base + [("ce_idempotencykey", b"k1"), ("ce_idempotencykey", b"k2")])
    assert env.idempotency_key == "k2"
    with pytest.raises(EnvelopeError) as info:  # the first bad known header in list order is named
        Envelope.from_headers(base + [("ce_tenant", b"\xff"), ("ce_idempotencykey", b"\xfe")])
    assert info.value.header == "ce_tenant"


def test_parse_time_unchanged_acceptance():
    assert parse_time("2024-05-01T12:30:15.5+02:00") == dt.datetime(2024, 5, 1, 10, 30, 15, 500000, tzinfo=dt.UTC)
    for bad in ("2024-05-01", "2024-05-01T12:30:15", "yesterday"):
        with pytest.raises(EnvelopeError):
            parse_time(bad)


# ---------------------------------------------------------------------------- slot-built dataclasses
UTC = dt.UTC


@given(st.text(max_size=8), st.text(max_size=8), st.integers(0, 50), st.none() | st.text(max_size=5))
def test_slot_built_envelope_event_emitted_equal_init(ident, key, hops, tenant):
    now = dt.datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    fields = (
        ident,
        "t.x",
        "/s",
        now,
        key,
        None,
        ident,
        tenant,
        hops,
        None,
        None,
        "application/avro",
        "1.0",
        1735787045000,
    )
    built, init = build_envelope(*fields), Envelope(*fields)
    assert built == init and hash(built) == hash(init) and repr(built) == repr(init)
    assert type(built) is Envelope
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = "other"  # type: ignore[misc]
    for cls, args in (
        (Event, ("t.x", key, {"a": 1}, init, "topic", 1, 2, 3)),
        (Emitted, ("t.x", "topic", key, {"a": 1}, init, b"data")),
    ):
        b, i = slot_builder(cls)(*args), cls(*args)
        assert b == i and type(b) is cls and repr(b) == repr(i)


def test_slot_builder_refuses_classes_it_cannot_build():
    @dataclasses.dataclass
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        slot_builder(NoSlots)


# ---------------------------------------------------------------------------- derived ids
@given(st.text(max_size=30))
def test_derived_ids_are_uuid5(name):
    import uuid

    ns = uuid.UUID("7d0d8a52-0a43-4b7e-8f39-2b1b9d6a4c11")
    assert derived_id(name) == str(uuid.uuid5(ns, name))
    assert uuid_from_sha1(ns.bytes + name.encode()) == str(uuid.uuid5(ns, name))


# ---------------------------------------------------------------------------- redaction
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.text(max_size=4))
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(["a", "email", "card_token", "n", "items"]), children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "email", "card_token", "n", "items"]), json_values, max_size=5),
    st.sampled_from([[], ["email"], ["items[].card_token", "email"]]),
)
def test_state_json_redacts_only_what_redact_would(state, pii):
    redactor = Redactor(pii)
    reference = orjson.dumps(redactor.redact(state), option=orjson.OPT_SORT_KEYS).decode()
    assert state_json(state, redactor) == reference
    assert redactor.touches(state) == (bool(redactor.names) and _has_pii_key(state, redactor.names))


def _has_pii_key(value, names) -> bool:
    if isinstance(value, dict):
        return any(k in names or _has_pii_key(v, names) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_pii_key(v, names) for v in value)
    return False


# ---------------------------------------------------------------------------- audit writer
AUDIT = json.loads((REPO / "schemas" / "audit.record" / "v1.avsc").read_text())
PARSED = fastavro.parse_schema(AUDIT)
ENCODE = compile_writer(AUDIT)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_zigzag_table_and_memo_equal_the_loop(n):
    assert zigzag(n) == zigzag_varint(n)
    assert zigzag(n) == zigzag(n)  # from the memo the second time


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 20_000), st.integers(0, 9000), st.integers(-2, 2**40))
def test_long_strings_and_arrays_in_the_audit_writer(n, m, ts):
    record = {
        "agent_name": "a" * n,
        "agent_version": "1",
        "worker_id": "é" * m,
        "input_event_id": "x",
        "input_event_type": "t",
        "topic": "t",
        "partition": 0,
        "offset": ts,
        "outcome": "PROCESSED",
        "state_before": "s" * m,
        "state_after": None,
        "emitted_event_ids": ["i" * m, ""],
        "correlation_id": None,
        "received_at": ts,
        "handled_at": ts + 1,
        "error": "e" * n,
    }
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    assert ENCODE(record) == out.getvalue()


# ---------------------------------------------------------------------------- metrics
def test_batched_handler_histogram_equals_observe():
    from processors.runtime.metrics import HANDLER_SECONDS

    metrics = AgentMetrics("hotpath-test")
    reference = Histogram("hotpath_ref", "x", buckets=HANDLER_BUCKETS, registry=CollectorRegistry())
    samples = [0.0, 0.00005, 0.00007, 0.0003, 0.001, 0.01, 0.3, 4.9, 5.0, 7.5] * 3
    for x in samples:
        metrics.handler_latency(x)
        reference.observe(x)
    metrics.flush()

    def buckets(metric, label):
        return [
            (s.labels["le"], s.value)
            for s in metric.collect()[0].samples
            if s.name.endswith("_bucket") and s.labels.get("agent", "") == label
        ]

    assert buckets(HANDLER_SECONDS, "hotpath-test") == buckets(reference, "")
    count = [
        s.value
        for s in HANDLER_SECONDS.collect()[0].samples
        if s.name.endswith("_count") and s.labels["agent"] == "hotpath-test"
    ]
    assert count == [len(samples)]
    metrics.flush()  # nothing new: nothing added
    assert buckets(HANDLER_SECONDS, "hotpath-test") == buckets(reference, "")


# ---------------------------------------------------------------------------- store apply with known reads
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c"]),
            st.sampled_from(["seen", "timer", "state"]),
            st.one_of(st.none(), st.integers(0, 5)),
        ),
        max_size=12,
    ),
    st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.sampled_from(["seen", "timer"]), st.integers(0, 5)),
        max_size=6,
    ),
)
def test_apply_with_the_batch_reads_equals_apply_reading_again(ops, initial):
    def key(k: bytes, kind: str) -> bytes:
        return {"seen": keys.SEEN + k, "timer": keys.TIMER + k + b"\x00n", "state": keys.STATE + k}[kind]

    stores = MemoryStore(), MemoryStore()
    for store in stores:
        store.apply({key(k, kind): keys.pack_u64(v) + b"r" for k, kind, v in initial})
    views = [BatchView(s) for s in stores]
    for k, kind, v in ops:
        for view in views:
            view.get(key(k, kind))
            view.put(key(k, kind), None if v is None else keys.pack_u64(v) + b"w")
    stores[0].apply(views[0].writes, 7, views[0].reads)
    stores[1].apply(views[1].writes, 7)
    assert stores[0].items() == stores[1].items()


def test_batched_histogram_exposes_what_a_prometheus_histogram_does():
    from prometheus_client import generate_latest

    from processors.runtime.metrics import BatchedHistogram

    ours_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    ours = BatchedHistogram("h_seconds", "doc", ["agent"], HANDLER_BUCKETS, registry=ours_registry)
    reference = Histogram("h_seconds", "doc", ["agent"], buckets=HANDLER_BUCKETS, registry=reference_registry)
    samples = [0.0, 0.00005, 0.0003, 0.01, 4.9, 7.5, -0.001, float("nan")]
    for agent in ("a", "b"):
        binned = [0] * len(ours.bounds)
        total = 0.0
        for x in samples:
            reference.labels(agent).observe(x)
            if x >= 0.0:
                binned[next(i for i, b in enumerate(ours.bounds) if x <= b)] += 1
                total += x
            else:
                ours.labels(agent).observe(x)
        ours.labels(agent).add(binned, total)

    def exposition(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert exposition(ours_registry) == exposition(reference_registry)
    assert [m.name for m in ours_registry.collect()] == [m.name for m in reference_registry.collect()]
