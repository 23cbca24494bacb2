"""Output failures against a real broker: a record the broker refuses (over the output topic's
``max.message.bytes``) is isolated by replaying its batch record by record, and the one input
that caused it is dead-lettered (``output_refused``); the rest is processed with the guarantee's
promise; nothing loops. (What no input can fix — WRITE denied, a topic that does not exist — is
fatal by :func:`processors.kafka_errors.classify_produce`: tests/unit/test_kafka_errors.py, and the
secured broker's failure matrix.)"""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from processors.runtime.testing import read_topic
from tests.engine.harness import (
    assert_exact_outputs,
    assert_no_duplicate_effects,
    load_counter_events,
    make_env,
    stop_worker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

KEYS, PER_KEY = 10, 10
LONG_KEYS = [f"long-{i}-" + "x" * 3000 for i in range(3)]


@pytest.fixture
def env(kafka_bootstrap, tmp_path, unique_name):
    return make_env(kafka_bootstrap, tmp_path, unique_name("outputs"))


def _produce_long_keys(env, app) -> None:
    from confluent_kafka import Producer

    from processors.contracts import Envelope
    from processors.kafka_types import produce_headers

    # the partitioner the engine expects (murmur2 of the key), or the records are dead-lettered as misrouted
    producer = Producer({"bootstrap.servers": env.bootstrap, "partitioner": "murmur2_random"})
    for name in LONG_KEYS:
        e = Envelope.new("counter.incremented", "/test/long")
        value = app.codec.encode("counter.incremented", {"name": name, "by": 1})
        producer.produce(env.topic("counter.incremented"), value, name, headers=produce_headers(e.to_headers()))
    producer.flush(30)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_an_output_the_broker_refuses_dead_letters_its_input_only(env, tmp_path, guarantee):
    app = env.app()
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    small = NewTopic(env.topic("counter.total"), 3, 1, config={"max.message.bytes": "2000"})
    admin.create_topics([small])[env.topic("counter.total")].result(30)
    env.create_topics(app)
    log = tmp_path / "worker.log"
    proc = env.start_worker(None, guarantee, tmp_path / "state", log=log)
    try:
        load_counter_events(env, app, KEYS, PER_KEY // 2)
        _produce_long_keys(env, app)  # in the middle of ordinary inputs, in the same batches
        load_counter_events(env, app, KEYS, PER_KEY // 2)
        dlq = env.topic("counter.incremented") + ".dlq"
        deadline = time.monotonic() + 120
        dead: list = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"worker exited with {proc.returncode}: {log.read_text()[-2000:]}"
            dead = read_topic(env.bootstrap, dlq, None, timeout=10)
            outputs = read_topic(env.bootstrap, env.topic("counter.total"), None, app=app, timeout=10)
            if (
                len({r.key for r in dead}) >= len(LONG_KEYS)
                and len({r.headers["ce_idempotencykey"] for r in outputs}) >= KEYS * PER_KEY
            ):
                break
            time.sleep(1)
    finally:
        code = stop_worker(proc, timeout=90)
    assert code == 0, log.read_text()[-3000:]
    reasons = {r.headers.get("choreo_dlq_reason") for r in dead}
    assert reasons == {"output_refused"}, reasons
    keys = sorted({r.key if isinstance(r.key, str) else r.key.decode() for r in dead})
    assert set(keys) <= set(LONG_KEYS), "a dead letter's key is not one of the long keys, whole"
    assert [k[:7] for k in keys] == [k[:7] for k in sorted(LONG_KEYS)], "each long key dead-lettered"
    if guarantee == "exactly_once":
        assert len(dead) == len(LONG_KEYS), "an input was dead-lettered twice"
    outputs = read_topic(env.bootstrap, env.topic("counter.total"), None, app=app, timeout=30)
    if guarantee == "exactly_once":
        assert_exact_outputs(outputs, KEYS, PER_KEY)
    else:
        assert_no_duplicate_effects(outputs, KEYS, PER_KEY)
    lines = [orjson.loads(x) for x in log.read_bytes().splitlines() if x.startswith(b"{")]
    aborts = [x for x in lines if "aborted" in x.get("msg", "") or "record by record" in x.get("msg", "")]
    assert len(aborts) <= 3 * len(LONG_KEYS), f"{len(aborts)} abort lines: the batch loops"
