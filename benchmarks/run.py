"""`make bench`: ours against a hand-written loop, Quix Streams, faust-streaming and a raw loop.

In one run on the same pre-loaded topics: the hand-written confluent-kafka loop doing the same work
(the fair baseline, benchmarks/handwritten.py), the peers, a raw passthrough loop (no work, for
reference); plus growth (keys, partitions), the full commerce flow, and I/O-bound agents (one
dependency call per event, benchmarks/io_bound.py).

    .venv/bin/python benchmarks/run.py [--quick] [--runs R] [--events N] [--only comparison,growth,flow,io]

Against `KAFKA_BOOTSTRAP_SERVERS` when set, else a local KRaft broker started for the run (and
stopped after it). Peer venvs are built on first use (`benchmarks/peers/setup.py`). Every system
runs as its own process with a fresh consumer group; the order of systems rotates between repeats.
Writes `benchmarks/out/results.json`, PNG plots in `benchmarks/out/`, and the section
"Load benchmarks (make bench)" of `benchmarks/RESULTS.md` (other sections are left alone).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import io_bound  # noqa: E402
import loadgen  # noqa: E402
import report  # noqa: E402
import scaleout  # noqa: E402
import workload  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from peers import setup as peer_setup  # noqa: E402

from processors.runtime.topics import watermarks  # noqa: E402

OUT = BENCH / "out"
PY = sys.executable


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ plan
@dataclass
class Plan:
    quick: bool
    runs: int
    events: int
    faust_events: int  # faust processes the first M events of the same topic (it is ~50x slower)
    partitions: int
    keys: int
    skew: float
    batch: int = 500
    systems: list[str] = field(
        default_factory=lambda: [
            "raw/at_least_once",
            "raw/exactly_once",
            "hand/at_least_once",
            "hand/exactly_once",
            "ours/at_least_once",
            "ours/exactly_once",
            "quix/at_least_once",
            "quix/exactly_once",
            "faust/at_least_once",
        ]
    )
    growth_keys: list[int] = field(default_factory=list)
    growth_events: int = 0
    growth_partitions: list[int] = field(default_factory=list)
    growth_runs: int = 1  # repeats per growth point: the points' spread is small next to the axis
    flow_loads: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    flow_burst: int = 5_000
    flow_seconds: float = 60.0
    flow_sustain_seconds: float = 60.0  # the window a sustained rate's backlog must not grow over (0: no search)
    flow_warm_orders: int = 1_000  # per broker warm-up round before the flow's burst (flow.warm_broker)
    demo_orders: int = 300  # the default `choreo demo` (two workers), for its p50 flow time
    timeout_s: float = 600.0
    faust_timeout_s: float = 240.0  # ~30 s of work; a faust run that stalls in a rebalance is cut off sooner

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:  # < 10 min on 2 cores, peer venvs and broker start included
            return cls(
                quick=True,
                runs=2,
                events=40_000,
                faust_events=6_000,
                partitions=6,
                keys=10_000,
                skew=0.0,
                growth_keys=[1_000, 100_000],
                growth_events=40_000,
                growth_partitions=[1, 6],
                flow_burst=2_000,
                flow_seconds=15.0,
                flow_sustain_seconds=20.0,
                flow_warm_orders=500,
                timeout_s=240.0,
            )
        # ~30 min on 2 cores (it was ~61 min with 200,000 events per comparison run, 1M events per
        # growth point and 3 runs per growth point): the comparison keeps 3 repeats (its spread is
        # the widest), the growth points run once on 400,000 / 100,000 events (benchmarks/RESULTS.md).
        return cls(
            quick=False,
            runs=3,
            events=100_000,
            faust_events=20_000,
            partitions=6,
            keys=10_000,
            skew=0.0,
            growth_keys=[1_000, 100_000, 1_000_000],
            growth_events=400_000,
            growth_partitions=[1, 6, 12],
        )


# ============================================================================ broker
@contextlib.contextmanager
def kafka(keep: bool = False) -> Iterator[tuple[str, str]]:
    """(bootstrap, description): KAFKA_BOOTSTRAP_SERVERS, or a local broker for the run."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env, f"external cluster at {env} (KAFKA_BOOTSTRAP_SERVERS)"
        return
    from processors.localbroker import LocalBroker
    from processors.localbroker.broker import free_port

    broker = LocalBroker(REPO / ".choreo" / "bench-broker", port=free_port(), heap="1g")
    log(f"starting a local Kafka broker ({broker.data_dir})")
    started = broker.start()
    try:
        version = broker.jars.kafka_version
    except Exception:  # noqa: BLE001 - only for the description
        version = "?"
    try:
        yield broker.bootstrap, f"local single-node KRaft broker, Apache Kafka {version}, 1 GiB heap, same machine"
    finally:
        if started and not keep:
            broker.stop()
            shutil.rmtree(broker.data_dir, ignore_errors=True)


def delete_prefix(bootstrap: str, prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=15).topics if t.startswith((prefix + ".", prefix + "-"))]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(30)


def topic_end(bootstrap: str, topic: str) -> int:
    """Sum of the high watermarks of ``topic`` (0 when it does not exist)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-probe-{uuid.uuid4().hex[:6]}"})
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        # the raw loop's output topic was just created: its leaders may still be settling
        return sum(watermarks(consumer, topic, p)[1] for p in md.partitions)
    finally:
        consumer.close()


# ============================================================================ one configuration
@dataclass
class Config:
    """One pre-loaded input topic and everything a system needs to run on it."""

    bootstrap: str
    prefix: str
    workdir: Path
    spec: loadgen.LoadSpec
    load: dict[str, Any]

    @property
    def topics(self) -> dict[str, str]:
        return workload.topics(self.prefix)

    @classmethod
    def prepare(
        cls, bootstrap: str, root: Path, events: int, partitions: int, keys: int, skew: float, distinct: bool = False
    ) -> Config:
        prefix = "bench" + uuid.uuid4().hex[:6]
        workdir = root / prefix
        workload.write_contracts(workdir, prefix, partitions)
        spec = loadgen.LoadSpec(workload.topics(prefix)["input"], events, partitions, keys, skew)
        log(f"pre-loading {spec.describe()} into {spec.topic}")
        load = loadgen.preload(bootstrap, spec, recreate=True, count_distinct=distinct)
        log(
            f"  pre-loaded at {load['events_per_s']:,.0f} events/s, {load['mean_event_bytes']:.0f} bytes/event "
            f"({load['mean_value_bytes']:.0f} B Avro value + {load['mean_header_bytes']:.0f} B headers + key)"
        )
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for name in ("output", "audit", "raw_output", "hand_changelog"):
            loadgen.ensure_topic(admin, workload.topics(prefix)[name], partitions)
        return cls(bootstrap, prefix, workdir, spec, load)


def command(system: str, guarantee: str, cfg: Config, events: int, batch: int) -> list[str]:
    t = cfg.topics
    common = ["--bootstrap", cfg.bootstrap, "--events", str(events)]
    eos = guarantee == "exactly_once"
    if system == "raw":
        return [
            PY,
            str(BENCH / "systems.py"),
            "raw",
            *common,
            "--topic",
            t["input"],
            "--out-topic",
            t["raw_output"],
            "--batch",
            str(batch),
            *(["--eos"] if eos else []),
        ]
    if system == "ours":
        return [
            PY,
            str(BENCH / "systems.py"),
            "ours",
            *common,
            "--workdir",
            str(cfg.workdir),
            "--prefix",
            cfg.prefix,
            "--batch",
            str(batch),
            *(["--eos"] if eos else []),
        ]
    state = tempfile.mkdtemp(prefix=f"{system}-", dir=cfg.workdir)
    if system == "hand":
        return [
            PY,
            str(BENCH / "handwritten.py"),
            *common,
            "--topic",
            t["input"],
            "--out-topic",
            t["output"],
            "--audit-topic",
            t["audit"],
            "--changelog-topic",
            t["hand_changelog"],
            "--state-dir",
            state,
            "--batch",
            str(batch),
            *(["--eos"] if eos else []),
        ]
    if system == "quix":
        return [
            str(peer_setup.venv_python("quix")),
            str(BENCH / "peers" / "quix_agent.py"),
            *common,
            "--topic",
            t["input"],
            "--out-topic",
            t["output"],
            "--audit-topic",
            t["audit"],
            "--state-dir",
            state,
            "--guarantee",
            "exactly-once" if eos else "at-least-once",
        ]
    if system == "faust":
        return [
            str(peer_setup.venv_python("faust")),
            str(BENCH / "peers" / "faust_agent.py"),
            *common,
            "--topic",
            t["input"],
            "--partitions",
            str(cfg.spec.partitions),
            "--out-topic",
            t["output"],
            "--audit-topic",
            t["audit"],
            "--state-dir",
            state,
        ]
    raise ValueError(f"unknown system {system!r}")


def run_system(system: str, guarantee: str, cfg: Config, events: int, batch: int, timeout_s: float) -> dict[str, Any]:
    """One measured run in a fresh process; outputs are counted to check the system did the work."""
    cmd = command(system, guarantee, cfg, events, batch)
    out_topic = cfg.topics["raw_output" if system == "raw" else "output"]
    before = topic_end(cfg.bootstrap, out_topic)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=str(REPO),
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        return {
            "system": system,
            "guarantee": guarantee,
            "events": events,
            "events_per_s": None,
            "error": f"timed out after {timeout_s:.0f}s",
        }
    wall = time.monotonic() - started
    try:
        result = report.parse_result(proc.stdout)
    except ValueError:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        return {
            "system": system,
            "guarantee": guarantee,
            "events": events,
            "events_per_s": None,
            "error": f"exit {proc.returncode}: {tail}",
        }
    result["guarantee"] = guarantee
    result["process_wall_s"] = round(wall, 2)
    written = topic_end(cfg.bootstrap, out_topic) - before
    result["output_records"] = written  # >= events (transaction markers count as offsets too)
    if written < events:
        result["error"] = f"wrote {written} follow-ups for {events} events"
    return result


# ============================================================================ sections
def comparison(bootstrap: str, plan: Plan, root: Path) -> dict[str, Any]:
    cfg = Config.prepare(bootstrap, root, plan.events, plan.partitions, plan.keys, plan.skew)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(plan.runs):
            order = plan.systems[rep % len(plan.systems) :] + plan.systems[: rep % len(plan.systems)]
            for case in order:
                system, guarantee = case.split("/")
                events = plan.faust_events if system == "faust" else plan.events
                timeout = plan.faust_timeout_s if system == "faust" else plan.timeout_s
                result = run_system(system, guarantee, cfg, events, plan.batch, timeout)
                result["repeat"] = rep + 1
                runs.append(result)
                rate = result.get("events_per_s")
                log(
                    f"run {rep + 1}/{plan.runs} {case:22s} "
                    + (
                        f"{rate:>10,.0f} events/s, peak RSS {result.get('peak_rss_mb', 0):.0f} MiB"
                        if rate and not result.get("error")
                        else f"FAILED: {result.get('error')}"
                    )
                )
    finally:
        delete_prefix(bootstrap, cfg.prefix)
    summary = report.summarize(runs)
    return {"load": cfg.load, "runs": runs, "summary": summary, "ratios": report.ratios(summary)}


def growth(bootstrap: str, plan: Plan, root: Path) -> dict[str, Any]:
    """Our agent (at_least_once) as the keys grow and as the partitions grow: events/s, peak RSS."""
    out: dict[str, Any] = {"keys": [], "partitions": []}
    for keys in plan.growth_keys:
        out["keys"].append(_growth_point(bootstrap, plan, root, keys=keys, partitions=plan.partitions, axis="keys"))
    for partitions in plan.growth_partitions:
        events = min(plan.events, plan.growth_events)
        out["partitions"].append(
            _growth_point(
                bootstrap, plan, root, keys=plan.keys, partitions=partitions, axis="partitions", events=events
            )
        )
    out["rss_spread_keys"] = report.rss_spread(out["keys"])
    return out


def _growth_point(
    bootstrap: str, plan: Plan, root: Path, keys: int, partitions: int, axis: str, events: int | None = None
) -> dict[str, Any]:
    events = events or max(plan.growth_events, 0)
    cfg = Config.prepare(bootstrap, root, events, partitions, keys, plan.skew, distinct=True)
    try:
        results = [
            run_system("ours", "at_least_once", cfg, events, plan.batch, plan.timeout_s * 4)
            for _ in range(plan.growth_runs)
        ]
    finally:
        delete_prefix(bootstrap, cfg.prefix)
    ok = [r for r in results if not r.get("error")]
    point = {
        "keys": keys,
        "partitions": partitions,
        "events": events,
        "distinct_keys": cfg.load.get("distinct_keys"),
        "events_per_s": report.median_or_none(r["events_per_s"] for r in ok),
        "peak_rss_mb": report.median_or_none(r.get("peak_rss_mb") for r in ok),
        "runs": results,
    }
    log(
        f"growth {axis}={point[axis]:,}: {point['events_per_s'] or 0:,.0f} events/s, "
        f"peak RSS {point['peak_rss_mb'] or 0:.0f} MiB"
    )
    return point


def profile(bootstrap: str, plan: Plan, root: Path, out_dir: Path) -> dict[str, Any]:
    """py-spy samples of our agent (at_least_once) on the comparison workload: where the time goes."""
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        return {"status": "skipped", "reason": "py-spy is not installed (the bench extra installs it)"}
    cfg = Config.prepare(bootstrap, root, plan.events, plan.partitions, plan.keys, plan.skew)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path, svg_path = out_dir / "profile_ours.txt", out_dir / "profile_ours.svg"
    try:
        cmd = command("ours", "at_least_once", cfg, plan.events, plan.batch)
        for fmt, path in (("raw", raw_path), ("flamegraph", svg_path)):
            proc = subprocess.run(
                [spy, "record", "--rate", "250", "--format", fmt, "-o", str(path), "--", *cmd],
                capture_output=True,
                text=True,
                timeout=plan.timeout_s,
                cwd=str(REPO),
            )
            if proc.returncode != 0 or not path.is_file():
                return {"status": "failed", "reason": (proc.stderr or proc.stdout).strip()[-300:]}
            if fmt == "raw":
                result = report.parse_result(proc.stdout)
    finally:
        delete_prefix(bootstrap, cfg.prefix)
    prof = report.collapse_profile(raw_path.read_text())
    prof.update(
        status="ok",
        events_per_s_under_profiler=result.get("events_per_s"),
        flamegraph=str(svg_path.relative_to(REPO)) if svg_path.is_relative_to(REPO) else str(svg_path),
    )
    log(
        f"profile: {prof['samples']} samples; top self: "
        + ", ".join(f"{r['function']} {r['share'] * 100:.0f}%" for r in prof["self"][:3])
    )
    return prof


def flow(bootstrap: str, plan: Plan, root: Path, max_rate: float | None) -> dict[str, Any]:
    """The full commerce flow (`processors.agents.app:app`) at 25/50/75% of its measured maximum
    (benchmarks/flow.py). A failure is reported, not raised: the other sections stand."""
    try:
        import flow as flow_bench

        return flow_bench.run(bootstrap, plan, root, log)
    except Exception as exc:  # noqa: BLE001 - the flow app is young; keep the rest of the report
        log(f"flow failed: {exc!r}")
        return {"status": "failed", "reason": repr(exc)[:300]}


def default_sections(quick: bool) -> str:
    """What `make bench` runs; the quick variant leaves out the scale-out walk (its own ~4 minutes;
    `--only scaleout` runs it alone)."""
    sections = "comparison,growth,profile,flow,demo,io"
    return sections if quick else sections + ",scaleout"


def demo(bootstrap: str, plan: Plan, root: Path) -> dict[str, Any]:
    """The default `choreo demo` (300 orders, two worker processes, paced by the flow, the PSP and
    the delivery sink as processes): its flow time and verdict. Reported, never raised."""
    try:
        from processors.agents.app import app as commerce
        from processors.agents.demo import DemoOptions, run_demo
        from processors.settings import Settings

        settings = Settings.load(bootstrap_servers=bootstrap, env={})
        commerce.configure(settings)
        summary = run_demo(commerce, settings, DemoOptions(orders=plan.demo_orders, work_dir=root / "demo"))
    except Exception as exc:  # noqa: BLE001 - keep the rest of the report
        log(f"demo failed: {exc!r}")
        return {"status": "failed", "reason": repr(exc)[:300]}
    flow_ms = summary["flow_time_ms"]
    log(
        f"demo: {summary['orders']} orders, p50 {flow_ms['p50'] or 0:,.0f} ms, p99 {flow_ms['p99'] or 0:,.0f} ms, "
        f"{len(summary['invariant_violations'])} violations"
    )
    return {
        "status": "ok",
        "orders": summary["orders"],
        "workers": 2,
        "flow_time_ms": flow_ms,
        "orders_per_s": summary.get("orders_per_s"),
        "workers_ready_s": summary.get("workers_ready_s"),
        "terminal": summary["terminal"],
        "invariant_violations": len(summary["invariant_violations"]),
    }


def io(bootstrap: str, plan: Plan, root: Path, results_md: Path | None) -> dict[str, Any]:
    """I/O-bound agents (benchmarks/io_bound.py, issue 14): one call per event of 20/50/200 ms at
    max_in_flight 1, the default and 256 (quick: 50 ms, ~80 s), and in the full run the commerce
    flow with the PSP at 50 ms; its tables go to a section of their own in RESULTS.md."""
    result = io_bound.bench(bootstrap, io_bound.IoPlan.make(plan.quick), root / "io", log)
    if results_md is not None:
        io_bound.write_section(results_md, result, " ".join(["benchmarks/run.py", *sys.argv[1:]]))
    return result


# ============================================================================ machine
def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(mem_kib / 1024 / 1024, 1)
    import confluent_kafka
    import fastavro

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": getattr(confluent_kafka, "__version__", None) or str(confluent_kafka.version()),
        "librdkafka": confluent_kafka.libversion()[0],
        "fastavro": fastavro.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "peers": {peer: reqs for peer, reqs in peer_setup.REQUIREMENTS.items()},
    }


# ============================================================================ output
def write_outputs(results: dict[str, Any], out_dir: Path, results_md: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        import plots

        made = plots.render(results, out_dir)
        results["plots"] = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in made]
    except ImportError as exc:
        log(f"plots skipped: {exc} (install the bench extra: pip install -e '.[bench]')")
        results["plots"] = []
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if results_md is not None:
        import markdown_section

        text = results_md.read_text() if results_md.is_file() else "# Benchmark results\n"
        results_md.write_text(report.replace_section(text, markdown_section.render(results)))
    log(f"wrote {out_dir / 'results.json'}" + (f" and the table in {results_md}" if results_md else ""))


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, 2 repeats: < 10 minutes on 2 cores")
    parser.add_argument("--runs", type=int, help="repeats per system (median reported)")
    parser.add_argument("--events", type=int, help="events per run (all systems but faust)")
    parser.add_argument("--faust-events", type=int, help="events per faust run (a prefix of the same topic)")
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--keys", type=int)
    parser.add_argument("--skew", type=float, help="0 = uniform keys, ~1.1 = Zipf-skewed")
    parser.add_argument("--systems", help="comma-separated cases, e.g. raw/at_least_once,ours/at_least_once")
    parser.add_argument("--growth-keys", type=_int_list, help="key counts of the growth section, e.g. 1000,1000000")
    parser.add_argument(
        "--growth-partitions", type=_int_list, help="partition counts of the growth section ('' for none)"
    )
    parser.add_argument(
        "--only",
        help="sections to run (default: comparison,growth,profile,flow,demo,io,scaleout; --quick leaves out the "
        "scale-out walk, ~4 minutes on its own, to stay under 10 minutes)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--results-md", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--no-results-md", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--keep-broker", action="store_true")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only redo the plots and the RESULTS.md section from an earlier results.json",
    )
    args = parser.parse_args()
    if args.render:
        rendered = json.loads(args.render.read_text())
        write_outputs(rendered, args.out, None if args.no_results_md else args.results_md)
        return 0

    plan = Plan.make(args.quick)
    for name in ("runs", "events", "faust_events", "partitions", "keys", "skew", "growth_keys", "growth_partitions"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    if args.systems:
        plan.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    sections = {s.strip() for s in (args.only or default_sections(plan.quick)).split(",")}
    started = time.monotonic()
    t0 = time.monotonic()
    peers = (
        sorted({c.split("/")[0] for c in plan.systems} & set(peer_setup.REQUIREMENTS))
        if "comparison" in sections
        else []
    )
    for peer in peers:
        peer_setup.venv_python(peer)
    venv_s = time.monotonic() - t0
    results: dict[str, Any] = {
        "benchmark": "choreo-streams load benchmarks",
        "quick": plan.quick,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": asdict(plan),
        "peer_venvs_s": round(venv_s, 1),
    }
    root = Path(tempfile.mkdtemp(prefix="choreo-bench-"))
    try:
        with kafka(args.keep_broker) as (bootstrap, broker_desc):
            results["broker"] = broker_desc
            if "comparison" in sections:
                results["comparison"] = comparison(bootstrap, plan, root)
            if "growth" in sections:
                results["growth"] = growth(bootstrap, plan, root)
            if "profile" in sections:
                results["profile"] = profile(bootstrap, plan, root, args.out)
            # the demo before the flow: both use the contracts' topics, and the demo's groups
            # (`commerce`, as `choreo demo` runs them) would first replay every flow order there
            if "demo" in sections:
                results["demo"] = demo(bootstrap, plan, root)
            if "flow" in sections:
                ours = ((results.get("comparison") or {}).get("summary") or {}).get("ours/at_least_once") or {}
                results["flow"] = flow(bootstrap, plan, root, ours.get("events_per_s"))
            if "io" in sections:
                results["io"] = io(bootstrap, plan, root, None if args.no_results_md else args.results_md)
            if "scaleout" in sections:
                results["scaleout"] = scaleout.bench(
                    bootstrap, plan.quick, root, log, None if args.no_results_md else args.results_md
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    write_outputs(results, args.out, None if args.no_results_md else args.results_md)
    _print_summary(results)
    return 0


def _print_summary(results: dict[str, Any]) -> None:
    comp = results.get("comparison")
    if comp:
        print(report.comparison_table(comp["summary"]))
        print()
        print(report.ratio_table(comp["ratios"]))
    print(f"\n{results['duration_s']:.0f}s in all")


if __name__ == "__main__":
    sys.exit(main())
