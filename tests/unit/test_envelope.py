"""The CloudEvents envelope: header names and encodings, derivation, and typed input errors."""

from __future__ import annotations

import datetime as dt

import pytest

from processors.contracts import ContractError, Envelope, EnvelopeError
from processors.contracts.ids import child_key as derive_key

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADERS = [
    ("ce_id", b"evt-1"),
    ("ce_type", b"order.created"),
    ("ce_source", b"/shop/checkout"),
    ("ce_specversion", b"1.0"),
    ("ce_time", b"2024-05-01T12:30:15.123Z"),
    ("content-type", b"application/avro"),
    ("ce_idempotencykey", b"checkout-42"),
    ("ce_hopcount", b"0"),
    ("ce_correlationid", b"flow-7"),
    ("ce_tenant", b"acme"),
    ("traceparent", TRACEPARENT.encode()),
]


def test_from_headers_reads_every_attribute() -> None:
    env = Envelope.from_headers(HEADERS + [("x-other", b"ignored"), ("ce_causationid", None)])
    assert env == Envelope(
        id="evt-1",
        type="order.created",
        source="/shop/checkout",
        time=dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=dt.UTC),
        idempotency_key="checkout-42",
        correlation_id="flow-7",
        causation_id=None,
        tenant="acme",
        hop_count=0,
        traceparent=TRACEPARENT,
    )


def test_to_headers_round_trips_and_uses_binding_names() -> None:
    env = Envelope.from_headers(HEADERS)
    headers = env.to_headers()
    assert headers == [
        ("ce_id", b"evt-1"),
        ("ce_type", b"order.created"),
        ("ce_source", b"/shop/checkout"),
        ("ce_specversion", b"1.0"),
        ("ce_time", b"2024-05-01T12:30:15.123Z"),
        ("content-type", b"application/avro"),
        ("ce_idempotencykey", b"checkout-42"),
        ("ce_hopcount", b"0"),
        ("ce_correlationid", b"flow-7"),
        ("ce_tenant", b"acme"),
        ("traceparent", TRACEPARENT.encode()),
    ]
    assert Envelope.from_headers(headers) == env


def test_new_generates_id_time_and_defaults_keys_to_the_id() -> None:
    before = dt.datetime.now(dt.UTC)
    env = Envelope.new("order.created", "/shop")
    assert len(env.id) == 36 and env.idempotency_key == env.id and env.correlation_id == env.id
    assert before <= env.time <= dt.datetime.now(dt.UTC)
    assert (env.specversion, env.content_type, env.hop_count, env.causation_id) == ("1.0", "application/avro", 0, None)
    assert Envelope.new("order.created", "/shop").id != env.id


def test_child_continues_the_flow() -> None:
    cause = Envelope.from_headers(HEADERS)
    child = cause.child("payment.authorized", "/payments")
    assert child.type == "payment.authorized" and child.source == "/payments" and child.id != cause.id
    assert child.correlation_id == "flow-7"
    assert child.causation_id == "evt-1"
    assert child.hop_count == 1
    assert child.traceparent == TRACEPARENT and child.tenant == "acme"
    # Deterministic: a retried step derives the same key, so downstream dedupe collapses it.
    assert child.idempotency_key == cause.child("payment.authorized", "/payments").idempotency_key
    assert child.idempotency_key == derive_key("checkout-42", "payment.authorized")
    assert child.idempotency_key != cause.child("payment.declined", "/payments").idempotency_key
    assert cause.child("x", "/y", idempotency_key="explicit").idempotency_key == "explicit"


@pytest.mark.parametrize("header", ["ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "ce_idempotencykey"])
def test_missing_required_header_is_named(header: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_headers([h for h in HEADERS if h[0] != header])
    assert info.value.header == header
    assert str(info.value) == f"header {header}: missing"
    assert isinstance(info.value, ContractError)


HOPS = "expected a non-negative decimal integer of at most 6 digits"


@pytest.mark.parametrize(
    "header,value,message",
    [
        ("ce_hopcount", b"-1", f"header ce_hopcount: {HOPS}, got '-1'"),
        ("ce_hopcount", b"two", f"header ce_hopcount: {HOPS}, got 'two'"),
        ("ce_time", b"yesterday", "header ce_time: not an RFC 3339 timestamp: 'yesterday'"),
        (
            "ce_time",
            b"2024-05-01T12:30:15",
            "header ce_time: not an RFC 3339 timestamp (needs a date, 'T', a time and an offset): "
            "'2024-05-01T12:30:15'",
        ),
        ("ce_specversion", b"0.3", "header ce_specversion: unsupported CloudEvents version '0.3', expected '1.0'"),
        ("ce_id", b"", "header ce_id: empty"),
        ("ce_type", b"\xff\xfe", "header ce_type: not UTF-8 text: b'\\xff\\xfe'"),
    ],
)
def test_malformed_header_is_named(header: str, value: bytes, message: str) -> None:
    headers = [(name, value if name == header else raw) for name, raw in HEADERS]
    with pytest.raises(EnvelopeError) as info:
        Envelope.from_headers(headers)
    assert (info.value.header, str(info.value)) == (header, message)


def test_no_headers_at_all() -> None:
    with pytest.raises(EnvelopeError, match="header ce_id: missing"):
        Envelope.from_headers(None)


def test_optional_headers_default_and_bad_traceparent_is_dropped() -> None:
    required = [
        h
        for h in HEADERS
        if h[0] in ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "ce_idempotencykey")
    ]
    env = Envelope.from_headers(required + [("traceparent", b"garbage"), ("tracestate", b"a=b")])
    assert (env.hop_count, env.correlation_id, env.tenant, env.traceparent, env.tracestate) == (
        0,
        None,
        None,
        None,
        None,
    )
    assert env.content_type == "application/avro"


def test_time_with_offset_and_microseconds_is_normalised_to_utc() -> None:
    headers = [(n, b"2024-05-01T14:30:15.123456+02:00" if n == "ce_time" else v) for n, v in HEADERS]
    env = Envelope.from_headers(headers)
    assert dict(env.to_headers())["ce_time"] == b"2024-05-01T12:30:15.123456Z"


# ---------------------------------------------------------------------- fast paths agree with the plain ones
from dataclasses import replace  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from processors.contracts.envelope import build_envelope, format_time  # noqa: E402


def test_fast_construction_equals_the_dataclass_constructor() -> None:
    env = Envelope.from_headers(HEADERS + [("tracestate", b"a=b"), ("ce_causationid", b"c-1")])
    assert env == Envelope(
        id="evt-1",
        type="order.created",
        source="/shop/checkout",
        time=dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=dt.UTC),
        idempotency_key="checkout-42",
        correlation_id="flow-7",
        causation_id="c-1",
        tenant="acme",
        hop_count=0,
        traceparent=TRACEPARENT,
        tracestate="a=b",
    )
    assert type(env) is Envelope and hash(env) == hash(replace(env))
    with pytest.raises(AttributeError):
        env.id = "x"  # type: ignore[misc]
    assert build_envelope(*(getattr(env, name) for name in Envelope.__slots__)) == env


def test_child_equals_dataclasses_replace() -> None:
    cause = Envelope.from_headers(HEADERS + [("tracestate", b"a=b")])
    child = cause.child("payment.authorized", "/payments")
    assert child == replace(
        cause,
        id=child.id,
        type="payment.authorized",
        source="/payments",
        time=child.time,
        idempotency_key=derive_key("checkout-42", "payment.authorized"),
        correlation_id="flow-7",
        causation_id="evt-1",
        hop_count=1,
        content_type="application/avro",
        root_time_ms=cause.flow_root_ms,
    )
    assert child.tracestate == "a=b" and child.specversion == "1.0"


def test_root_time_is_the_roots_time_carried_down_the_flow() -> None:
    root = Envelope.from_headers(HEADERS)
    assert root.root_time_ms is None and ("ce_roottime", b"") not in root.to_headers()
    grandchild = root.child("a.b", "/a").child("c.d", "/c")
    assert grandchild.root_time_ms == root.flow_root_ms == int(root.time.timestamp() * 1000)
    read = Envelope.from_headers(grandchild.to_headers())
    assert read.root_time_ms == root.flow_root_ms, "ce_roottime survives the wire"
    assert read.child("e.f", "/e").root_time_ms == root.flow_root_ms


@pytest.mark.parametrize("bad", [b"-5", b"12.5", b"1" * 16, b"\xd9\xa3", b"abc", "١٢٣".encode()])
def test_a_malformed_root_time_is_dropped_not_refused(bad: bytes) -> None:
    env = Envelope.from_headers(HEADERS + [("ce_roottime", bad)])
    assert env.root_time_ms is None
    assert env.child("a.b", "/a").root_time_ms == int(env.time.timestamp() * 1000)
    assert Envelope.from_headers([*HEADERS, ("ce_roottime", bad), ("ce_roottime", b"7")]).root_time_ms == 7


def _format_time_reference(value: dt.datetime) -> str:
    utc = value.astimezone(dt.UTC)
    spec = "milliseconds" if utc.microsecond % 1000 == 0 else "microseconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


@given(st.datetimes(timezones=st.just(dt.UTC)), st.booleans())
def test_format_time_utc_fast_path(value: dt.datetime, whole_ms: bool) -> None:
    if whole_ms:
        value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    assert format_time(value) == _format_time_reference(value)
    assert format_time(
        value.astimezone(dt.timezone(dt.timedelta(hours=2))) if value.year > 1 else value
    ) == _format_time_reference(value)
