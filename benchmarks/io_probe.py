"""Where an I/O-bound agent's in-flight slots go (issue 14): one ``io_bound.py`` case, with the
agent thread's time split by phase (poll, waiting for a handler's end, commit, the rest) and a
sampler of the executor's jobs by phase (running, waiting for their key, finished but held behind
an earlier input of their partition) every 2 ms.

Why: at 50 ms and 64 in flight the agent reached ~0.5× of 64/latency, i.e. ~32 handlers running on
average; the split says which part of the loop holds the other slots.

    .venv/bin/python benchmarks/io_probe.py --bootstrap 127.0.0.1:9303 --in-flight 64 --latency-ms 50
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' modules, as io_bound.py has them

import io_bound  # noqa: E402

from processors.runtime import worker as worker_module  # noqa: E402

TIMED = {"_poll": "poll", "_commit": "commit"}


def _timed(totals: dict[str, float], name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0

    return wrapper


def _sample(stop: threading.Event, runners: Any, phases: Counter[str], samples: list[int]) -> None:
    while not stop.wait(0.002):
        for runner in list(runners()):
            executor = getattr(runner, "executor", None)
            if executor is None:
                continue
            try:
                jobs = list(executor)
            except RuntimeError:  # changed while read
                continue
            samples[0] += 1
            for job in jobs:
                phases[job.phase.name] += 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--root", type=Path, default=Path("/tmp/choreo-io-probe"))
    args = parser.parse_args()
    totals: dict[str, float] = defaultdict(float)
    runner_cls = worker_module.AgentRunner
    for attr, name in TIMED.items():
        setattr(runner_cls, attr, _timed(totals, name, getattr(runner_cls, attr)))
    collect = worker_module.KeyedExecutor.collect
    worker_module.KeyedExecutor.collect = _timed(totals, "wait for ends", collect)  # type: ignore[method-assign]
    run_once = runner_cls.run_once
    runner_cls.run_once = _timed(totals, "turns", run_once)  # type: ignore[method-assign]
    plan = io_bound.IoPlan.make(quick=True)
    plan.events = 15_000
    bench = io_bound.prepare(args.bootstrap, args.root, plan, print)
    phases: Counter[str] = Counter()
    samples = [0]
    stop = threading.Event()
    original_start = io_bound.Worker.start

    def start(self: Any) -> None:
        original_start(self)
        threading.Thread(target=_sample, args=(stop, lambda: self.runners, phases, samples), daemon=True).start()

    io_bound.Worker.start = start  # type: ignore[method-assign]
    try:
        variant = io_bound.Variant(f"async/{args.in_flight}", "async", args.in_flight)
        case = io_bound.run_case(bench, variant, args.latency_ms, plan, io_bound.engine_features())
    finally:
        stop.set()
        bench.server.stop()
    rate = case.get("events_per_s") or 0.0
    ideal = args.in_flight / (args.latency_ms / 1000)
    print(f"events/s {rate:,.0f}, ideal {ideal:,.0f} ({rate / ideal:.2f}x), "
          f"mean handlers running by Little's law {rate * args.latency_ms / 1000:.1f}")  # fmt: skip
    n = max(1, samples[0])
    print("mean jobs by phase (sampled): " + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(phases.items())))
    turns = totals.pop("turns", 0.0) or 1.0
    print("agent thread, share of its turns: " + ", ".join(f"{k} {v / turns:.0%}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
