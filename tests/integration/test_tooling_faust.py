"""The `[faust]` extra: a real faust-streaming worker consumes one of our topics from the real
broker through the `choreo-avro` codec."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from processors.settings import REPO_ROOT
from processors.tooling.publisher import Publisher
from tests.integration.tooling_support import isolate_contracts, order

pytest.importorskip("faust", reason="the [faust] extra (faust-streaming) is not installed")
pytestmark = pytest.mark.kafka

APP = """
import json, os
import faust
import processors.contracts.faust_codec  # noqa: F401 - registers "choreo-avro"

app = faust.App(os.environ["APP_ID"], broker="kafka://" + os.environ["BOOTSTRAP"], store="memory://",
                web_enabled=False, topic_disable_leader=True, topic_replication_factor=1,
                consumer_auto_offset_reset="earliest")
orders = app.topic(os.environ["TOPIC"], value_serializer="choreo-avro", key_serializer="raw")


@app.agent(orders)
async def collect(stream):
    async for event in stream.events():
        with open(os.environ["OUT"], "a") as out:
            headers = {k: v.decode() for k, v in (event.headers or {}).items()}
            record = {"key": event.key.decode(), "value": event.value, "headers": headers}
            out.write(json.dumps(record, default=str) + "\\n")
"""


def test_a_faust_agent_decodes_our_events(tmp_path: Path, kafka_bootstrap: str, create_topics) -> None:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    topic = iso.topics["order.created"]
    create_topics([topic], partitions=2)
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        publisher.publish("order.created", order(1), version=1, idempotency_key="k-1")
        publisher.publish("order.created", order(2, promo_code="SPRING"), idempotency_key="k-2")
    (tmp_path / "app.py").write_text(APP)
    out = tmp_path / "out.ndjson"
    env = {
        **os.environ,
        "APP_ID": f"faust-choreo-{uuid.uuid4().hex[:8]}",
        "BOOTSTRAP": kafka_bootstrap,
        "TOPIC": topic,
        "OUT": str(out),
        "CHOREO_CONTRACTS_DIR": str(iso.contracts_dir),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
    }
    log = (tmp_path / "faust.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
            assert worker.poll() is None, (tmp_path / "faust.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()

    assert out.exists(), (tmp_path / "faust.log").read_text()[-3000:]
    events = {e["key"]: e for e in map(json.loads, out.read_text().splitlines())}
    assert set(events) == {"o-1", "o-2"}
    assert events["o-1"]["value"]["shipping_address"] is None  # v1 writer, read as the current version
    assert events["o-2"]["value"]["promo_code"] == "SPRING"
    assert events["o-2"]["value"]["items"] == [{"sku": "sku-2", "qty": 3, "unit_price_minor": 250}]
    assert events["o-1"]["headers"]["ce_idempotencykey"] == "k-1"
