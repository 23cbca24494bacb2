"""Engine benchmark: one stateful agent vs a raw confluent-kafka consume→produce loop.

Same broker, same pre-loaded input topic, same run, for both guarantees:

* ``raw at_least_once``: consume a batch, produce every record unchanged (key, value, headers) to
  an output topic, flush, commit offsets asynchronously.
* ``raw exactly_once``: the same inside one Kafka transaction per batch (send_offsets_to_transaction).
* ``agent at_least_once`` / ``agent exactly_once``: the engine running a counter agent on the
  same input: decode the envelope and the Avro value, dedupe against the seen-keys store, read and
  write per-key state (RocksDB + changelog), encode and emit a follow-up event, write an audit record.

Each case consumes the whole topic with a fresh consumer group; the clock runs from the first batch
to the last commit (group join and topic creation are not measured). The median of ``--runs`` runs
is reported, with ratios: agent/raw per guarantee and agent exactly_once / agent at_least_once.

    .venv/bin/python benchmarks/bench_engine.py --events 100000 --runs 3 --json benchmarks/out/engine.json
    .venv/bin/python benchmarks/bench_engine.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from processors.contracts import Envelope  # noqa: E402
from processors.kafka_types import produce_headers  # noqa: E402
from processors.runtime import (  # noqa: E402
    App,  # noqa: E402
    Worker,
    WorkerOptions,
)
from processors.settings import Settings  # noqa: E402

DATA = REPO / "tests" / "data" / "engine"


def write_contracts(dest: Path, prefix: str, partitions: int) -> tuple[Path, Path]:
    contracts, schemas = dest / "contracts", dest / "schemas"
    contracts.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DATA / "schemas", schemas, dirs_exist_ok=True)
    for path in sorted((DATA / "contracts").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        data["topic"] = f"{prefix}.{data['event_type']}"
        data["partitions"] = partitions
        (contracts / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return contracts, schemas


def build_app(app_id: str, contracts: Path, schemas: Path) -> App:
    app = App(app_id, contracts_dir=contracts, schemas_dir=schemas)

    @app.agent("counter", consumes=["counter.incremented"], produces=["counter.total"])
    def counter(event, ctx):
        state = ctx.state
        state["n"] = state.get("n", 0) + event.value["by"]
        state["seq"] = state.get("seq", 0) + 1
        ctx.emit("counter.total", event.key, {"name": event.key, "total": state["n"], "seq": state["seq"]})

    return app


def preload(bootstrap: str, app: App, topic: str, events: int, keys: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "enable.idempotence": True,
            "batch.num.messages": 10000,
        }
    )
    encode = app.codec.encode
    for i in range(events):
        name = f"key-{i % keys}"
        env = Envelope.new("counter.incremented", "/bench/load")
        while True:
            try:
                producer.produce(
                    topic,
                    encode("counter.incremented", {"name": name, "by": 1}),
                    name,
                    # confluent-kafka's stub types produce(headers=) as an invariant List of
                    # (str, str | bytes | None), refusing our read-only list of bytes pairs.
                    headers=produce_headers(env.to_headers()),
                )
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)


def raw_loop(bootstrap: str, topic: str, out_topic: str, events: int, eos: bool, batch: int) -> float:
    """Events/s of a plain consume→produce loop (the baseline)."""
    group = f"bench-raw-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 100,
        }
    )
    pconf = {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.num.messages": 10000,
    }
    if eos:
        pconf["transactional.id"] = f"{group}.tx"
    producer = Producer(pconf)
    if eos:
        producer.init_transactions(30)
    consumer.subscribe([topic])
    done = 0
    start = None
    try:
        while done < events:
            msgs = consumer.consume(batch, 1.0)
            if not msgs:
                continue
            if start is None:
                start = time.perf_counter()
            if eos:
                producer.begin_transaction()
            offsets: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(out_topic, m.value(), m.key(), headers=m.headers())
                        break
                    except BufferError:
                        producer.poll(0.05)
                in_topic, partition, offset = m.topic(), m.partition(), m.offset()
                assert in_topic is not None and partition is not None and offset is not None  # set when error() is None
                offsets[(in_topic, partition)] = offset + 1
                done += 1
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            if eos:
                producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            else:
                producer.flush(30)
                consumer.commit(offsets=tps, asynchronous=True)
        elapsed = time.perf_counter() - (start or time.perf_counter())
    finally:
        consumer.close()
        producer.flush(10)
    return events / elapsed


def agent_run(
    bootstrap: str,
    contracts: Path,
    schemas: Path,
    prefix: str,
    events: int,
    eos: bool,
    batch: int,
    state_root: Path,
    profile: str | None = None,
    app_factory: Callable[[str, Path, Path], App] | None = None,
    agent: str | None = None,
) -> float:
    """Events/s of one agent of an app over the pre-loaded input, from its first batch to the commit
    of the batch that reached ``events``. ``app_factory(app_id, contracts, schemas)`` builds the app
    (default: :func:`build_app`, the counter workload) and ``agent`` names the agent to run
    (default: ``counter``), so other workloads reuse this harness without patching the module."""
    app_id = f"{prefix}-agent-{uuid.uuid4().hex[:6]}"
    app = (app_factory or build_app)(app_id, contracts, schemas)
    agent = agent or "counter"
    guarantee = "exactly_once" if eos else "at_least_once"
    settings = Settings(bootstrap_servers=bootstrap, state_dir=state_root / app_id, processing_guarantee=guarantee)
    worker = Worker(
        app,
        settings,
        agents=[agent],
        worker_id="bench",
        guarantee=guarantee,
        options=WorkerOptions(batch_size=batch, poll_timeout_s=0.5),
    )
    worker.prepare()
    from processors.runtime.worker import AgentRunner

    runner = AgentRunner(app, app.agents[agent], settings, "bench", guarantee, worker.stop_event, worker.options)
    marks: dict[str, float] = {}
    original = runner._process

    def timed(msgs):
        if msgs and "start" not in marks:
            marks["start"] = time.perf_counter()
        original(msgs)
        if runner.handled >= events and "end" not in marks:
            marks["end"] = time.perf_counter()
            worker.stop_event.set()

    runner._process = timed  # type: ignore[method-assign]
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            runner.run()
        finally:
            prof.disable()
            prof.dump_stats(profile)
    else:
        runner.run()
    if "end" not in marks:
        raise RuntimeError(f"agent stopped after {runner.handled} of {events} events")
    return events / (marks["end"] - marks["start"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="20,000 events, 1 run")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the agent at_least_once run into this file")
    args = ap.parse_args()
    if args.quick:
        args.events, args.runs = 20_000, 1

    prefix = "bench" + uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="choreo-bench-"))
    contracts, schemas = write_contracts(tmp, prefix, args.partitions)
    loader_app = build_app(prefix, contracts, schemas)
    topic = loader_app.registry.get("counter.incremented").topic
    raw_out = f"{prefix}.raw-out"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    futures = admin.create_topics([NewTopic(t, args.partitions, replication_factor=-1) for t in (topic, raw_out)])
    for f in futures.values():
        f.result(60)
    print(
        f"pre-loading {args.events} events on {topic} ({args.partitions} partitions, {args.keys} keys)...", flush=True
    )
    t0 = time.perf_counter()
    preload(args.bootstrap, loader_app, topic, args.events, args.keys)
    print(f"  loaded in {time.perf_counter() - t0:.1f}s", flush=True)

    cases: dict[str, list[float]] = {
        "raw at_least_once": [],
        "agent at_least_once": [],
        "raw exactly_once": [],
        "agent exactly_once": [],
    }
    for run in range(args.runs):
        for name in cases:
            eos = name.endswith("exactly_once")
            try:
                if name.startswith("raw"):
                    rate = raw_loop(args.bootstrap, topic, raw_out, args.events, eos, args.batch)
                else:
                    prof = str(args.profile) if (args.profile and not eos and run == 0) else None
                    rate = agent_run(
                        args.bootstrap, contracts, schemas, prefix, args.events, eos, args.batch, tmp / "state", prof
                    )
            except KafkaException as exc:
                print(f"{name}: failed: {exc}", file=sys.stderr)
                return 1
            cases[name].append(rate)
            print(f"run {run + 1}/{args.runs} {name:22s} {rate:>10,.0f} events/s", flush=True)

    med = {k: statistics.median(v) for k, v in cases.items()}
    ratios = {
        "agent/raw at_least_once": med["agent at_least_once"] / med["raw at_least_once"],
        "agent/raw exactly_once": med["agent exactly_once"] / med["raw exactly_once"],
        "agent exactly_once / agent at_least_once": med["agent exactly_once"] / med["agent at_least_once"],
    }
    print("\nmedian events/s")
    for k, v in med.items():
        print(f"  {k:22s} {v:>10,.0f}")
    for k, v in ratios.items():
        print(f"  {k:42s} {v:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "events": args.events,
                    "runs": args.runs,
                    "keys": args.keys,
                    "partitions": args.partitions,
                    "batch": args.batch,
                    "runs_events_per_s": cases,
                    "median_events_per_s": med,
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
