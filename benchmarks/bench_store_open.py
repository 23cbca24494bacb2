"""Store open benchmark: how long an agent's partition stores take from assignment to ready when
there is nothing (or nearly nothing) to restore.

A counter agent (exactly_once) on ``--partitions`` partitions: a first worker opens empty stores,
handles ``--events`` events and stops; then ``--rounds`` restarts on the same state directory,
each opening every store up to date but for its changelog's last transaction marker (what every
rebalance that brings a partition back costs). Reports, from the engine's own log lines, the time
from the assignment to the last store ready per session (the figure a rebalance pays), and per
open its time from the start of its open ("store opened" with its ``ms``, which includes waiting
for the other partitions' opens in the same loop turn; trees before it logged only "store
restored" with ``seconds``, for the opens that read the changelog).

    .venv/bin/python benchmarks/bench_store_open.py --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_engine import write_contracts  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402

from processors.contracts import Envelope  # noqa: E402
from processors.kafka_types import produce_headers  # noqa: E402
from processors.runtime import App, Worker, WorkerOptions  # noqa: E402
from processors.runtime.topics import ensure_topics, plan_topics  # noqa: E402
from processors.settings import Settings  # noqa: E402


class Opens(logging.Handler):
    """Collects the per-open times the engine logs."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.assigned_at: float | None = None  # this session's assignment
        self.ready_at: float | None = None  # its last store ready

    def emit(self, record: logging.LogRecord) -> None:
        fields = vars(record)
        if record.getMessage() == "partitions assigned" and self.assigned_at is None:
            self.assigned_at = record.created
        if record.getMessage() in ("store opened", "store restored"):
            self.ready_at = record.created
        if record.getMessage() == "store opened":
            self.ms.append(float(fields["ms"]))
            self.outcomes[fields["outcome"]] = self.outcomes.get(fields["outcome"], 0) + 1
        elif record.getMessage() == "store restored" and not self.outcomes:  # a tree before "store opened"
            self.ms.append(float(fields["seconds"]) * 1000)


def _produce(bootstrap: str, app: App, topic: str, events: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for i in range(events):
        name = f"key-{i}"
        headers = produce_headers(Envelope.new("counter.incremented", "/bench/open").to_headers())
        producer.produce(topic, app.codec.encode("counter.incremented", {"name": name, "by": 1}), name, headers=headers)
    assert producer.flush(60) == 0


def _wait_outputs(bootstrap: str, topic: str, n: int, timeout: float = 120) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-open-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen, deadline = 0, time.monotonic() + timeout
    try:
        while seen < n and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(500, 0.2) if m.error() is None)
    finally:
        consumer.close()
    if seen < n:
        raise SystemExit(f"only {seen} of {n} outputs within {timeout} s")


def _session(app: App, settings: Settings, partitions: int, opens: Opens) -> float:
    """One worker until every store is ready; returns seconds from its assignment to all ready."""
    opens.assigned_at = opens.ready_at = None
    worker = Worker(app, settings, agents=["counter"], worker_id="bench-open", options=WorkerOptions())
    t0 = time.monotonic()
    worker.start()
    try:
        deadline = t0 + 120
        while True:
            runners = [r for r in worker.runners if r is not None and hasattr(r, "assignment")]
            if runners and all(r.assignment.settled and len(r.assignment.stores) == partitions for r in runners):
                time.sleep(0.05)  # the last open's log line
                if opens.assigned_at is None or opens.ready_at is None:
                    return time.monotonic() - t0
                return max(0.0, opens.ready_at - opens.assigned_at)
            if time.monotonic() > deadline:
                raise SystemExit("stores not ready within 120 s")
            time.sleep(0.01)
    finally:
        worker.stop()
        worker.join(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-open-"))
    prefix = "bo" + uuid.uuid4().hex[:8]
    contracts, schemas = write_contracts(tmp / "contracts", prefix, args.partitions)
    app = App(prefix, contracts_dir=contracts, schemas_dir=schemas)

    @app.agent("counter", consumes=["counter.incremented", "counter.reset"], produces=["counter.total"])
    def counter(event, ctx):
        if event.type == "counter.incremented":
            state = ctx.state
            state["n"] = state.get("n", 0) + event.value["by"]
            state["seq"] = state.get("seq", 0) + 1
            ctx.emit("counter.total", event.key, {"name": event.key, "total": state["n"], "seq": state["seq"]})

    from confluent_kafka.admin import AdminClient

    ensure_topics(AdminClient({"bootstrap.servers": args.bootstrap}), plan_topics(app, app.agents.values(), {}))
    settings = Settings(bootstrap_servers=args.bootstrap, state_dir=tmp / "state", processing_guarantee="exactly_once")
    opens = Opens()
    log = logging.getLogger("choreo.worker")
    log.addHandler(opens)
    log.setLevel(logging.INFO)
    first = _session(app, settings, args.partitions, opens)
    print(f"empty stores: {args.partitions} ready {first:.3f} s after their assignment, outcomes {opens.outcomes}")
    worker = Worker(app, settings, agents=["counter"], worker_id="bench-open", options=WorkerOptions())
    worker.start()
    _produce(args.bootstrap, app, f"{prefix}.counter.incremented", args.events)
    _wait_outputs(args.bootstrap, f"{prefix}.counter.total", args.events)
    worker.stop()
    worker.join(60)
    opens.ms.clear()
    opens.outcomes.clear()
    totals = [_session(app, settings, args.partitions, opens) for _ in range(args.rounds)]
    ms = sorted(opens.ms)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))] if ms else float("nan")
    print(
        f"up-to-date stores, {args.rounds} restarts x {args.partitions} partitions: {len(ms)} opens timed, "
        f"median {statistics.median(ms) if ms else float('nan'):.1f} ms, p95 {p95:.1f} ms, "
        f"max {max(ms) if ms else float('nan'):.1f} ms; outcomes {opens.outcomes}; "
        f"assigned to all {args.partitions} ready: median {statistics.median(totals):.3f} s "
        f"({', '.join(f'{t:.3f}' for t in totals)})"
    )


if __name__ == "__main__":
    main()
