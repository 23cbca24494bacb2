"""The systems measured in the project's venv, each run as its own process (so peak RSS is its own):

* ``raw``: the plain confluent-kafka consume→produce loop of ``bench_engine.raw_loop`` (batch
  consume, no decoding): the practical limit of one Python process;
* ``ours``: the engine's stateful agent on the benchmark workload (:mod:`benchmarks.workload`),
  timed by ``bench_engine.agent_run`` (first batch to last commit).

    .venv/bin/python benchmarks/systems.py raw  --bootstrap B --topic T --out-topic O --events N [--eos]
    .venv/bin/python benchmarks/systems.py ours --bootstrap B --workdir D --prefix P --events N [--eos]

Prints one ``BENCH_RESULT {json}`` line, like the peer runners.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import bench_engine  # noqa: E402
import workload  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(system: str, guarantee: str, events: int, rate: float, **extra: object) -> None:
    record = {
        "system": system,
        "guarantee": guarantee,
        "events": events,
        "events_per_s": round(rate, 1),
        "elapsed_s": round(events / rate, 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **extra,
    }
    sys.stdout.write("BENCH_RESULT " + json.dumps(record) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["raw", "ours"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--eos", action="store_true", help="exactly_once (default at_least_once)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--topic", help="raw: input topic")
    parser.add_argument("--out-topic", help="raw: output topic")
    parser.add_argument("--workdir", type=Path, help="ours: where run.py wrote the contracts (and state goes)")
    parser.add_argument("--prefix", help="ours: the topic prefix of the contracts")
    parser.add_argument("--profile", default=None, help="ours: write a cProfile of the run here")
    args = parser.parse_args()
    guarantee = "exactly_once" if args.eos else "at_least_once"
    started = time.perf_counter()
    if args.system == "raw":
        rate = bench_engine.raw_loop(args.bootstrap, args.topic, args.out_topic, args.events, args.eos, args.batch)
    else:
        contracts, schemas = args.workdir / "contracts", args.workdir / "schemas"
        rate = workload.run_engine_agent(
            args.bootstrap,
            contracts,
            schemas,
            args.prefix,
            args.events,
            args.eos,
            args.batch,
            args.workdir / "state",
            args.profile,
        )
    emit(args.system, guarantee, args.events, rate, wall_s=round(time.perf_counter() - started, 2))


if __name__ == "__main__":
    main()
