"""One hop's time budget: one event through one agent, where its milliseconds go.

A counter agent (the engine benchmark's workload) runs in this process on a one-partition topic;
the probe publishes one event, waits until the agent's output is readable by a ``read_committed``
consumer (as the next agent of a flow reads it), pauses a random 20–120 ms (so events land at any
phase of the commit interval) and publishes the next. Per event, wall-clock marks:

* ``acked``: the input's delivery report (it is on the broker);
* ``polled``: the agent's poll returned it (the consumer's fetch of a new record, then the
  ``batch_linger_s`` wait for more to join it);
* ``handled``: the agent's batch was handled (decode, dedupe, handler, state, emit, audit);
* ``commit_start`` / ``commit_end``: the commit of the work holding it (the wait for the commit
  interval or the idle commit, then the transaction's or the offset commit's round trips);
* ``visible``: the probe's read_committed consumer got the output (under exactly_once, the wait for
  the transaction marker and the last stable offset: a fetch parked on the broker answers when it
  expires, ``fetch.wait.max.ms``, or when data below the LSO arrives).

    PYTHONPATH=. .venv/bin/python benchmarks/hop_probe.py --bootstrap 127.0.0.1:19600 --events 40 \
        --case eos:interval=100,idle=10,fetch_wait=100 --case alo:interval=100,idle=10,fetch_wait=100

A case is ``eos`` or ``alo`` and comma-separated settings: ``interval`` (commit_interval_ms),
``idle`` (commit_idle_ms), ``fetch_wait`` (fetch.wait.max.ms of the agent's and the reader's
consumer), ``linger`` (the agent producer's linger.ms). Prints a table of medians (and p90) per leg
and case; ``--json`` writes the per-event marks.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_engine import build_app, write_contracts  # noqa: E402

from processors.contracts import Envelope  # noqa: E402
from processors.kafka_types import produce_headers  # noqa: E402
from processors.runtime import Worker, WorkerOptions  # noqa: E402
from processors.runtime.worker import AgentRunner  # noqa: E402
from processors.settings import Settings  # noqa: E402

LEGS = (
    ("poll wait + batch linger", "acked", "polled"),
    ("handle", "polled", "handled"),
    ("wait for commit", "handled", "commit_start"),
    ("commit", "commit_start", "commit_end"),
    ("visible to reader", "commit_end", "visible"),
    ("hop total (ack to visible)", "acked", "visible"),
    ("publish to visible", "sent", "visible"),
)


def parse_case(text: str) -> dict[str, Any]:
    """``eos:interval=100,idle=10`` → the case's guarantee and settings."""
    mode, _, rest = text.partition(":")
    if mode not in ("eos", "alo"):
        raise SystemExit(f"case {text!r}: starts with eos or alo")
    case: dict[str, Any] = {"name": text, "eos": mode == "eos", "interval": 100, "idle": 10, "fetch_wait": 100}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ("interval", "idle", "fetch_wait", "linger"):
            raise SystemExit(f"case {text!r}: unknown setting {key!r}")
        case[key] = int(value)
    return case


class Marks:
    """The wall-clock marks of the probe's events, by the input's sequence number."""

    def __init__(self) -> None:
        self.by_seq: dict[int, dict[str, float]] = {}
        self.lock = threading.Lock()

    def mark(self, seqs: list[int], name: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        with self.lock:
            for seq in seqs:
                self.by_seq.setdefault(seq, {}).setdefault(name, when)


def instrument(runner: AgentRunner, marks: Marks) -> None:
    """Wrap the runner's poll, batch and commit to mark the probe's events (a benchmark's view of
    the engine's internals: the probe is measuring them)."""
    open_seqs: list[int] = []
    poll, handle, commit = runner._poll, runner._handle_records, runner._commit

    def seqs_of(msgs: list[Any]) -> list[int]:
        return [m.offset() for m in msgs if m.error() is None]

    def timed_poll(timeout: float) -> list[Any]:
        msgs = poll(timeout)
        marks.mark(seqs_of(msgs), "polled")
        return msgs

    def timed_handle(msgs: list[Any], batch: Any) -> int:
        n = handle(msgs, batch)
        seqs = seqs_of(msgs)
        marks.mark(seqs, "handled")
        open_seqs.extend(seqs)
        return n

    def timed_commit(batch: Any, handled: int) -> None:
        seqs = list(open_seqs)
        open_seqs.clear()
        marks.mark(seqs, "commit_start")
        commit(batch, handled)
        marks.mark(seqs, "commit_end")

    runner._poll = timed_poll  # type: ignore[method-assign]
    runner._handle_records = timed_handle  # type: ignore[method-assign]
    runner._commit = timed_commit  # type: ignore[method-assign]


def run_case(bootstrap: str, case: dict[str, Any], events: int, tmp: Path) -> list[dict[str, float]]:
    prefix = "probe" + uuid.uuid4().hex[:6]
    contracts, schemas = write_contracts(tmp / prefix, prefix, 1)
    app = build_app(prefix, contracts, schemas)
    in_topic = app.registry.get("counter.incremented").topic
    out_topic = app.registry.get("counter.total").topic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, 1, replication_factor=-1) for t in (in_topic, out_topic)]).values():
        f.result(60)
    guarantee = "exactly_once" if case["eos"] else "at_least_once"
    kafka: dict[str, Any] = {"fetch.wait.max.ms": case["fetch_wait"]}
    if "linger" in case:
        kafka["linger.ms"] = case["linger"]
    settings = Settings(
        bootstrap_servers=bootstrap,
        state_dir=tmp / prefix / "state",
        processing_guarantee=guarantee,
        commit_interval_ms=case["interval"],
        commit_idle_ms=case["idle"],
        kafka=kafka,
    )
    worker = Worker(app, settings, agents=["counter"], worker_id="probe", guarantee=guarantee, options=WorkerOptions())
    worker.prepare()
    runner = AgentRunner(app, app.agents["counter"], settings, "probe", guarantee, worker.stop_event, worker.options)
    marks = Marks()
    instrument(runner, marks)
    runner.start()
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": case["fetch_wait"],
        }
    )
    reader.assign([TopicPartition(out_topic, 0, 0)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True})
    rng = random.Random(16)
    try:
        if not runner.ready.wait(60):
            raise RuntimeError("the agent did not get its partition within 60 s")
        out: list[dict[str, float]] = []
        for seq in range(events):
            env = Envelope.new("counter.incremented", "/bench/probe")
            value = app.codec.encode("counter.incremented", {"name": "k", "by": 1})

            def acked(err: Any, msg: Any) -> None:
                if err is None:
                    marks.mark([msg.offset()], "acked")

            sent = time.time()
            producer.produce(in_topic, value, "k", headers=produce_headers(env.to_headers()), on_delivery=acked)
            producer.flush(10)
            msg = None
            deadline = time.monotonic() + 30
            while msg is None or msg.error() is not None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no output for event {seq} within 30 s")
                msg = reader.poll(0.5)
            marks.mark([seq], "visible")
            marks.mark([seq], "sent", sent)
            time.sleep(rng.uniform(0.02, 0.12))
        with marks.lock:
            out = [dict(marks.by_seq[s]) for s in range(events)]
        return out[3:]  # the first few pay the first transaction, AddPartitionsToTxn, metadata
    finally:
        worker.stop_event.set()
        runner.thread.join(30)
        reader.close()


def legs(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Median and p90 of each leg, ms."""
    res = {}
    for name, a, b in LEGS:
        vals = sorted((r[b] - r[a]) * 1000 for r in rows if a in r and b in r)
        if vals:
            res[name] = (statistics.median(vals), vals[min(len(vals) - 1, int(len(vals) * 0.9))])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--case", action="append", default=[], help="e.g. eos:interval=100,idle=10,fetch_wait=100")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cases = [parse_case(c) for c in (args.case or ["eos:", "alo:"])]
    tmp = Path(tempfile.mkdtemp(prefix="choreo-probe-"))
    results: dict[str, Any] = {}
    try:
        for case in cases:
            rows = run_case(args.bootstrap, case, args.events, tmp)
            results[case["name"]] = {"legs": legs(rows), "rows": rows}
            print(f"{case['name']}: " + "; ".join(f"{k} {m:.1f}/{p:.1f}" for k, (m, p) in legs(rows).items()),
                  flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| leg (median / p90 ms) | " + " | ".join(f"`{c['name']}`" for c in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    for name, _, _ in LEGS:
        cells = [results[c["name"]]["legs"].get(name) for c in cases]
        print(f"| {name} | " + " | ".join(f"{v[0]:.1f} / {v[1]:.1f}" if v else "—" for v in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
