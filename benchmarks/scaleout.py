"""Scale-out walk of the full commerce flow: under a steady paced load, 1 → 2 → 3 → 2 workers, then
one SIGKILLed (and started again), with exactly-once judged at the end.

    PYTHONPATH=. .venv/bin/python benchmarks/scaleout.py [--rate 40] [--phase-s 30] [--processes 1]
        [--worker-env CHOREO_STANDBY_REPLICAS=1] [--json OUT]

Against ``KAFKA_BOOTSTRAP_SERVERS`` when set, else a local KRaft broker started for the run (as
``benchmarks/run.py`` does; `make bench` runs this as its ``scaleout`` section).

What it measures, from what the workers themselves left on Kafka (never from their logs):

* **pauses per partition**: every handled input leaves an audit record, stamped (Kafka CreateTime)
  when the worker's transaction produced it. For each agent and input partition number, the longest
  gap between consecutive audit records that spans or follows a change (up to the next change) is
  how long that partition stopped; its steady gap is a few tens of ms at the offered rate. A
  partition *moved* when its owner (the member's ``client.id`` = ``<worker id>.<agent>``, sampled
  from the group every 0.5 s) after the change differs from the one before.
* **flow time** (``order.created`` publish time to ``order.confirmed``/``order.cancelled``) p50/p99
  of the orders created in the ``window_s`` after a change against those created in the
  ``window_s`` before it.
* **failover time-to-resume**: after a SIGKILL, for the partitions the killed worker owned, the time
  from the kill to their first audit record (includes the session timeout, the rebalance and any
  restore).
* **exactly-once**: the run's orders read back by ``choreo verify``'s ledger
  (:func:`processors.agents.verify.collect`): no invariant violation (no duplicate or missing
  terminal event, payment, reservation, notification; audit complete), every order terminal; and
  every worker stopped by SIGTERM exited 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import loadgen  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from processors.agents.app import CommerceConfig, build_app  # noqa: E402
from processors.agents.demo import wait_for_members  # noqa: E402
from processors.agents.loadgen import OrderMix  # noqa: E402
from processors.agents.verify import collect, end_offsets, wait_settled  # noqa: E402
from processors.runtime import App, Worker  # noqa: E402
from processors.settings import Settings  # noqa: E402
from processors.tooling.kafka_io import PartitionRange, read_ranges, reader_config  # noqa: E402

APP_REF = "processors.agents.app:app"
SAMPLE_EVERY_S = 0.5
Owners = dict[tuple[str, int], str]  # (agent, partition) -> "<worker id>|<group member id>"


@dataclass
class WalkPlan:
    rate: float = 40.0  # orders/s offered, open loop
    phase_s: float = 30.0  # time between changes
    window_s: float = 10.0  # flow time compared in this long before / after each change
    processes: int = 1  # --processes of each worker
    worker_env: dict[str, str] = field(default_factory=dict)  # settings for the workers, e.g. CHOREO_STANDBY_REPLICAS
    settle_timeout_s: float = 300.0
    steps: list[str] = field(default_factory=lambda: ["start", "start", "start", "stop", "kill", "restart"])


@dataclass
class Change:
    label: str
    kind: str  # start / stop / kill / restart
    worker: str
    at_ms: int
    workers_after: int
    exit_code: int | None = None  # of a stopped worker


def log(message: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ workers
class Fleet:
    """The worker processes of the walk: ``choreo worker`` each, own id and state directory."""

    def __init__(self, bootstrap: str, app_id: str, root: Path, processes: int, extra: dict[str, str]) -> None:
        self.bootstrap, self.app_id, self.root, self.processes = bootstrap, app_id, root, processes
        self.extra = extra
        self.procs: dict[str, subprocess.Popen] = {}
        self.exit_codes: dict[str, list[int]] = defaultdict(list)

    def start(self, name: str) -> None:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CHOREO_BOOTSTRAP_SERVERS": self.bootstrap,
            "CHOREO_COMMERCE_APP_ID": self.app_id,
            "CHOREO_COMMERCE_TIMEOUT_S": "60",
            "CHOREO_STATE_DIR": str(self.root / "state" / name),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            **self.extra,
        }
        cmd = [sys.executable, "-m", "processors.cli.main", "worker", "--app", APP_REF, "--worker-id", name]
        if self.processes > 1:
            cmd += ["--processes", str(self.processes)]
        with open(self.root / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def signal(self, name: str, sig: int, timeout: float = 90.0) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            log(f"{name} did not end within {timeout:.0f} s of signal {sig}: killed")
            code = code if code else -9
        self.exit_codes[name].append(code)
        return code

    def stop_all(self) -> dict[str, int]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        return {name: self._wait(name) for name in list(self.procs)}

    def _wait(self, name: str) -> int:
        proc = self.procs.pop(name)
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -9
        self.exit_codes[name].append(code)
        return code

    def dead(self) -> list[str]:
        """Workers that ended without being asked."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]


Sample = tuple[int, Owners, bool]  # (ms, owners, every group stable)


def owners_at(samples: list[Sample], before_ms: int, after_ms: int = 0, complete: int = 0) -> Owners:
    """The last sample in [after_ms, before_ms) whose owners cover ``complete`` partitions and
    whose groups were stable (empty when there is none)."""
    for at, owners, stable in reversed(samples):
        if after_ms <= at < before_ms and stable and len(owners) >= complete:
            return owners
    return {}


def last_owners(samples: list[Sample], after_ms: int, before_ms: int) -> Owners:
    """The last sample in [after_ms, before_ms), whatever the groups' state."""
    for at, owners, _stable in reversed(samples):
        if after_ms <= at < before_ms:
            return owners
    return {}


class OwnerSampler:
    """Samples each agent's group every 0.5 s: who owns which partition, when."""

    def __init__(self, settings: Settings, app: App, agents: list[str]) -> None:
        self.admin = AdminClient(settings.kafka_config())
        self.groups = {app.group_id(a): a for a in agents}
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="owner-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = int(time.time() * 1000)
            owners: Owners = {}
            stable = True
            try:
                for group_id, future in self.admin.describe_consumer_groups(list(self.groups)).items():
                    group = future.result(timeout=10)
                    stable = stable and str(group.state).endswith("STABLE")
                    for member in group.members:
                        # the member id tells a restarted worker from the dead instance of it
                        worker = f"{member.client_id.rsplit('.', 1)[0]}|{member.member_id}"
                        for tp in member.assignment.topic_partitions:
                            owners[(self.groups[group_id], tp.partition)] = worker
            except Exception:  # noqa: BLE001 - a sample the broker could not answer is skipped
                stable = False
            self.samples.append((now, owners, stable))
            self._stop.wait(SAMPLE_EVERY_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


# ============================================================================ the walk
def run(bootstrap: str, plan: WalkPlan, root: Path, say: Callable[[str], None] = log) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)  # the workers' logs go here (make bench hands a fresh path)
    app_id = f"scale{uuid.uuid4().hex[:6]}"
    run_id = f"{app_id}-"
    app = build_app(CommerceConfig(app_id=app_id, timeout_s=60.0))
    settings = Settings(bootstrap_servers=bootstrap, state_dir=root / "prepare")
    Worker(app, settings).prepare()  # the topics, from the contracts
    from flow import start_groups_at_end

    created = app.registry.get("order.created")
    audit_since = end_offsets(settings, [app.audit_topic])
    since = end_offsets(settings, _watched(app))
    start_groups_at_end(settings, app)
    agents = sorted(app.agents)
    partitions = created.partitions
    complete = len(agents) * partitions
    fleet = Fleet(bootstrap, app_id, root, plan.processes, plan.worker_env)
    sampler = OwnerSampler(settings, app, agents)
    changes: list[Change] = []
    sent: dict[str, int] = {}
    load_done = threading.Event()
    running: list[str] = []
    counter = 0
    load: threading.Thread | None = None
    try:
        counter += 1
        first = f"w{counter}"
        fleet.start(first)
        running.append(first)
        wait_for_members(settings, app, 1, timeout=180)
        say(f"{first} joined all {len(agents)} groups; offering {plan.rate:g} orders/s")
        total_s = plan.phase_s * len(plan.steps)

        def offer() -> None:
            try:
                spec = loadgen.LoadSpec(created.topic, 0, partitions, key_by="order")
                loadgen.paced(
                    bootstrap, spec, plan.rate, total_s, on_sent=sent.__setitem__, mix=OrderMix(), run_id=run_id
                )
            finally:
                load_done.set()

        load = threading.Thread(target=offer, daemon=True, name="load")
        load.start()
        killed: str | None = None
        for step in plan.steps[1:]:
            _wait_phase(plan.phase_s, fleet)
            at = int(time.time() * 1000)
            code = None
            if step == "start":
                counter += 1
                name = f"w{counter}"
                fleet.start(name)
                running.append(name)
            elif step == "stop":
                name = running.pop()
                code = fleet.signal(name, signal.SIGTERM)
            elif step == "kill":
                name = running.pop(0)
                killed = name
                code = fleet.signal(name, signal.SIGKILL)
            elif step == "restart":
                if killed is None:
                    raise ValueError("restart needs a kill before it")
                name = killed
                fleet.start(name)
                running.append(name)
            else:
                raise ValueError(f"unknown step {step!r}")
            changes.append(Change(f"{step} {name}", step, name, at, len(running), code))
            say(f"{step} {name}: {len(running)} worker(s)" + (f", exit {code}" if code is not None else ""))
        _wait_phase(plan.phase_s, fleet)
        load_done.wait(plan.phase_s + 60)
        end_ms = int(time.time() * 1000)
        say(f"load done: {len(sent):,} orders; waiting for the flow to settle")
        settled = wait_settled(settings, app, plan.settle_timeout_s)
        unexpected = fleet.dead()
        final_codes = fleet.stop_all()
    finally:
        sampler.close()
        for proc in fleet.procs.values():
            proc.kill()
        if load is not None:
            load.join(plan.phase_s + 60)
    say("reading the audit trail and the outcomes")
    ledger = collect(settings, app, since, order_prefix=f"ord-{run_id}")
    summary = ledger.summary(settled=True)
    audit = audit_times(settings, app, audit_since)
    terminal = {o: events[0][2] for o, events in ledger.terminal.items() if events}
    raw = Raw(
        asdict(plan),
        [asdict(c) for c in changes],
        sampler.samples,
        audit,
        ledger.created_ms,
        terminal,
        complete,
        end_ms,
    )
    try:
        raw.save(root / "walk-raw.json")
    except (OSError, TypeError, ValueError) as exc:  # the figures below do not depend on it
        say(f"could not save the raw observations: {exc!r}")
    result = analyse(plan, changes, sampler.samples, audit, ledger.created_ms, terminal, complete, end_ms)
    exits = [c for cs in fleet.exit_codes.values() for c in cs]
    sigterm_codes = [c.exit_code for c in changes if c.kind == "stop"] + list(final_codes.values())
    result.update(
        {
            "status": "ok",
            "plan": {**asdict(plan), "worker_env": shown_env(plan.worker_env)},
            "app_id": app_id,
            "orders_offered": len(sent),
            "orders": summary["orders"],
            "terminal": summary["terminal"],
            "non_terminal": summary["non_terminal"],
            "settled": settled,
            "invariant_violations": summary["invariant_violations"][:20],
            "violations": len(summary["invariant_violations"]),
            "audit_completeness": summary["audit_completeness"],
            "dead_lettered": summary["dead_lettered"],
            "unexpected_exits": unexpected,
            "sigterm_exit_codes": sigterm_codes,
            "exit_codes": exits,
            "exactly_once": bool(
                settled
                and not summary["invariant_violations"]
                and summary["orders"] == len(sent)
                and not unexpected
                and all(code == 0 for code in sigterm_codes)
            ),
        }
    )
    return result


def _watched(app: App) -> list[str]:
    from processors.agents.verify import watched_topics

    return watched_topics(app)


def _wait_phase(seconds: float, fleet: Fleet) -> None:
    """A phase of the walk; a worker that dies on its own meanwhile ends the walk."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dead = fleet.dead()
        if dead:
            raise RuntimeError(f"worker(s) {', '.join(dead)} ended without being asked; see their logs")
        time.sleep(0.2)


def audit_times(settings: Settings, app: App, since: dict[tuple[str, int], int]) -> dict[tuple[str, int], list[int]]:
    """(agent, input partition) -> sorted CreateTime (ms) of its audit records after ``since``."""
    consumer = Consumer(reader_config(settings))
    out: dict[tuple[str, int], list[int]] = defaultdict(list)
    try:
        ends = end_offsets(settings, [app.audit_topic])
        ranges = [PartitionRange(t, p, since.get((t, p), 0), end) for (t, p), end in ends.items()]
        for msg in read_ranges(consumer, ranges):
            value = msg.value()
            if value is None:
                continue
            try:
                record = app.codec.decode(app.audit_event_type, value)
            except Exception:  # noqa: BLE001 - a foreign record on the audit topic is not ours
                continue
            if record.get("offset", -1) < 0:  # timers have no input partition
                continue
            out[(record["agent_name"], int(record["partition"]))].append(msg.timestamp()[1])
    finally:
        consumer.close()
    for times in out.values():
        times.sort()
    return dict(out)


# ============================================================================ raw data
@dataclass
class Raw:
    """What a walk observed, saved beside its worker logs (``walk-raw.json``) so the analysis can
    be inspected and redone (``--reanalyse``) without running the walk again."""

    plan: dict[str, Any]
    changes: list[dict[str, Any]]
    samples: list[Sample]
    audit: dict[tuple[str, int], list[int]]
    created: dict[str, int]
    terminal: dict[str, int]  # order -> first terminal event's timestamp
    complete: int
    end_ms: int

    def save(self, path: Path) -> None:
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}  # asdict() cannot copy a defaultdict
        data["samples"] = [[at, {_key(k): w for k, w in owners.items()}, stable] for at, owners, stable in self.samples]
        data["audit"] = {_key(k): v for k, v in self.audit.items()}
        data["plan"] = {**self.plan, "worker_env": shown_env(self.plan.get("worker_env", {}))}
        path.write_text(json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: Path) -> Raw:
        data = json.loads(path.read_text())
        data["samples"] = [
            (at, {_unkey(k): w for k, w in owners.items()}, stable) for at, owners, stable in data["samples"]
        ]
        data["audit"] = {_unkey(k): v for k, v in data["audit"].items()}
        return cls(**data)


def _key(key: tuple[str, int]) -> str:
    return f"{key[0]}:{key[1]}"


def _unkey(text: str) -> tuple[str, int]:
    agent, _, partition = text.rpartition(":")
    return agent, int(partition)


def reanalyse(path: Path) -> dict[str, Any]:
    raw = Raw.load(path)
    plan = WalkPlan(**{k: v for k, v in raw.plan.items() if k in WalkPlan.__dataclass_fields__})
    changes = [Change(**c) for c in raw.changes]
    return analyse(plan, changes, raw.samples, raw.audit, raw.created, raw.terminal, raw.complete, raw.end_ms)


# ============================================================================ analysis
def pause_after(times: list[int], start_ms: int, end_ms: int) -> float:
    """The longest stop (s) of one partition in [start_ms, end_ms]: the largest gap between
    consecutive records that ends after ``start_ms`` (the gap spanning the change counts), the
    window's end closing a partition that never resumed."""
    longest, previous = 0, None
    for t in times:
        if t > end_ms:
            break
        if previous is not None and t > start_ms:
            longest = max(longest, t - max(previous, start_ms - 60_000))
        previous = t
    if previous is not None:
        longest = max(longest, end_ms - max(previous, start_ms))
    return longest / 1000


def steady_gap(times: list[int], start_ms: int, end_ms: int) -> float:
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if start_ms <= a and b <= end_ms]
    return max(gaps) / 1000 if gaps else 0.0


def flow_quantiles(created: dict[str, int], terminal: dict[str, int], start_ms: int, end_ms: int) -> dict[str, Any]:
    times = sorted(float(terminal[o] - t) for o, t in created.items() if start_ms <= t < end_ms and o in terminal)
    return {"orders": len(times), "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99)}


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


def _worker(owner: str) -> str:
    return owner.split("|", 1)[0]


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median_s": None, "max_s": None}
    return {"n": len(values), "median_s": round(statistics.median(values), 2), "max_s": round(max(values), 2)}


def analyse(
    plan: WalkPlan,
    changes: list[Change],
    samples: list[Sample],
    audit: dict[tuple[str, int], list[int]],
    created: dict[str, int],
    terminal: dict[str, int],
    complete: int,
    end_ms: int,
) -> dict[str, Any]:
    window_ms = int(plan.window_s * 1000)
    rows = []
    first_ms = min(created.values()) if created else 0
    steady_end = changes[0].at_ms if changes else end_ms
    baseline = [steady_gap(times, first_ms + 5000, steady_end) for times in audit.values()]
    # a pause is a gap longer than the machine's steady gaps: twice the longest, 1 s at least
    threshold = round(max(1.0, 2 * max(baseline, default=0.0)), 2)
    gone: set[str] = set()  # group members of stopped or killed worker instances
    for i, change in enumerate(changes):
        until = changes[i + 1].at_ms if i + 1 < len(changes) else end_ms
        before = owners_at(samples, change.at_ms, complete=complete)
        # the owners at the window's end, settled or not: a partition nobody holds then is moving
        after = last_owners(samples, change.at_ms, until)
        moved: list[float] = []
        unmoved: list[float] = []
        departing = {k for k, w in before.items() if _worker(w) == change.worker} if change.kind != "start" else set()
        if change.kind in ("stop", "kill"):
            gone |= {before[k] for k in departing}
        # partitions of a stopped or killed instance must move, even while the group still lists
        # it (the consumer protocol keeps a dead member until the broker's session timeout)
        lost = {k for k, w in before.items() if w in gone}
        for key, times in sorted(audit.items()):
            pause = pause_after(times, change.at_ms, until)
            if key in lost or before.get(key) is None or after.get(key) is None or before[key] != after[key]:
                moved.append(pause)
            else:
                unmoved.append(pause)
        row: dict[str, Any] = {
            "change": change.label,
            "workers_after": change.workers_after,
            "moved": _stats(moved),
            "unmoved": _stats(unmoved),
            "unmoved_paused": sum(1 for p in unmoved if p > threshold),
            "flow_before": flow_quantiles(created, terminal, change.at_ms - window_ms, change.at_ms),
            "flow_during": flow_quantiles(created, terminal, change.at_ms, change.at_ms + window_ms),
            "owners_known": bool(before) and bool(after),
        }
        if change.kind == "kill":
            owned = sorted(departing)
            resumes = []
            for key in owned:
                later = [t for t in audit.get(key, []) if t > change.at_ms]
                resumes.append((later[0] - change.at_ms) / 1000 if later else (until - change.at_ms) / 1000)
            row["failover"] = {"partitions": len(owned), **_stats(resumes)}
        rows.append(row)
    return {
        "steady_max_gap_s": round(max(baseline), 3) if baseline else None,
        "pause_threshold_s": threshold,
        "steady_flow": flow_quantiles(created, terminal, first_ms + 5000, steady_end),
        "changes": rows,
    }


# ============================================================================ report
def table(result: dict[str, Any]) -> str:
    """The Markdown table of one walk (RESULTS.md)."""
    lines = [
        "| change | workers | moved: n / median / max pause s | unmoved: n / median / max pause s "
        f"| unmoved paused > {result.get('pause_threshold_s', 1.0):g} s | flow p50/p99 ms before | during "
        "| failover resume median / max s |",
        "|---|---:|---|---|---:|---|---|---|",
    ]
    for row in result.get("changes", []):
        m, u = row["moved"], row["unmoved"]
        fb, fd = row["flow_before"], row["flow_during"]
        fo = row.get("failover")
        paused = row.get("unmoved_paused", row.get("unmoved_paused_over_1s"))  # the name of earlier runs
        failover = f"{_s(fo['median_s'])} / {_s(fo['max_s'])} ({fo['partitions']} partitions)" if fo else ""
        lines.append(
            f"| {row['change']} | {row['workers_after']} | {m['n']} / {_s(m['median_s'])} / {_s(m['max_s'])} "
            f"| {u['n']} / {_s(u['median_s'])} / {_s(u['max_s'])} | {paused} "
            f"| {_s(fb['p50_ms'], 0)} / {_s(fb['p99_ms'], 0)} | {_s(fd['p50_ms'], 0)} / {_s(fd['p99_ms'], 0)} "
            f"| {failover} |"
        )
    return "\n".join(lines)


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


BENCH_SECTION = "## Scale-out walk: latest `make bench` run"


def bench(bootstrap: str, quick: bool, root: Path, say: Callable[[str], None], results_md: Path | None) -> dict:
    """The ``scaleout`` section of ``benchmarks/run.py`` (`make bench`): one walk (shorter with
    ``--quick``); its table goes to its own section of RESULTS.md. A failure is reported, not
    raised: the other sections stand."""
    plan = WalkPlan(rate=20.0, phase_s=20.0, window_s=8.0) if quick else WalkPlan()
    try:
        result = run(bootstrap, plan, root / "scaleout", say)
    except Exception as exc:  # noqa: BLE001 - keep the rest of the report
        say(f"scaleout failed: {exc!r}")
        return {"status": "failed", "reason": repr(exc)[:300]}
    if results_md is not None:
        import report

        text = results_md.read_text() if results_md.is_file() else "# Benchmark results\n"
        results_md.write_text(report.replace_section(text, section(result), heading=BENCH_SECTION))
    return result


def shown_env(env: dict[str, str]) -> dict[str, str]:
    """The workers' extra settings as reported (JSON, RESULTS.md): secret-looking values masked."""
    secret = ("PASSWORD", "SECRET", "TOKEN", "SASL", "KEY")
    return {k: "***" if any(m in k.upper() for m in secret) else v for k, v in sorted(env.items())}


def section(result: dict[str, Any]) -> str:
    plan = result["plan"]
    return (
        f"{BENCH_SECTION}\n\n"
        f"`benchmarks/run.py --only scaleout` ({time.strftime('%Y-%m-%d')}): {plan['rate']:g} orders/s, "
        f"{plan['phase_s']:g} s between changes, flow time over {plan['window_s']:g} s before/after each; "
        + (
            f"worker settings {', '.join(f'{k}={v}' for k, v in plan.get('worker_env', {}).items())}; "
            if plan.get("worker_env")
            else ""
        )
        + f"steady longest gap per partition {result['steady_max_gap_s']} s, steady flow p50/p99 "
        f"{_s(result['steady_flow']['p50_ms'], 0)} / {_s(result['steady_flow']['p99_ms'], 0)} ms. "
        f"Exactly-once: {'held' if result['exactly_once'] else 'FAILED'} ({result['orders']:,} of "
        f"{result['orders_offered']:,} orders, {result['non_terminal']} not terminal, "
        f"{result['violations']} invariant violations, SIGTERM exits {result['sigterm_exit_codes']}).\n\n"
        f"{table(result)}\n"
    )


@contextmanager
def broker() -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` when set, else a local broker for the run."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    import run as bench_run

    with bench_run.kafka(False) as (bootstrap, _desc):
        yield bootstrap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=WalkPlan.rate)
    parser.add_argument("--phase-s", type=float, default=WalkPlan.phase_s)
    parser.add_argument("--window-s", type=float, default=WalkPlan.window_s)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every worker (repeatable), e.g. CHOREO_STANDBY_REPLICAS=1",
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--root", type=Path, help="work directory (state, worker logs); default a temp dir")
    parser.add_argument("--reanalyse", type=Path, metavar="WALK_RAW_JSON", help="only redo the tables of a walk")
    args = parser.parse_args()
    if args.reanalyse:
        print(table(reanalyse(args.reanalyse)))
        return 0
    extra = dict(item.split("=", 1) for item in args.worker_env if "=" in item)
    plan = WalkPlan(
        rate=args.rate, phase_s=args.phase_s, window_s=args.window_s, processes=args.processes, worker_env=extra
    )
    import tempfile

    root = args.root or Path(tempfile.mkdtemp(prefix="choreo-scaleout-"))
    root.mkdir(parents=True, exist_ok=True)
    with broker() as bootstrap:
        result = run(bootstrap, plan, root)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(section(result))
    keys = ("exactly_once", "orders_offered", "orders", "non_terminal", "violations", "sigterm_exit_codes")
    print(json.dumps({k: result[k] for k in keys} | {"steady_flow": result["steady_flow"]}))
    print(f"worker logs in {root}")
    return 0 if result["exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
