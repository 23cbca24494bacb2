"""Records a hostile world sends, through the pure driver (the worker's per-record path, no Kafka).

Each class from issue 13: a record of any bytes, headers or size ends handled, ignored or
dead-lettered, never raises; everything it puts in a message, header or audit field is bounded;
its dead letter fits the producer's limit; a record not where its key belongs is ``misrouted``;
undecodable personal data never reaches a message. The real-broker counterparts are
tests/integration/test_hostile_*.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors import kafka_types
from processors.contracts import Envelope
from processors.partitioner import partition_for
from processors.runtime import audit, dlq
from processors.runtime.testing import AgentDriver, DriverResult
from tests.engine.app import build_app

TOPIC = "counter.incremented"
LIMIT = dlq.DEFAULT_MAX_RECORD_BYTES
# What any one field of an audit record, a DLQ header added by the engine or a log field may
# carry from a record, at most (the error message bound plus its prefix).
FIELD_BOUND = 2_100


@pytest.fixture(scope="module")
def app():
    return build_app()


@pytest.fixture
def driver(app) -> AgentDriver:
    return AgentDriver(app, "counter", now_ms=1_700_000_000_000)


def good_headers(**kw: Any) -> list[tuple[str, bytes | None]]:
    return list(Envelope.new(TOPIC, "/hostile", **kw).to_headers())


def encoded(app, name: str = "a", by: int = 1, **extra: Any) -> bytes:
    return app.codec.encode(TOPIC, {"name": name, "by": by, **extra})


def record_size(record: Any) -> int:
    headers = sum(len(n.encode()) + len(v or b"") + dlq.HEADER_OVERHEAD_BYTES for n, v in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


def assert_bounded(result: DriverResult) -> None:
    """Every record fits the producer, the audit record and the engine's DLQ headers are short."""
    for record in result.records:
        assert record_size(record) <= LIMIT - dlq.RECORD_OVERHEAD_BYTES, (record.kind, record_size(record))
    if result.audit is not None:
        for name, value in result.audit.items():
            assert len(str(value)) <= FIELD_BOUND, name
    if result.dlq is not None:
        for name, value in result.dlq.headers:
            if name.startswith("choreo_dlq_"):
                assert len(value or b"") <= FIELD_BOUND, name


def with_header(headers: list[tuple[str, bytes | None]], name: str, value: bytes) -> list[tuple[str, bytes | None]]:
    return [(n, v) for n, v in headers if n != name] + [(name, value)]


# ------------------------------------------------------------------------------ item 1: no record stops an agent
def test_a_hop_count_of_thousands_of_digits_is_dead_lettered_by_name(app, driver) -> None:
    r = driver.send_raw(TOPIC, b"a", encoded(app), with_header(good_headers(), "ce_hopcount", b"9" * 5000))
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "missing_header")
    assert "ce_hopcount" in r.dlq_headers["choreo_dlq_error_message"]
    assert_bounded(r)


@pytest.mark.parametrize("name", ["ce_type", "ce_id", "ce_correlationid", "ce_tenant", "tracestate", "ce_time"])
def test_an_oversized_cloudevents_header_is_refused_by_name_and_never_echoed(app, driver, name) -> None:
    r = driver.send_raw(TOPIC, b"a", encoded(app), with_header(good_headers(), name, b"x" * 520_000))
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "missing_header")
    assert f"header {name}: 520000 bytes long" in r.dlq_headers["choreo_dlq_error_message"]
    assert_bounded(r)
    assert r.dlq is not None and (name, b"x" * 520_000) in r.dlq.headers  # the copy fits: kept as it was


def test_a_huge_unknown_header_is_no_reason_to_refuse_and_is_not_carried_on(app, driver) -> None:
    r = driver.send_raw(TOPIC, b"a", encoded(app), good_headers() + [("x-junk", b"j" * 260_000)])
    assert r.outcome == "PROCESSED"
    assert_bounded(r)


def test_a_value_over_the_producer_limit_is_dead_lettered_truncated_with_its_coordinates(driver) -> None:
    value = b"\xc3\x01" + b"\x00" * 1_010_000
    r = driver.send_raw(TOPIC, b"a", value, good_headers())
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "undecodable")
    assert_bounded(r)
    headers = r.dlq_headers
    assert headers["choreo_dlq_truncated"].startswith("value 1010002 -> ")
    assert (headers["choreo_dlq_original_topic"], headers["choreo_dlq_original_offset"]) == (TOPIC, "0")
    assert r.dlq is not None and r.dlq.value == value[: len(r.dlq.value)]


def test_a_dead_letter_that_fits_is_the_original_untouched(app, driver) -> None:
    headers = good_headers() + [("x-big", b"b" * 100_000)]
    r = driver.send_raw(TOPIC, b"a", b"\xc3\x01garbage", headers)
    assert r.dlq is not None and r.dlq.value == b"\xc3\x01garbage"
    assert r.dlq.headers[: len(headers)] == headers
    assert "choreo_dlq_truncated" not in r.dlq_headers


def test_many_headers_and_a_huge_key_are_cut_until_the_copy_fits(driver) -> None:
    headers = good_headers() + [(f"h{i}", b"v" * 900) for i in range(2000)]
    r = driver.send_raw(TOPIC, b"k" * 400_000, b"\x00bad", headers, partition=0)
    assert r.outcome == "DEAD_LETTERED"
    assert_bounded(r)
    assert "key 400000 -> 1024 bytes" in r.dlq_headers["choreo_dlq_truncated"]


def test_unreadable_headers_are_read_as_one_marker_header_and_dead_lettered(driver) -> None:
    class Message:  # what confluent-kafka does for a header name that is not UTF-8
        def headers(self) -> Any:
            raise SystemError("<method 'headers' of 'cimpl.Message' objects> returned a result with an exception set")

    headers = kafka_types.headers(Message())  # type: ignore[arg-type]
    assert kafka_types.unreadable(headers)
    r = driver.send_raw(TOPIC, b"a", b"\xc3\x01x", headers)
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "missing_header")
    assert "could not read the record's headers" in r.dlq_headers["choreo_dlq_error_message"]
    assert r.dlq_headers[kafka_types.UNREADABLE_HEADERS]


def test_an_engine_failure_on_odd_input_is_a_dead_letter_not_a_crash(app, driver, monkeypatch, caplog) -> None:
    """The guard covers the whole per-record path, not known fields: anything raised while one
    record is handled dead-letters that record (reason unexpected_error) and the next goes on."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("something no one foresaw " + "y" * 100_000)

    monkeypatch.setattr(Envelope, "from_headers", classmethod(broken))
    with caplog.at_level(logging.ERROR, logger="choreo.runtime"):
        r = driver.send_raw(TOPIC, b"a", encoded(app), good_headers())
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "unexpected_error")
    assert r.audit is not None and r.audit["outcome"] == "DEAD_LETTERED"
    assert_bounded(r)
    monkeypatch.undo()
    assert driver.send("counter.incremented", {"name": "a", "by": 2}).outcome == "PROCESSED"


def test_headers_of_the_wrong_shape_still_give_a_dead_letter(driver) -> None:
    odd: Any = [("ce_id", 5), (None, b"x"), "not a pair"]
    r = driver.send_raw(TOPIC, b"a", b"\x00", odd)
    assert r.outcome == "DEAD_LETTERED"
    assert_bounded(r)


header_names = st.one_of(
    st.sampled_from(
        [
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_time",
            "ce_specversion",
            "ce_idempotencykey",
            "ce_hopcount",
            "ce_correlationid",
            "ce_tenant",
            "traceparent",
            "tracestate",
            "content-type",
            "choreo_redrive_count",
        ]
    ),
    st.text(max_size=30),
)
header_values = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.builds(lambda c, n: c * n, st.binary(min_size=1, max_size=2), st.integers(0, 300_000)),
    st.sampled_from([b"1.0", b"counter.incremented", b"2024-01-01T00:00:00Z", b"0", b"9" * 5000]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mutations=st.lists(st.tuples(header_names, header_values), max_size=6),
    key=st.one_of(st.none(), st.binary(max_size=40), st.just(b"a")),
    value=st.one_of(st.none(), st.binary(max_size=80), st.just(b"\xc3\x01" + b"\x00" * 1_010_000)),
    partition=st.integers(0, 2),
)
def test_any_record_ends_handled_ignored_or_dead_lettered_within_bounds(
    driver, mutations, key, value, partition
) -> None:
    headers = good_headers()
    for name, raw in mutations:
        headers = with_header(headers, name, raw) if raw is not None else headers + [(name, None)]
    r = driver.send_raw(TOPIC, key, value, headers, partition=partition)
    assert r.outcome in {"PROCESSED", "DUPLICATE", "IGNORED", "DEAD_LETTERED"}
    if r.outcome == "DEAD_LETTERED":
        assert r.reason and r.dlq is not None
    assert_bounded(r)


# ------------------------------------------------------------------------------ item 3: foreign records
def home(key: bytes) -> int:
    return partition_for(key, 3)


def wrong(key: bytes) -> int:
    return (home(key) + 1) % 3


def test_a_record_on_the_partition_of_its_key_is_processed(app, driver) -> None:
    r = driver.send_raw(TOPIC, b"k1", encoded(app, "k1"), good_headers(), partition=home(b"k1"))
    assert r.outcome == "PROCESSED"


def test_a_record_on_another_partition_than_murmur2_of_its_key_is_misrouted(app, driver) -> None:
    r = driver.send_raw(TOPIC, b"k1", encoded(app, "k1"), good_headers(), partition=wrong(b"k1"))
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "misrouted")
    message = r.dlq_headers["choreo_dlq_error_message"]
    assert f"on partition {wrong(b'k1')} of 3" in message and f"on partition {home(b'k1')}" in message
    assert driver.state("k1") is None  # nothing done against the wrong partition's store
    assert list(driver.store.range(b"d\x00", b"d\x01")) == []  # and no seen key recorded there


def test_a_null_key_is_judged_by_its_key_field(app, driver) -> None:
    ok = driver.send_raw(TOPIC, None, encoded(app, "k2"), good_headers(), partition=home(b"k2"))
    assert ok.outcome == "PROCESSED" and driver.state("k2") == {"n": 1, "seq": 1}
    bad = driver.send_raw(TOPIC, None, encoded(app, "k2"), good_headers(), partition=wrong(b"k2"))
    assert (bad.outcome, bad.reason) == ("DEAD_LETTERED", "misrouted")
    assert "its name (the record has no key)" in bad.dlq_headers["choreo_dlq_error_message"]


def test_a_key_that_is_not_the_key_field_is_misrouted_wherever_it_is(app, driver) -> None:
    for partition in range(3):
        r = driver.send_raw(TOPIC, b"other", encoded(app, "k3"), good_headers(), partition=partition)
        assert (r.outcome, r.reason) == ("DEAD_LETTERED", "misrouted")
        assert r.dlq_headers["choreo_dlq_error_message"] == "the record's key is not the value of its key field name"


def test_a_key_that_is_not_utf8_is_misrouted_by_name(app, driver) -> None:
    r = driver.send_raw(TOPIC, b"\xff\xfe", encoded(app, "k4"), good_headers(), partition=home(b"\xff\xfe"))
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "misrouted")
    assert "is not UTF-8 text" in r.dlq_headers["choreo_dlq_error_message"]


def test_the_real_partition_count_decides_not_the_contracts(app) -> None:
    driver = AgentDriver(app, "counter", now_ms=1_700_000_000_000)
    driver.processor.use_partition_counts({TOPIC: 12})
    key = next(k for k in (f"k{i}".encode() for i in range(100)) if partition_for(k, 12) >= 3)
    r = driver.send_raw(TOPIC, key, encoded(app, key.decode()), good_headers(), partition=partition_for(key, 12))
    assert r.outcome == "PROCESSED"


def routed_app(routing: str):
    from processors.runtime import App
    from tests.engine.app import CONTRACTS, SCHEMAS

    app = App("routing-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    @app.agent("by-key", consumes=[TOPIC], routing=routing)
    def by_key(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1

    return app


def test_an_agent_keyed_by_record_key_takes_any_key_but_only_on_its_partition() -> None:
    driver = AgentDriver(routed_app("key"), "by-key", now_ms=1_700_000_000_000)
    app = driver.app
    assert driver.send_raw(TOPIC, b"cust-1", encoded(app, "k5"), good_headers()).outcome == "PROCESSED"
    r = driver.send_raw(TOPIC, b"cust-1", encoded(app, "k5"), good_headers(), partition=wrong(b"cust-1"))
    assert r.reason == "misrouted"


def test_an_agent_routing_any_takes_records_wherever_they_are() -> None:
    driver = AgentDriver(routed_app("any"), "by-key", now_ms=1_700_000_000_000)
    r = driver.send_raw(TOPIC, b"zz", encoded(driver.app, "k6"), good_headers(), partition=wrong(b"zz"))
    assert r.outcome == "PROCESSED"


# ------------------------------------------------------------------------------ item 6: no personal data leaks
def test_invalid_utf8_inside_a_pii_field_never_reaches_messages_headers_audit_or_logs(app, driver, caplog) -> None:
    email = "alice.secret@example.com"
    data = encoded(app, "k7", 1, email=email).replace(b"secret@", b"secr\xfft@")
    with caplog.at_level(logging.DEBUG):
        r = driver.send_raw(TOPIC, b"k7", data, good_headers(), partition=home(b"k7"))
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "undecodable")
    message = r.dlq_headers["choreo_dlq_error_message"]
    assert message.endswith("email (string): not UTF-8 text"), message
    assert r.dlq is not None
    traces = [message, str(r.audit), *(str(v) for n, v in r.dlq.headers if n != "ce_id"), caplog.text]
    traces += [repr(rec.__dict__) for rec in caplog.records]
    for piece in ("alice", "secr", "example.com"):
        assert not any(piece in t for t in traces), piece


def test_a_handler_error_quoting_pii_is_scrubbed(driver) -> None:
    r = driver.send("counter.incremented", {"name": "k8", "by": -1, "email": "bob.private@example.com"})
    assert r.reason == "handler_error"
    assert "bob.private" not in r.dlq_headers["choreo_dlq_error_message"]
    assert "bob.private" not in str(r.audit)


def test_an_emit_refused_by_its_contract_names_types_not_values() -> None:
    from processors.runtime import App
    from tests.engine.app import CONTRACTS, SCHEMAS

    app = App("emit-pii", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    @app.agent("echo", consumes=[TOPIC], produces=["counter.total"])
    def echo(event, ctx):
        ctx.emit("counter.total", event.key, {"name": event.key, "total": "4111111111111111", "seq": 1})

    driver = AgentDriver(app, "echo", now_ms=1_700_000_000_000)
    r = driver.send(TOPIC, {"name": "k9", "by": 1})
    assert r.reason == "invalid_output"
    assert "4111" not in r.dlq_headers["choreo_dlq_error_message"]
    assert "total: expected long, got string of 16 character(s)" in r.dlq_headers["choreo_dlq_error_message"]
    assert r.outcome == audit.DEAD_LETTERED


def test_a_type_the_agent_reads_but_on_another_topic_is_a_contract_violation(app, driver) -> None:
    """counter reads counter.reset too, but on its own topic: a reset on the increments topic would
    be judged by a contract that does not govern that topic."""
    value = app.codec.encode("counter.reset", {"name": "a"})
    r = driver.send_raw(TOPIC, b"a", value, list(Envelope.new("counter.reset", "/x").to_headers()))
    assert (r.outcome, r.reason) == ("DEAD_LETTERED", "contract_violation")
    assert r.dlq_headers["choreo_dlq_error_message"] == (
        "event type 'counter.reset' belongs on topic 'counter.reset', not on 'counter.incremented'"
    )


def test_state_grown_from_a_record_is_summarised_in_the_audit_record() -> None:
    from processors.runtime import App
    from tests.engine.app import CONTRACTS, SCHEMAS

    app = App("big-state", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    @app.agent("keeper", consumes=[TOPIC])
    def keeper(event, ctx):
        ctx.state["blob"] = event.value["email"]  # whatever the record carried, kept as state

    driver = AgentDriver(app, "keeper", now_ms=1_700_000_000_000)
    r = driver.send(TOPIC, {"name": "big", "by": 1, "email": "e" * 600_000})
    assert r.outcome == "PROCESSED"
    assert r.audit is not None
    assert (
        r.audit["state_after"].startswith('{"truncated":true,"chars":600')
        and '"fields":["blob"]' in r.audit["state_after"]
    )
    assert_bounded(r)


def test_the_record_limit_is_the_producers_message_max_bytes() -> None:
    assert dlq.max_record_bytes({}) == dlq.DEFAULT_MAX_RECORD_BYTES
    assert dlq.max_record_bytes({"message.max.bytes": "2000000"}) == 2_000_000
    assert dlq.max_record_bytes({"message.max.bytes": "junk"}) == dlq.DEFAULT_MAX_RECORD_BYTES


def test_an_unexpected_failure_is_logged_with_its_stack_not_its_message(app, driver, monkeypatch, caplog) -> None:
    secret = "card 4111111111111111 " * 1000

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    monkeypatch.setattr(Envelope, "from_headers", classmethod(broken))
    with caplog.at_level(logging.ERROR, logger="choreo.runtime"):
        r = driver.send_raw(TOPIC, b"a", encoded(app), good_headers())
    assert r.reason == "unexpected_error"
    [record] = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert "4111" not in record.getMessage() and record.exc_info is None
    assert "broken" in record.traceback
    assert len(record.traceback) <= 4000


def test_a_timer_whose_stored_payload_cannot_be_read_is_dead_lettered_and_deleted(driver) -> None:
    from processors.runtime.state import keys

    tk = keys.timer_key(b"a", "nudge")
    driver.store.apply({tk: keys.pack_u64(driver.now_ms) + b"{not json"})
    [fired] = driver.advance(1)
    assert (fired.outcome, fired.reason) == ("DEAD_LETTERED", "timer_error")
    assert fired.dlq is not None and fired.dlq.topic.endswith(".timers.dlq")
    assert driver.store.get(tk) is None and driver.advance(1) == []  # fires once, then it is gone
