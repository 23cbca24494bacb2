"""The engine against a real broker: state and restore, both guarantees, dedupe, DLQ, audit,
timers, the loop guard and the worker command."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from confluent_kafka import Producer

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.localbroker.broker import free_port
from processors.runtime import WorkerOptions
from processors.runtime.state import keys
from processors.runtime.testing import read_topic, run_agents
from tests.engine.harness import REPO, assert_exact_outputs, make_env, stop_worker, wait_for_count

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

GUARANTEES = ["at_least_once", "exactly_once"]
# (guarantee, max_in_flight): the plain sync counter, and the async one with 16 inputs of different
# keys at once (key-ordered concurrency must leave dedupe, DLQ decisions, retries, audit and timers
# as they are); the at_least_once concurrent runs join the soak runs (the suite's 15-minute budget)
MODES = [
    ("at_least_once", 1),
    ("exactly_once", 1),
    pytest.param("at_least_once", 16, id="at_least_once-concurrent", marks=pytest.mark.soak),
    pytest.param("exactly_once", 16, id="exactly_once-concurrent"),
]


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("engine"))


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_state_survives_deleting_the_state_dir(env, tmp_path, guarantee):
    app = env.app()
    state = tmp_path / "state"
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee, state_dir=state) as running:
        for _ in range(5):
            running.publish("counter.incremented", {"name": "a", "by": 2})
        running.publish("counter.incremented", {"name": "b", "by": 1})
        assert len(running.read("counter.total", 6)) == 6
    assert any(state.rglob("CURRENT")), "the stores were on disk"
    shutil.rmtree(state)
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee, state_dir=state) as running:
        running.publish("counter.incremented", {"name": "a", "by": 2})
        outputs = running.read("counter.total", 7)
    last_a = [o.value for o in outputs if o.key == "a"][-1]
    assert last_a == {"name": "a", "total": 12, "seq": 6}


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_restart_with_local_state_restores_only_the_tail(env, tmp_path, guarantee):
    app = env.app()
    state = tmp_path / "state"
    with run_agents(app, env.bootstrap, ["counter"], state_dir=state, guarantee=guarantee) as running:
        running.publish("counter.incremented", {"name": "a", "by": 1})
        running.read("counter.total", 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the store is written right after the commit
            offsets = [s.changelog_offset for r in running.worker.runners for s in list(r.stores.values())]
            if any(o is not None for o in offsets):
                break
            time.sleep(0.1)
        assert any(o is not None for o in offsets), "the store records the changelog offset it reached"
    with run_agents(app, env.bootstrap, ["counter"], state_dir=state, guarantee=guarantee) as running:
        running.publish("counter.incremented", {"name": "a", "by": 1})
        outputs = running.read("counter.total", 2)
        restored = {r.spec.name: [s.changelog_offset for s in r.stores.values()] for r in running.worker.runners}
    assert outputs[-1].value["total"] == 2
    assert any(o is not None for o in restored["counter"])


@pytest.mark.parametrize(("guarantee", "max_in_flight"), MODES)
def test_duplicates_are_dropped_counted_and_audited(env, guarantee, max_in_flight):
    app = env.app(max_in_flight=max_in_flight)
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee) as running:
        running.publish("counter.incremented", {"name": "a", "by": 1}, idempotency_key="once")
        running.publish("counter.incremented", {"name": "a", "by": 1}, idempotency_key="once")
        running.publish("counter.incremented", {"name": "a", "by": 5}, idempotency_key="other")
        audit = running.read(env.audit_topic, 3)
        outputs = running.read("counter.total", 2)
    assert [o.value["total"] for o in outputs] == [1, 6]
    assert sorted(a.value["outcome"] for a in audit) == ["DUPLICATE", "PROCESSED", "PROCESSED"]
    dup = next(a for a in audit if a.value["outcome"] == "DUPLICATE")
    assert dup.value["state_after"] is None and dup.value["emitted_event_ids"] == []


@pytest.mark.parametrize(("guarantee", "max_in_flight"), MODES)
def test_poison_events_go_to_the_dlq_while_the_rest_flows(env, guarantee, max_in_flight):
    app = env.app(max_in_flight=max_in_flight)
    topic = env.topic("counter.incremented")
    good_headers = Envelope.new("counter.incremented", "/t").to_headers()
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee) as running:
        p = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random"})
        p.produce(topic, b"\xc3\x01garbage-bytes", b"p1", headers=produce_headers(good_headers))
        p.produce(
            topic,
            app.codec.encode("counter.incremented", {"name": "p2", "by": 1}),
            b"p2",
            headers=[h for h in Envelope.new("counter.incremented", "/t").to_headers() if h[0] != "ce_idempotencykey"],
        )
        p.produce(
            topic,
            app.codec.encode("counter.reset", {"name": "p3"}),
            b"p3",
            headers=produce_headers(Envelope.new("counter.incremented", "/t").to_headers()),
        )
        p.flush(10)
        running.publish("counter.incremented", {"name": "p4", "by": -1, "email": "eve@example.com"})
        running.publish("counter.incremented", {"name": "p5", "by": -2})
        for i in range(20):
            running.publish("counter.incremented", {"name": f"ok{i % 3}", "by": 1})
        dlq = running.read(topic + ".dlq", 5)
        outputs = running.read("counter.total", 20)
        audit = running.read(env.audit_topic, 25)
    by_key = {d.key: d for d in dlq}
    assert {k: d.headers["choreo_dlq_reason"] for k, d in by_key.items()} == {
        "p1": "undecodable",
        "p2": "missing_header",
        "p3": "undecodable",
        "p4": "handler_error",
        "p5": "retries_exhausted",
    }
    p1 = by_key["p1"]
    assert p1.raw_value == b"\xc3\x01garbage-bytes"  # original value untouched
    assert p1.headers["ce_id"] == dict(good_headers)["ce_id"].decode()  # original headers kept
    assert p1.headers["choreo_dlq_original_topic"] == topic
    coordinates = (int(p1.headers["choreo_dlq_original_partition"]), int(p1.headers["choreo_dlq_original_offset"]))
    originals = [r for r in read_topic(env.bootstrap, topic) if (r.partition, r.offset) == coordinates]
    assert [r.raw_value for r in originals] == [b"\xc3\x01garbage-bytes"]  # they point at the poison record
    assert p1.headers["choreo_dlq_agent"] == "counter"
    assert by_key["p2"].headers["choreo_dlq_error_message"].startswith("header ce_idempotencykey")
    assert by_key["p5"].headers["choreo_dlq_attempts"] == "3"
    assert "eve@example.com" not in by_key["p4"].headers["choreo_dlq_error_message"]
    for d in dlq:
        for h in ("choreo_dlq_error_class", "choreo_dlq_first_failure", "choreo_dlq_last_failure"):
            assert d.headers[h]
    assert len(outputs) == 20 and max(o.value["total"] for o in outputs) == 7
    outcomes = [a.value["outcome"] for a in audit]
    assert outcomes.count("DEAD_LETTERED") == 5 and outcomes.count("PROCESSED") == 20


def test_audit_records_carry_changed_fields_with_pii_redacted(env):
    app = env.app()
    with run_agents(app, env.bootstrap, ["counter"], guarantee="exactly_once") as running:
        e1 = running.publish("counter.incremented", {"name": "a", "by": 1, "email": "ann@example.com"})
        running.publish("counter.incremented", {"name": "a", "by": 2})
        audit = running.read(env.audit_topic, 2)
        outputs = running.read("counter.total", 2)
    first = next(a.value for a in audit if a.value["input_event_id"] == e1.id)
    assert first["agent_name"] == "counter" and first["agent_version"] == "3"
    assert first["input_event_type"] == "counter.incremented"
    assert first["topic"] == env.topic("counter.incremented") and first["offset"] >= 0
    assert first["state_before"] is None
    assert '"email":"***"' in first["state_after"] and "ann@example.com" not in first["state_after"]
    assert first["emitted_event_ids"] == [outputs[0].headers["ce_id"]]
    assert first["correlation_id"] == e1.correlation_id
    second = next(a.value for a in audit if a.value["input_event_id"] != e1.id)
    assert second["state_before"] == '{"n":1,"seq":1}' and second["state_after"] == '{"n":3,"seq":2}'


@pytest.mark.parametrize(("guarantee", "max_in_flight"), MODES)
def test_timer_survives_restart_without_local_state_and_fires_once(env, tmp_path, guarantee, max_in_flight):
    app = env.app(max_in_flight=max_in_flight)
    state = tmp_path / "state"
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee, state_dir=state) as running:
        running.publish("counter.incremented", {"name": "t", "by": 1000})  # schedules "nudge" in 1 s
        running.read(env.audit_topic, 1)
    shutil.rmtree(state)
    time.sleep(1.0)
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee, state_dir=state) as running:
        outputs = running.read("counter.total", 1, timeout=20)
        assert outputs[0].value == {"name": "t", "total": 1, "seq": 1}
        time.sleep(1.5)
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee, state_dir=tmp_path / "fresh") as running:
        time.sleep(1.5)
        assert len(read_topic(env.bootstrap, env.topic("counter.total"), None)) == 1, "the timer fired twice"


# at_least_once (whose outputs are not held to a commit) joins the soak runs: the suite's budget
@pytest.mark.parametrize("guarantee", [pytest.param("at_least_once", marks=pytest.mark.soak), "exactly_once"])
def test_a_lone_event_is_handled_without_waiting_out_the_poll_timeout(env, guarantee):
    """A batch is what has arrived once one record is there (plus a few ms of linger): an event on a
    quiet topic is not held until ``batch_size`` records or the poll timeout (5 s here) come along,
    which across a choreography would add the timeout to every hop."""
    app = env.app()
    options = WorkerOptions(poll_timeout_s=5.0)
    with run_agents(app, env.bootstrap, ["counter"], guarantee=guarantee, options=options) as running:
        running.publish("counter.incremented", {"name": "warm", "by": 1})
        running.read("counter.total", 1)
        delays = []
        for i in range(3):
            time.sleep(0.3)  # the worker is back in its idle poll
            sent = running.publish("counter.incremented", {"name": f"lone{i}", "by": 1})
            out = next(o for o in running.read("counter.total", 2 + i) if o.key == f"lone{i}")
            delays.append((out.envelope.time - sent.time).total_seconds())
    assert max(delays) < 2.5, f"handled {delays} s after publish; the poll timeout is 5 s"


def test_runtime_loop_is_dead_lettered(env):
    app = env.app(ping_bound=4)
    with run_agents(app, env.bootstrap, ["ping", "pong"], guarantee="exactly_once") as running:
        running.publish("ping.sent", {"chain": "c1", "n": 0})
        dlq = running.read(env.topic("ping.sent") + ".dlq", 1, timeout=30)
    assert dlq[0].headers["choreo_dlq_reason"] == "loop"
    assert dlq[0].headers["ce_hopcount"] == "6"
    assert dlq[0].headers["choreo_dlq_agent"] == "ping"
    pongs = read_topic(env.bootstrap, env.topic("pong.sent"), None, app=app)
    assert [p.value["n"] for p in pongs] == [1, 3, 5]


def test_worker_refuses_an_unbounded_cycle_at_start(env):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tests.engine import app as m; m.app = m.build_app('cyc', ping_bound=None); "
            "from processors.cli.main import main; sys.argv=['choreo','worker','--app','tests.engine.app:app']; main()",
        ],
        cwd=REPO,
        env=env.worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cycle" in proc.stderr and "ping -> pong -> ping" in proc.stderr


def test_copartitioning_is_checked_at_start(env, create_topics):
    from processors.runtime import TopologyError, Worker
    from processors.settings import Settings

    create_topics([env.topic("counter.incremented")], partitions=3)
    create_topics([env.topic("counter.reset")], partitions=2)
    app = env.app()
    worker = Worker(app, Settings(bootstrap_servers=env.bootstrap), agents=["counter"])
    with pytest.raises(TopologyError, match="not co-partitioned"):
        worker.prepare()


def test_missing_changelog_is_refused_when_topics_are_not_created(env, create_topics):
    from processors.runtime import TopologyError, Worker
    from processors.settings import Settings

    create_topics([env.topic("counter.incremented"), env.topic("counter.reset")], partitions=3)
    app = env.app()
    app.create_topics = False
    worker = Worker(app, Settings(bootstrap_servers=env.bootstrap), agents=["counter"])
    with pytest.raises(TopologyError, match="changelog topic .* does not exist"):
        worker.prepare()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_worker_command_drains_and_exits_zero_on_sigterm(env, tmp_path, guarantee):
    from tests.engine.harness import load_counter_events

    app = env.app()
    env.create_topics(app)
    port = free_port()
    proc = env.start_worker("w1", guarantee, tmp_path / "state", args=("--metrics-port", str(port)))
    try:
        load_counter_events(env, app, keys=5, per_key=40)
        wait_for_count(env.bootstrap, env.topic("counter.total"), 200, timeout=60, proc=proc)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        code = stop_worker(proc, signal.SIGTERM)
    assert code == 0
    assert 'choreo_events_in_total{agent="counter",event_type="counter.incremented"} 200.0' in metrics
    assert 'choreo_events_out_total{agent="counter",event_type="counter.total"} 200.0' in metrics
    for name in (
        "choreo_handler_seconds_bucket",
        "choreo_batch_size_bucket",
        "choreo_consumer_lag",
        "choreo_commit_seconds_bucket",
        "choreo_circuit_state",
        "choreo_restore_remaining_records",
    ):
        assert name in metrics, name
    outputs = read_topic(env.bootstrap, env.topic("counter.total"), None, app=app)
    assert_exact_outputs(outputs, keys=5, per_key=40)


def test_trailing_changelog_records_without_marker_are_rolled_back(env, tmp_path):
    """What an at-least-once worker killed mid-changelog-flush leaves: records after the last batch
    marker. The next owner must not apply them, and must make the changelog agree."""
    app = env.app()
    state = tmp_path / "state"
    with run_agents(app, env.bootstrap, ["counter"], state_dir=state) as running:
        running.publish("counter.incremented", {"name": "a", "by": 1})
        running.read("counter.total", 1)
    changelog = app.changelog_topic("counter")
    partition = read_topic(env.bootstrap, env.topic("counter.total"), 1)[0].partition
    p = Producer({"bootstrap.servers": env.bootstrap})
    p.produce(changelog, b'{"n":999,"seq":999}', keys.state_key(b"a"), partition=partition)  # no marker after it
    p.flush(10)
    shutil.rmtree(state)
    with run_agents(app, env.bootstrap, ["counter"], state_dir=state) as running:
        running.publish("counter.incremented", {"name": "a", "by": 1})
        outputs = running.read("counter.total", 2)
    assert outputs[-1].value == {"name": "a", "total": 2, "seq": 2}
    # and a later full restore agrees (the rollback was written to the changelog)
    shutil.rmtree(state)
    with run_agents(app, env.bootstrap, ["counter"], state_dir=state) as running:
        running.publish("counter.incremented", {"name": "a", "by": 1})
        outputs = running.read("counter.total", 3)
    assert outputs[-1].value == {"name": "a", "total": 3, "seq": 3}
