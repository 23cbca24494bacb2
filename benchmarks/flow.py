"""The full commerce flow under load: `processors.agents.app:app` in one worker process.

1. Maximum: publish a burst of orders as fast as one producer goes and time them to their terminal
   event (`order.confirmed` or `order.cancelled`): orders/s to the terminal state.
2. Offered load: at 25%, 50% and 75% of that maximum, publish at a fixed rate (open loop, token
   bucket) for a while; flow time per order = terminal event timestamp − publish time; p50/p95/p99.

Run from `benchmarks/run.py` (section `flow`); the workers are `choreo worker` processes under a
unique app id, so consumer groups and state never mix with another run's. The contracts' topics are
shared by every run on a broker, so each agent's group is started at their current end: a new app
id would otherwise begin by replaying every earlier run's orders, and time that backlog.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loadgen
import report
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processors.agents.app import CommerceConfig, build_app
from processors.agents.demo import wait_for_members
from processors.agents.loadgen import OrderMix
from processors.agents.verify import end_offsets
from processors.kafka_types import produce_headers
from processors.runtime import Worker
from processors.settings import Settings

APP_REF = "processors.agents.app:app"
TERMINAL = ("order.confirmed", "order.cancelled")


class Terminals:
    """Follows the terminal topics from given offsets; order id → timestamp (ms) of its first
    terminal event."""

    def __init__(self, bootstrap: str, topics: dict[str, str], since: dict[tuple[str, int], int]) -> None:
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-flow-{uuid.uuid4().hex[:6]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        assignment = []
        for topic in topics.values():
            md = self._consumer.list_topics(topic, timeout=15).topics[topic]
            assignment += [TopicPartition(topic, p, since.get((topic, p), 0)) for p in md.partitions]
        self._consumer.assign(assignment)
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-terminals")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error() is not None:
                    continue
                order_id = (msg.key() or b"").decode()
                with self._lock:
                    self.seen.setdefault(order_id, msg.timestamp()[1])

    def wait(self, order_ids: set[str], timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if order_ids.issubset(self.seen):
                    break
            time.sleep(0.2)
        with self._lock:
            return {o: self.seen[o] for o in order_ids if o in self.seen}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _publish_burst(bootstrap: str, topic: str, partitions: int, orders: int, run_id: str) -> dict[str, int]:
    spec = loadgen.LoadSpec(topic, orders, partitions, key_by="order")
    source = loadgen.EventSource(spec, mix=OrderMix(), run_id=run_id)
    producer = Producer(loadgen.producer_config(bootstrap, **{"linger.ms": 5}))
    sent: dict[str, int] = {}
    for _ in range(orders):
        key, value, headers = source.next()
        sent[key] = int(time.time() * 1000)
        producer.produce(topic, value, key, headers=produce_headers(headers))
        producer.poll(0)
    producer.flush(60)
    return sent


def start_groups_at_end(settings: Settings, app: Any) -> None:
    """Commit each agent's group at the end of its input topics, before any worker joins it."""
    ends = end_offsets(settings, {t for spec in app.agents.values() for t in app.input_topics(spec)})
    admin = AdminClient(settings.kafka_config())
    for name, spec in app.agents.items():  # the admin API takes one group a call
        inputs = set(app.input_topics(spec))
        request = ConsumerGroupTopicPartitions(
            app.group_id(name), [TopicPartition(t, p, end) for (t, p), end in sorted(ends.items()) if t in inputs]
        )
        for future in admin.alter_consumer_group_offsets([request]).values():
            future.result(timeout=30)


def run(bootstrap: str, plan: Any, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    app_id = f"benchflow{uuid.uuid4().hex[:6]}"
    app = build_app(CommerceConfig(app_id=app_id, timeout_s=30.0))
    settings = Settings(bootstrap_servers=bootstrap, state_dir=root / app_id)
    Worker(app, settings).prepare()  # the topics, from the contracts
    created = app.registry.get("order.created")
    terminal_topics = {et: app.registry.get(et).topic for et in TERMINAL}
    since = end_offsets(settings, terminal_topics.values())
    start_groups_at_end(settings, app)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CHOREO_COMMERCE_APP_ID": app_id,
        "CHOREO_COMMERCE_TIMEOUT_S": "30",
        "CHOREO_STATE_DIR": str(root / app_id / "worker-0"),
    }
    log_path = root / f"{app_id}-worker.log"
    with open(log_path, "ab") as worker_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "processors.cli.main", "worker", "--app", APP_REF, "--worker-id", "bench-0"],
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    terminals = None
    try:
        wait_for_members(settings, app, 1, timeout=120)
        terminals = Terminals(bootstrap, terminal_topics, since)
        burst = plan.flow_burst
        log(f"flow: burst of {burst:,} orders to find the maximum")
        sent = _publish_burst(bootstrap, created.topic, created.partitions, burst, f"{app_id}-max-")
        done = terminals.wait(set(sent), timeout=60 + burst / 20)
        if not done:
            return {"status": "failed", "reason": f"no order reached a terminal state; see {log_path}"}
        elapsed = (max(done.values()) - min(sent.values())) / 1000
        max_rate = len(done) / max(elapsed, 1e-3)
        log(f"flow: maximum {max_rate:,.0f} orders/s ({len(done)}/{burst} terminal in {elapsed:.1f}s)")
        points = []
        for share in plan.flow_loads:
            rate = max(1.0, share * max_rate)
            sent = {}
            spec = loadgen.LoadSpec(created.topic, 0, created.partitions, key_by="order")
            offered = loadgen.paced(
                bootstrap,
                spec,
                rate,
                plan.flow_seconds,
                on_sent=sent.__setitem__,
                mix=OrderMix(),
                run_id=f"{app_id}-{int(share * 100)}-",
            )
            done = terminals.wait(set(sent), timeout=30 + plan.flow_seconds)
            flow_ms = sorted(float(done[o] - sent[o]) for o in done)
            span = (max(done.values()) - min(sent.values())) / 1000 if done else 0
            point = {
                "load_pct": share * 100,
                "offered_per_s": offered["events_per_s"],
                "completed_per_s": len(done) / span if span else None,
                "orders": len(sent),
                "completed": len(done),
                "p50_ms": report.percentile(flow_ms, 50),
                "p95_ms": report.percentile(flow_ms, 95),
                "p99_ms": report.percentile(flow_ms, 99),
            }
            points.append(point)
            log(
                f"flow: {share * 100:.0f}% ({rate:,.0f}/s offered): {len(done)}/{len(sent)} terminal, "
                f"p50 {point['p50_ms'] or 0:,.0f} ms, p95 {point['p95_ms'] or 0:,.0f} ms, "
                f"p99 {point['p99_ms'] or 0:,.0f} ms"
            )
        return {
            "status": "ok",
            "max_orders_per_s": max_rate,
            "burst_orders": burst,
            "points": points,
            "workers": 1,
            "app": APP_REF,
        }
    finally:
        if terminals is not None:
            terminals.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
