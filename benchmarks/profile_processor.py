"""Per-event cost of ``Processor.handle`` without Kafka: the engine's hot path in isolation.

Drives the real :class:`~processors.runtime._processor.Processor` of the ``bench_engine`` counter
agent (decode → dedupe → state → encode → emit + audit) over the same workload the engine benchmark
pre-loads (``counter.incremented``, ``--keys`` keys, fresh envelopes), in batches of ``--batch``
through a :class:`BatchView` that is applied to the store after each batch, as the worker does. No
producer: what is left is the Python per input that no broker can speed up.

    .venv/bin/python benchmarks/profile_processor.py --events 50000
    .venv/bin/python benchmarks/profile_processor.py --events 50000 --store rocks
    .venv/bin/python benchmarks/profile_processor.py --workload orders --store rocks   # make bench's workload
    .venv/bin/python benchmarks/profile_processor.py --cprofile benchmarks/out/processor.prof
    .venv/bin/py-spy record -r 2000 -o benchmarks/out/processor.svg -- .venv/bin/python benchmarks/profile_processor.py

Reports the best and median of ``--runs`` runs (fresh store and processor each), as µs per event
for ``handle`` alone and for ``handle`` + the per-batch store apply.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import workload  # noqa: E402
from bench_engine import build_app, write_contracts  # noqa: E402

from processors.contracts import Envelope  # noqa: E402
from processors.partitioner import partition_for  # noqa: E402
from processors.runtime._processor import Processor  # noqa: E402
from processors.runtime.app import App  # noqa: E402
from processors.runtime.metrics import AgentMetrics  # noqa: E402
from processors.runtime.state import BatchView, MemoryStore, RocksStore  # noqa: E402
from processors.runtime.state.store import KeyValueStore  # noqa: E402

Record = tuple[str, int, int, bytes, bytes, list[tuple[str, bytes]]]


def make_order_inputs(app: App, events: int, keys: int, partitions: int = 6) -> list[Record]:
    """The `make bench` pre-load (benchmarks/loadgen.py: `order.created` keyed by customer), as
    consumed records."""
    import loadgen

    topic = app.registry.get(workload.INPUT_TYPE).topic
    source = loadgen.EventSource(loadgen.LoadSpec(topic, events, partitions, keys), codec=app.codec)
    offsets = [0] * partitions
    out: list[Record] = []
    for _ in range(events):
        key, value, headers = source.next()
        partition = partition_for(key.encode(), partitions)
        offsets[partition] += 1
        out.append((topic, partition, offsets[partition] - 1, key.encode(), value, headers))
    return out


def make_inputs(app: App, events: int, keys: int, partitions: int = 3) -> list[Record]:
    """The bench_engine pre-load, as consumed records: (topic, partition, offset, key, value, headers)."""
    topic = app.registry.get("counter.incremented").topic
    encode = app.codec.encode
    out: list[Record] = []
    offsets = [0] * partitions
    for i in range(events):
        name = f"key-{i % keys}"
        env = Envelope.new("counter.incremented", "/bench/load")
        partition = partition_for(name.encode(), partitions)  # where a murmur2 producer puts it
        offsets[partition] += 1
        out.append(
            (
                topic,
                partition,
                offsets[partition] - 1,
                name.encode(),
                encode("counter.incremented", {"name": name, "by": 1}),
                env.to_headers(),
            )
        )
    return out


def run_once(
    app: App,
    inputs: list[Record],
    batch: int,
    store: KeyValueStore,
    with_metrics: bool,
    agent: str = "counter",
    perf: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """(seconds in handle, seconds in handle + apply) for all inputs, by the ``perf`` clock."""
    spec = app.agents[agent]
    metrics = AgentMetrics(spec.name, "at_least_once") if with_metrics else None
    processor = Processor(app, spec, "profile", metrics=metrics)
    handle = processor.handle
    in_handle = 0.0
    t_all = perf()
    for start in range(0, len(inputs), batch):
        view = BatchView(store)
        t0 = perf()
        for topic, p, off, key, value, headers in inputs[start : start + batch]:
            handle(view, topic, p, off, key, value, headers, 0)
        in_handle += perf() - t0
        if metrics is not None:
            metrics.flush()
        store.apply(view.writes, None, view.reads)
    return in_handle, perf() - t_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--store", choices=("memory", "rocks"), default="memory")
    ap.add_argument(
        "--workload",
        choices=("counter", "orders"),
        default="counter",
        help="counter: bench_engine's; orders: make bench's (benchmarks/workload.py, order.created)",
    )
    ap.add_argument("--no-metrics", action="store_true", help="run without Prometheus metrics (the worker has them)")
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="time by this thread's CPU time, not the wall clock (steadier on a shared machine)",
    )
    ap.add_argument("--cprofile", type=Path, default=None, help="cProfile one run into this file and print the top")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="choreo-profile-"))
    if args.workload == "orders":
        contracts, schemas = workload.write_contracts(tmp, "prof", 6)
        os.environ.setdefault("CHOREO_CONTRACTS_DIR", str(contracts))
        app = workload.build_app("prof", contracts, schemas)
        inputs, agent = make_order_inputs(app, args.events, args.keys), workload.AGENT
    else:
        contracts, schemas = write_contracts(tmp, "prof", 3)
        app = build_app("prof", contracts, schemas)
        inputs, agent = make_inputs(app, args.events, args.keys), "counter"

    def fresh_store(i: int) -> KeyValueStore:
        return MemoryStore() if args.store == "memory" else RocksStore(tmp / f"rocks{i}")

    if args.cprofile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        store = fresh_store(0)
        prof.enable()
        run_once(app, inputs, args.batch, store, not args.no_metrics, agent)
        prof.disable()
        store.close()
        args.cprofile.parent.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(args.cprofile))
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0

    clock = time.thread_time if args.cpu else time.perf_counter
    handle_us: list[float] = []
    total_us: list[float] = []
    run_once(app, inputs[: min(len(inputs), 5000)], args.batch, fresh_store(-1), not args.no_metrics, agent)  # warm-up
    for i in range(args.runs):
        store = fresh_store(i)
        h, t = run_once(app, inputs, args.batch, store, not args.no_metrics, agent, clock)
        store.close()
        handle_us.append(h / args.events * 1e6)
        total_us.append(t / args.events * 1e6)
        print(
            f"run {i + 1}: handle {handle_us[-1]:6.2f} µs/event, handle+apply {total_us[-1]:6.2f} µs/event", flush=True
        )
    best, med = min(handle_us), statistics.median(handle_us)
    print(
        f"\nhandle:       best {best:.2f} µs/event ({1e6 / best:,.0f} events/s), median {med:.2f} µs "
        f"({1e6 / med:,.0f} events/s)"
    )
    best_t, med_t = min(total_us), statistics.median(total_us)
    print(
        f"handle+apply: best {best_t:.2f} µs/event ({1e6 / best_t:,.0f} events/s), median {med_t:.2f} µs "
        f"({1e6 / med_t:,.0f} events/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
