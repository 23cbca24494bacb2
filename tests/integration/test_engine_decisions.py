"""A refused input is decided once, against a real broker: a replay after a crash or a plain
re-send is not judged again against newer state (so at-least-once does not apply a refused
withdrawal after later deposits), and `choreo dlq redrive` is the explicit way back in."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from confluent_kafka import Producer

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.runtime.conventions import dlq_topic
from processors.runtime.testing import read_topic, run_agents
from processors.settings import Settings
from processors.tooling import DlqFilter, DlqInspector
from tests.engine.harness import make_env, stop_worker, wait_for_count

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

GUARANTEES = ["at_least_once", "exactly_once"]
ACCOUNT = "acct"


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("decide"))


def _totals(env, app) -> list[int]:
    outputs = read_topic(env.bootstrap, env.topic("counter.total"), None, app=app, timeout=30)
    return [o.value["total"] for o in sorted(outputs, key=lambda o: o.offset) if o.key == ACCOUNT]


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_plain_resend_of_a_refused_event_is_a_duplicate_and_a_redrive_is_handled(env, guarantee):
    app = env.app()
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee) as running:
        running.publish("counter.incremented", {"name": ACCOUNT, "by": 5})
        running.publish("counter.incremented", {"name": ACCOUNT, "by": -10}, idempotency_key="withdraw-1")
        running.publish("counter.incremented", {"name": ACCOUNT, "by": 10})
        running.publish("counter.incremented", {"name": ACCOUNT, "by": -10}, idempotency_key="withdraw-1")
        audit = running.read(env.audit_topic, 4)
        outcomes = Counter(a.value["outcome"] for a in audit)
        assert outcomes == {"PROCESSED": 2, "DEAD_LETTERED": 1, "DUPLICATE": 1}, "the re-sent refusal was a duplicate"
        assert _totals(env, app) == [5, 15]
        inspector = DlqInspector(Settings(bootstrap_servers=env.bootstrap))
        try:
            refused = DlqFilter(reasons=frozenset({"negative_total"}))
            result = inspector.redrive(dlq_topic(env.topic("counter.incremented")), refused, progress=False)
        finally:
            inspector.close()
        assert result.redriven == 1
        totals = [o.value["total"] for o in running.read("counter.total", 3) if o.key == ACCOUNT]
    assert sorted(totals) == [5, 5, 15]  # the redriven withdrawal went through against 15


def test_at_least_once_replay_after_a_crash_does_not_rejudge_a_refused_event(env, tmp_path):
    """Deposit 5, withdraw 10 (refused), deposit 10, in one batch; the worker dies after the batch's
    outputs and changelog are durable but before its offsets are committed, so the batch is
    replayed. The withdrawal must stay refused: the balance is 15, never 5."""
    app = env.app()
    env.create_topics(app)
    producer = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random"})
    for by, idempotency_key in ((5, "deposit-1"), (-10, "withdraw-1"), (10, "deposit-2")):
        envelope = Envelope.new("counter.incremented", "/test/decide", idempotency_key=idempotency_key)
        value = app.codec.encode("counter.incremented", {"name": ACCOUNT, "by": by})
        producer.produce(
            env.topic("counter.incremented"), value, ACCOUNT, headers=produce_headers(envelope.to_headers())
        )
    assert producer.flush(30) == 0
    state = tmp_path / "state"
    crashing = env.start_worker("w", "at_least_once", state, ENGINE_KILL_IN_APPLY="1")
    assert crashing.wait(120) == -signal.SIGKILL, "the worker died at its crash point"
    assert _totals(env, app) == [5, 15], "the batch's outputs were durable before the crash"
    proc = env.start_worker("w", "at_least_once", state)
    try:
        wait_for_count(env.bootstrap, env.audit_topic, 6, timeout=120, proc=proc)  # 3 audited before, 3 on replay
    finally:
        assert stop_worker(proc) == 0
    audit = read_topic(env.bootstrap, env.audit_topic, None, app=app, timeout=30)
    outcomes = Counter(a.value["outcome"] for a in audit)
    assert outcomes == {"PROCESSED": 2, "DEAD_LETTERED": 1, "DUPLICATE": 3}, "the replayed batch was all duplicates"
    assert _totals(env, app) == [5, 15], "no output of a re-judged withdrawal (a total of 5)"
