"""The README's counter example (examples/counter/app.py) run by `choreo worker` against the real
broker: an increment comes out as a total, a refusal lands in the DLQ with its reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from examples.counter.app import app
from processors.runtime.testing import publish, read_topic
from processors.runtime.topics import wait_for_topics

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def _wait_for(bootstrap: str, topic: str, key: str, timeout: float = 90.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [r for r in read_topic(bootstrap, topic, None, timeout=10, app=app) if r.key == key]
        if mine:
            return mine
        time.sleep(0.2)
    return []


def test_the_counter_example_runs_under_choreo_worker(kafka_bootstrap, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "processors.cli.main", "worker", "--app", "examples.counter.app:app"]
        + ["--bootstrap", kafka_bootstrap, "--state-dir", str(tmp_path / "state")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        name = f"c-{uuid.uuid4().hex[:8]}"
        # The worker creates the topics from the contracts at start; producing before that would
        # let the broker auto-create the input with its default partition count.
        inputs = ["shop.counter.incremented", "shop.counter.total"]
        assert wait_for_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), inputs, timeout=90), (
            tmp_path / "worker.log"
        ).read_text()
        publish(app, kafka_bootstrap, "counter.incremented", {"name": name, "by": 3})
        totals = _wait_for(kafka_bootstrap, "shop.counter.total", name)
        assert [t.value for t in totals] == [{"name": name, "total": 3, "seq": 1}], (
            tmp_path / "worker.log"
        ).read_text()
        publish(app, kafka_bootstrap, "counter.incremented", {"name": name, "by": -10})
        dead = _wait_for(kafka_bootstrap, "shop.counter.incremented.dlq", name)
        assert dead and dead[0].headers["choreo_dlq_reason"] == "negative_total"
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
