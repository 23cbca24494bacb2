"""Agent handling through the pure driver: the same code path the worker runs, without Kafka."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest

from processors.contracts import Envelope
from processors.runtime import App, AppError, TopologyError
from processors.runtime.testing import AgentDriver
from tests.engine.app import build_app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app():
    return build_app()


@pytest.fixture
def driver(app):
    return AgentDriver(app, "counter", now_ms=1_700_000_000_000)


def test_state_emit_and_audit(driver):
    r1 = driver.send("counter.incremented", {"name": "a", "by": 2})
    r2 = driver.send("counter.incremented", {"name": "a", "by": 3})
    assert (r1.outcome, r2.outcome) == ("PROCESSED", "PROCESSED")
    assert driver.state("a") == {"n": 5, "seq": 2}
    [out] = r2.emitted
    assert (out.event_type, out.key, out.value) == ("counter.total", "a", {"name": "a", "total": 5, "seq": 2})
    assert out.envelope.hop_count == 1
    assert out.envelope.causation_id == r2.audit["input_event_id"]
    assert out.envelope.correlation_id == r2.audit["correlation_id"]
    assert r2.audit["outcome"] == "PROCESSED"
    assert json.loads(r2.audit["state_before"]) == {"n": 2, "seq": 1}
    assert json.loads(r2.audit["state_after"]) == {"n": 5, "seq": 2}
    assert r2.audit["emitted_event_ids"] == [out.id]
    assert r2.audit["agent_version"] == "3"


def test_follow_up_keys_are_derived_deterministically(app):
    env = Envelope.new("counter.incremented", "/test", idempotency_key="input-1")
    a = AgentDriver(app, "counter").send("counter.incremented", {"name": "a", "by": 1}, envelope=env)
    b = AgentDriver(app, "counter").send("counter.incremented", {"name": "a", "by": 1}, envelope=env)
    assert a.emitted[0].idempotency_key == b.emitted[0].idempotency_key
    assert a.emitted[0].id == b.emitted[0].id
    other = AgentDriver(app, "counter").send("counter.incremented", {"name": "a", "by": 1}, idempotency_key="input-2")
    assert other.emitted[0].idempotency_key != a.emitted[0].idempotency_key


def test_duplicate_is_dropped_without_effect_and_audited(driver):
    driver.send("counter.incremented", {"name": "a", "by": 2}, idempotency_key="k1")
    dup = driver.send("counter.incremented", {"name": "a", "by": 2}, idempotency_key="k1")
    assert dup.outcome == "DUPLICATE"
    assert dup.emitted == [] and dup.dlq is None
    assert driver.state("a") == {"n": 2, "seq": 1}
    assert dup.audit["outcome"] == "DUPLICATE"
    assert [r.kind for r in dup.records] == ["audit"]


def test_seen_keys_expire_after_ttl(app):
    app.dedupe_ttl_s = 60
    driver = AgentDriver(app, "counter", now_ms=1_000_000)
    driver.send("counter.incremented", {"name": "a", "by": 1}, idempotency_key="k1")
    assert driver.seen("k1")
    driver.advance(61)
    assert not driver.seen("k1")
    assert driver.send("counter.incremented", {"name": "a", "by": 1}, idempotency_key="k1").outcome == "PROCESSED"


def test_handler_error_is_dead_lettered_with_headers_and_pii_scrubbed(driver):
    r = driver.send("counter.incremented", {"name": "a", "by": -1, "email": "bob@example.com"})
    assert r.outcome == "DEAD_LETTERED" and r.reason == "handler_error"
    h = r.dlq_headers
    assert h["choreo_dlq_error_class"] == "ValueError"
    assert "bob@example.com" not in h["choreo_dlq_error_message"] and "***" in h["choreo_dlq_error_message"]
    assert h["choreo_dlq_attempts"] == "1"
    assert h["choreo_dlq_agent"] == "counter"
    assert h["choreo_dlq_original_topic"] == "counter.incremented"
    assert h["choreo_dlq_original_offset"] == "0"
    assert h["ce_type"] == "counter.incremented"  # original headers kept
    assert r.dlq.topic == "counter.incremented.dlq"
    assert r.dlq.key == b"a"
    assert driver.state("a") is None
    assert r.audit["outcome"] == "DEAD_LETTERED" and "bob@example.com" not in r.audit["error"]
    # the decision is recorded with the seen keys: a replay or re-send is not judged again
    assert driver.seen(r.raw.audit["input_event_id"])


def test_a_refused_input_is_decided_once_and_only_a_redrive_is_handled_again(driver):
    """A dead-lettered input, sent again as it was (a replay after a crash, a producer retry), is a
    duplicate of its decision even when newer state would now let it through; ``choreo dlq
    redrive`` (its redrive-count header) is the explicit way to have it handled again."""
    refused = driver.envelope("counter.incremented", idempotency_key="withdraw-1")
    assert driver.send("counter.incremented", {"name": "acct", "by": 5}).outcome == "PROCESSED"
    first = driver.send("counter.incremented", {"name": "acct", "by": -10}, envelope=refused)
    assert first.outcome == "DEAD_LETTERED" and first.reason == "negative_total"
    assert driver.send("counter.incremented", {"name": "acct", "by": 10}).outcome == "PROCESSED"
    again = driver.send("counter.incremented", {"name": "acct", "by": -10}, envelope=refused)
    assert again.outcome == "DUPLICATE"
    assert driver.state("acct")["n"] == 15
    value = driver.app.codec.encode("counter.incremented", {"name": "acct", "by": -10})
    redrive = [*refused.to_headers(), ("choreo_redrive_count", b"1")]
    redriven = driver.send_raw("counter.incremented", b"acct", value, redrive)
    assert redriven.outcome == "PROCESSED"
    assert driver.state("acct")["n"] == 5
    # the same redrive delivered twice is handled once; a count that is no number counts as none
    assert driver.send_raw("counter.incremented", b"acct", value, redrive).outcome == "DUPLICATE"
    bogus = [*refused.to_headers(), ("choreo_redrive_count", b"9" * 5000)]
    assert driver.send_raw("counter.incremented", b"acct", value, bogus).outcome == "DUPLICATE"
    assert driver.state("acct")["n"] == 5


def test_a_failed_redrive_records_its_count_and_a_later_redrive_goes_through(driver):
    env = driver.envelope("counter.incremented", idempotency_key="bad-1")
    value = driver.app.codec.encode("counter.incremented", {"name": "b", "by": -1})
    assert driver.send_raw("counter.incremented", b"b", value, env.to_headers()).outcome == "DEAD_LETTERED"
    once = [*env.to_headers(), ("choreo_redrive_count", b"1")]
    assert driver.send_raw("counter.incremented", b"b", value, once).outcome == "DEAD_LETTERED"  # handled again
    assert driver.send_raw("counter.incremented", b"b", value, once).outcome == "DUPLICATE"
    twice = [*env.to_headers(), ("choreo_redrive_count", b"2")]
    assert driver.send_raw("counter.incremented", b"b", value, twice).outcome == "DEAD_LETTERED"


def test_transient_errors_retry_with_backoff_then_dead_letter(driver):
    r = driver.send("counter.incremented", {"name": "a", "by": -2})
    assert r.reason == "retries_exhausted"
    assert r.dlq_headers["choreo_dlq_attempts"] == "3"
    assert len(driver.sleeps) == 2 and all(0 <= s <= 0.05 for s in driver.sleeps)
    assert r.dlq_headers["choreo_dlq_first_failure"] <= r.dlq_headers["choreo_dlq_last_failure"]


def test_circuit_breaker_opens_and_short_circuits(driver):
    r = driver.send("counter.incremented", {"name": "a", "by": -3})
    assert r.reason == "retries_exhausted"
    breaker = driver.processor.breakers["flaky-api"]
    assert breaker.state == "open"
    # the last attempt was short-circuited by the open breaker
    assert r.dlq_headers["choreo_dlq_error_class"] == "CircuitOpenError"


def test_poison_records_never_raise(driver):
    good = Envelope.new("counter.incremented", "/t").to_headers()
    undecodable = driver.send_raw("counter.incremented", b"k", b"\x00garbage", good)
    assert undecodable.reason == "undecodable"
    missing = driver.send_raw("counter.incremented", b"k", b"x", [h for h in good if h[0] != "ce_id"])
    assert missing.reason == "missing_header"
    assert missing.dlq.value == b"x"
    wrong_type = Envelope.new("ping.sent", "/t").to_headers()
    violation = driver.send_raw("counter.incremented", b"k", b"x", wrong_type)
    assert violation.reason == "contract_violation"
    tombstone = driver.send_raw("counter.incremented", b"k", None, good)
    assert tombstone.reason == "undecodable"
    # bytes of another contract under this type's header
    other = driver.app.codec.encode("counter.reset", {"name": "k"})
    mismatch = driver.send_raw("counter.incremented", b"k", other, good)
    assert mismatch.reason == "undecodable"
    assert driver.state("k") is None


def test_emit_of_undeclared_type_or_invalid_value_dead_letters(app):
    @app.agent("bad-out", consumes=["counter.reset"], produces=["counter.total"])
    def bad(event, ctx):
        if event.key == "undeclared":
            ctx.emit("ping.sent", event.key, {"chain": "x", "n": 1})
        ctx.emit("counter.total", event.key, {"name": event.key, "total": "not a number", "seq": 1})

    d = AgentDriver(app, "bad-out")
    assert d.send("counter.reset", {"name": "undeclared"}).reason == "invalid_output"
    r = d.send("counter.reset", {"name": "x"})
    assert r.reason == "invalid_output" and "total" in r.dlq_headers["choreo_dlq_error_message"]


def test_loop_guard_dead_letters_past_the_bound(app):
    ping = AgentDriver(app, "ping")
    assert ping.send("ping.sent", {"chain": "c", "n": 0}, hop_count=4).outcome == "PROCESSED"
    r = ping.send("ping.sent", {"chain": "c", "n": 0}, hop_count=5)
    assert r.reason == "loop" and "hop count 5" in r.dlq_headers["choreo_dlq_error_message"]
    pong = AgentDriver(app, "pong")  # no declared bound: the app default (16)
    assert pong.send("pong.sent", {"chain": "c", "n": 0}, hop_count=16).outcome == "PROCESSED"
    assert pong.send("pong.sent", {"chain": "c", "n": 0}, hop_count=17).reason == "loop"


def test_timers_fire_once_and_can_be_cancelled(driver):
    driver.send("counter.incremented", {"name": "a", "by": 1000})
    due = driver.timers("a")["nudge"]
    assert due == driver.now_ms + 1000
    assert driver.advance(0.5) == []
    [fired] = driver.advance(0.5)
    assert fired.outcome == "PROCESSED"
    assert fired.emitted[0].value == {"name": "a", "total": 1, "seq": 1}
    assert fired.emitted[0].envelope.hop_count == 1
    assert driver.advance(10) == []  # once
    assert driver.timers("a") == {}
    driver.send("counter.incremented", {"name": "b", "by": 1000})
    driver.send("counter.reset", {"name": "b"})  # cancels
    assert driver.advance(10) == []


def test_timer_follow_up_keys_are_stable(app):
    d1 = AgentDriver(app, "counter", now_ms=5_000)
    d2 = AgentDriver(app, "counter", now_ms=5_000)
    env = Envelope.new("counter.incremented", "/t", idempotency_key="same")
    for d in (d1, d2):
        d.send("counter.incremented", {"name": "a", "by": 1000}, envelope=env)
    [a] = d1.advance(2)
    [b] = d2.advance(2)
    assert a.emitted[0].idempotency_key == b.emitted[0].idempotency_key


def test_audit_record_fits_the_repository_audit_contract(driver):
    r = driver.send("counter.incremented", {"name": "a", "by": 1, "email": "x@example.com"})
    schema = fastavro.parse_schema(json.loads((REPO / "schemas" / "audit.record" / "v1.avsc").read_text()))
    assert fastavro.validate(r.audit, schema, raise_errors=True)
    assert "x@example.com" not in r.audit["state_after"]
    dead = driver.send("counter.incremented", {"name": "a", "by": -1})
    assert fastavro.validate(dead.audit, schema, raise_errors=True)


def test_audit_is_json_when_registry_has_no_audit_contract(app):
    app.audit_event_type = "no.such.type"
    r = AgentDriver(app, "counter").send("counter.incremented", {"name": "a", "by": 1})
    audit = [x for x in r.records if x.kind == "audit"][0]
    assert audit.value is not None
    assert json.loads(audit.value)["outcome"] == "PROCESSED"
    assert dict(audit.headers)["content-type"] == b"application/json"


def test_app_check_refuses_unknown_types_and_unbounded_cycles():
    build_app().check()
    with pytest.raises(TopologyError, match="ping -> pong -> ping"):
        build_app(ping_bound=None).check()
    app = build_app(with_pingpong=False)

    @app.agent("ghost", consumes=["no.such.event"])
    def ghost(event, ctx):
        pass

    with pytest.raises(AppError, match="no.such.event"):
        app.check()
    with pytest.raises(AppError, match="declared twice"):
        app.agent("ghost", consumes=["counter.reset"])(lambda e, c: None)


def test_unserialisable_state_is_dead_lettered(app):
    @app.agent("weird-state", consumes=["counter.reset"])
    def weird(event, ctx):
        ctx.state["x"] = object()

    r = AgentDriver(app, "weird-state").send("counter.reset", {"name": "a"})
    assert r.reason == "invalid_state"


def test_events_of_other_types_on_a_consumed_topic_are_ignored(tmp_path):
    import yaml

    from tests.engine.app import write_contracts

    contracts, schemas = write_contracts(tmp_path, "t")
    # put counter.reset on the same topic as counter.incremented
    path = contracts / "counter.reset.yaml"
    data = yaml.safe_load(path.read_text())
    data["topic"] = "t.counter.incremented"
    path.write_text(yaml.safe_dump(data))
    app = App("ign", contracts_dir=contracts, schemas_dir=schemas)

    @app.agent("only-inc", consumes=["counter.incremented"])
    def only(event, ctx):
        ctx.state["seen"] = True

    r = AgentDriver(app, "only-inc").send("counter.reset", {"name": "a"})
    assert r.outcome == "IGNORED" and r.records == []


def test_reject_dead_letters_at_once_with_its_own_reason(app):
    from processors.runtime import Reject

    @app.agent("strict", consumes=["counter.reset"], transient=(Exception,))
    def strict(event, ctx):
        ctx.state["touched"] = True
        raise Reject("invalid_transition", f"{event.key} cannot be reset now")

    d = AgentDriver(app, "strict")
    r = d.send("counter.reset", {"name": "a"})
    assert r.reason == "invalid_transition" and r.dlq_headers["choreo_dlq_attempts"] == "1"
    assert d.sleeps == [] and d.state("a") is None


def test_metrics_count_inputs_outputs_duplicates_and_dead_letters(app):
    from prometheus_client import REGISTRY

    from processors.runtime._processor import Processor
    from processors.runtime.metrics import AgentMetrics

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    d = AgentDriver(app, "counter")
    d.processor = Processor(
        app,
        d.spec,
        "m",
        metrics=AgentMetrics("counter"),
        clock_ms=lambda: d.now_ms,
        sleep=d._sleep,
        monotonic=lambda: d._mono,
    )
    before = value("choreo_retries_total", agent="counter")
    d.send("counter.incremented", {"name": "a", "by": -2})
    assert value("choreo_retries_total", agent="counter") == before + 2
    assert value("choreo_handler_seconds_count", agent="counter") >= 0
    assert value("choreo_circuit_state", agent="counter", dependency="flaky-api") == 0.0


def test_json_log_lines_carry_context_fields():
    import io
    import logging

    from processors.runtime.logs import configure_logging

    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    try:
        logging.getLogger("choreo.runtime").warning(
            "dead-lettered",
            extra={"agent": "counter", "partition": 2, "offset": 17, "event_id": "e1", "correlation_id": "c1"},
        )
    finally:
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_choreo_json", False):
                root.removeHandler(h)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "dead-lettered" and line["level"] == "warning"
    assert (line["agent"], line["partition"], line["offset"], line["event_id"], line["correlation_id"]) == (
        "counter",
        2,
        17,
        "e1",
        "c1",
    )
