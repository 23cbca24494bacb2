"""The full commerce flow under load: `processors.agents.app:app` in one worker process.

1. Maximum: publish a burst of orders as fast as one producer goes and time them to their terminal
   event (`order.confirmed` or `order.cancelled`): orders/s to the terminal state.
2. Offered load: at 25%, 50% and 75% of that maximum, publish at a fixed rate (open loop, token
   bucket) for a while; flow time per order = when its terminal event became readable
   (read_committed, i.e. committed) − publish time; p50/p95/p99.
3. Sustained capacity: the highest paced rate whose backlog (orders published and not yet terminal)
   does not grow over the window (60 s in the full plan): probes at 90% of the maximum, then up
   in steps of 10% while it holds, or a bisection on the 10% grid below it. Backlog is sampled at
   each quarter of the window; it "grows" when the last sample exceeds the first by more than one
   second's worth of the offered rate.

Standalone: `python benchmarks/flow.py --bootstrap HOST:PORT [--commit-interval-ms N ...]` (prints
the result as JSON); `benchmarks/run.py` runs it as its `flow` section. For an A/B of settings at
the same offered load, `--rates 80,160` offers fixed rates (orders/s) instead of shares of a
burst's maximum (no burst, no sustained search) and `--env NAME=VALUE` (repeatable) sets the
worker's environment, e.g. `--env CHOREO_COMMIT_IDLE_MS=0 --env CHOREO_GROUP_PROTOCOL=classic`;
`--psp` runs the PSP and the delivery sink as processes (CHOREO_PSP_URL / CHOREO_SINK_URL set, as
`choreo demo` runs them) instead of the in-process gateway.

Before anything is measured the broker is warmed up (:func:`warm_broker`): rounds of a 1,000-order
burst and 5 s at 50 orders/s until its JIT compiler threads go quiet (`--warm-orders 0` skips it).
Every point reports the CPU the worker and the broker used, and the broker's JIT and GC threads
apart (`cpu` in its JSON); with `--broker-requests`, the requests of each type the broker served
per order (`broker_requests`, from its JMX: benchmarks/broker_requests.py).

Run from `benchmarks/run.py` (section `flow`); the workers are `choreo worker` processes under a
unique app id, so consumer groups and state never mix with another run's. The contracts' topics are
shared by every run on a broker, so each agent's group is started at their current end: a new app
id would otherwise begin by replaying every earlier run's orders, and time that backlog.
"""

from __future__ import annotations

import argparse
import json
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
from broker_requests import BrokerRequests, describe_requests, per_order
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from cpu_share import GC_THREADS, JIT_THREADS, CpuMeter, bootstrap_port, describe_cpu, listening_pid

from processors.agents.app import CommerceConfig, build_app
from processors.agents.demo import wait_for_members
from processors.agents.loadgen import OrderMix
from processors.agents.verify import end_offsets, wait_settled
from processors.kafka_types import produce_headers
from processors.runtime import Worker
from processors.settings import Settings

APP_REF = "processors.agents.app:app"
TERMINAL = ("order.confirmed", "order.cancelled")


class Terminals:
    """Follows the terminal topics from given offsets; order id → when its first terminal event was
    read (ms, wall clock: under exactly_once an event is readable once its transaction commits) and
    its record timestamp (when it was produced)."""

    def __init__(self, bootstrap: str, topics: dict[str, str], since: dict[tuple[str, int], int]) -> None:
        self.seen: dict[str, int] = {}
        self.produced: dict[str, int] = {}
        self.outcome: dict[str, str] = {}  # order id -> its terminal event type
        self._types = {topic: event_type for event_type, topic in topics.items()}
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
            first = self._consumer.poll(0.2)  # consume(n, t) alone would wait t unless n arrive
            if first is None:
                continue
            msgs = [first, *self._consumer.consume(1000, 0)]
            now = int(time.time() * 1000)
            with self._lock:
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    order_id = (msg.key() or b"").decode()
                    if order_id not in self.seen:
                        self.seen[order_id] = now
                        self.produced[order_id] = msg.timestamp()[1]
                        self.outcome[order_id] = self._types.get(msg.topic() or "", "?")

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


def backlog_samples(sent: dict[str, int], done: dict[str, int], start_ms: int, end_ms: int) -> list[int]:
    """Orders published and not yet terminal at each quarter of the publishing window."""
    samples = []
    for q in (1, 2, 3, 4):
        t = start_ms + (end_ms - start_ms) * q // 4
        samples.append(sum(1 for o, s in sent.items() if s <= t and done.get(o, t + 1) > t))
    return samples


def grows(samples: list[int], rate: float) -> bool:
    """The backlog grew over the window: its last sample over its first by more than a second's
    worth of the offered rate (a flow keeping up holds a backlog of about rate × flow time)."""
    return samples[-1] - samples[0] > max(rate, 20.0)


def tail_breakdown(
    sent: dict[str, int], done: dict[str, int], outcome: dict[str, str], pct: float = 95.0
) -> dict[str, Any]:
    """Where a point's slowest orders (flow time over its ``pct`` percentile) are: per quarter of
    the publishing window, and per terminal event. A tail piled in the first quarter is what the
    load before left behind; one spread evenly is stalls that recur; one of cancellations is
    the compensations' longer path."""
    flow_ms = {o: done[o] - sent[o] for o in done}
    if not flow_ms:
        return {"over_ms": None, "by_quarter": [0, 0, 0, 0], "by_outcome": {}}
    over = report.percentile(sorted(float(v) for v in flow_ms.values()), pct) or 0.0
    slow = [o for o, v in flow_ms.items() if v > over]
    start, end = min(sent.values()), max(sent.values())
    width = max(end - start, 1)
    by_quarter = [0, 0, 0, 0]
    by_outcome: dict[str, int] = {}
    for o in slow:
        by_quarter[min(3, (sent[o] - start) * 4 // width)] += 1
        kind = outcome.get(o, "?")
        by_outcome[kind] = by_outcome.get(kind, 0) + 1
    return {"over_ms": over, "by_quarter": by_quarter, "by_outcome": by_outcome}


def describe_tail(tail: dict[str, Any]) -> str:
    """A point's tail in a log line: the slowest 5% per quarter of the window and per outcome."""
    outcomes = ", ".join(f"{kind} {n}" for kind, n in sorted(tail["by_outcome"].items()))
    return f"slowest 5% (over {tail['over_ms'] or 0:,.0f} ms) by quarter {tail['by_quarter']}, {outcomes or 'none'}"


def _offer(
    bootstrap: str, created: Any, terminals: Terminals, rate: float, seconds: float, run_id: str,
    cpu: CpuMeter | None = None, requests: BrokerRequests | None = None,
) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:  # fmt: skip
    """Publish at ``rate`` for ``seconds``, then wait for the orders' terminal events. With ``cpu``,
    ``offered["cpu"]`` is what the worker and the broker used while the orders were published; with
    ``requests``, ``offered["broker_requests"]`` the broker's requests per order from the first
    publish to the last terminal event (read outside the window: a read costs a JVM start)."""
    sent: dict[str, int] = {}
    spec = loadgen.LoadSpec(created.topic, 0, created.partitions, key_by="order")
    counted = requests.counts() if requests is not None else None
    before = cpu.snapshot() if cpu is not None else None
    offered = loadgen.paced(bootstrap, spec, rate, seconds, on_sent=sent.__setitem__, mix=OrderMix(), run_id=run_id)
    if cpu is not None and before is not None:
        offered["cpu"] = cpu.between(before, cpu.snapshot(), len(sent))
    done = terminals.wait(set(sent), timeout=30 + seconds)
    if requests is not None:
        offered["broker_requests"] = per_order(counted, requests.counts(), len(sent))
    return sent, done, offered


def _point(share: float, sent: dict[str, int], done: dict[str, int], offered: dict[str, Any],
           terminals: Terminals) -> dict[str, Any]:  # fmt: skip
    flow_ms = sorted(float(done[o] - sent[o]) for o in done)
    produced_ms = sorted(float(terminals.produced[o] - sent[o]) for o in done if o in terminals.produced)
    span = (max(done.values()) - min(sent.values())) / 1000 if done else 0
    return {
        "load_pct": share * 100,
        "offered_per_s": offered["events_per_s"],
        "completed_per_s": len(done) / span if span else None,
        "orders": len(sent),
        "completed": len(done),
        "p50_ms": report.percentile(flow_ms, 50),
        "p95_ms": report.percentile(flow_ms, 95),
        "p99_ms": report.percentile(flow_ms, 99),
        # to the terminal record's timestamp (when produced, before its commit): the old measure
        "produced_p50_ms": report.percentile(produced_ms, 50),
        "produced_p99_ms": report.percentile(produced_ms, 99),
        "tail": tail_breakdown(sent, done, terminals.outcome),
        "cpu": offered.get("cpu"),
        "broker_requests": offered.get("broker_requests"),
    }


def sustained_capacity(
    bootstrap: str, created: Any, terminals: Terminals, max_rate: float, seconds: float, run_id: str,
    log: Callable[[str], None], settle: Callable[[], Any] = lambda: None,
    start: float = 0.9, step: float = 0.1, top: float = 1.1,
) -> dict[str, Any]:  # fmt: skip
    """The highest probed share of ``max_rate`` whose backlog does not grow over ``seconds``, on a
    grid of ``step`` (see :func:`search_shares`)."""
    probes: list[dict[str, Any]] = []

    def probe(share: float) -> bool:
        rate = share * max_rate
        sent, done, offered = _offer(bootstrap, created, terminals, rate, seconds, f"{run_id}s{round(share * 100)}-")
        settle()
        samples = backlog_samples(sent, done, min(sent.values()), max(sent.values())) if sent else [0]
        held = bool(sent) and not grows(samples, rate) and len(done) == len(sent)
        probes.append({"share": share, "rate": rate, "offered_per_s": offered["events_per_s"],
                       "backlog": samples, "completed": len(done), "orders": len(sent), "held": held})  # fmt: skip
        log(f"flow: sustained probe {share * 100:.0f}% ({rate:,.0f}/s): backlog {samples} -> "
            f"{'holds' if held else 'grows'}")  # fmt: skip
        return held

    best = search_shares(probe, start, step, top)
    return {
        "sustained_share": best,
        "sustained_orders_per_s": None if best is None else best * max_rate,
        "window_s": seconds,
        "probes": probes,
    }


def search_shares(
    holds: Callable[[float], bool], start: float = 0.9, step: float = 0.1, top: float = 1.1
) -> float | None:
    """The highest share on the grid ``step, 2 * step, ...`` (up to ``top``) for which ``holds``:
    from ``start`` up while it holds; when ``start`` does not hold, a bisection below it (a rate
    that holds is taken to mean every lower one does). Each probe costs a whole window (20 s in
    the quick plan, 60 s in the full one): stepping down 10% at a time took six probes to find
    40% in the quick plan, the bisection takes four. None when not even ``step`` holds."""
    first, last = round(start / step), round(top / step)
    share = lambda k: round(k * step, 6)  # noqa: E731 - the grid
    if holds(share(first)):
        k = first
        while k < last and holds(share(k + 1)):
            k += 1
        return share(k)
    held, grew = 0, first  # 0: nothing known to hold yet
    while grew - held > 1:
        mid = (held + grew) // 2
        if holds(share(mid)):
            held = mid
        else:
            grew = mid
    return share(held) if held else None


def run(bootstrap: str, plan: Any, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    app_id = f"benchflow{uuid.uuid4().hex[:6]}"
    commit_interval_ms = getattr(plan, "commit_interval_ms", None)
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
    if commit_interval_ms is not None:
        env["CHOREO_COMMIT_INTERVAL_MS"] = str(commit_interval_ms)
    env.update(getattr(plan, "flow_env", None) or {})
    services = None
    if getattr(plan, "flow_psp", False):
        from processors.services.process import start_commerce_services

        services = start_commerce_services(root / f"{app_id}-services")
        env.update(services.env)
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
    port = bootstrap_port(bootstrap)
    meter = CpuMeter(
        {"worker": proc.pid, "broker": listening_pid(port) if port else None},
        families={"broker_jit": ("broker", JIT_THREADS), "broker_gc": ("broker", GC_THREADS)},
    )
    try:
        wait_for_members(settings, app, 1, timeout=120)
        terminals = Terminals(bootstrap, terminal_topics, since)
        requests = BrokerRequests.attach(meter.pids["broker"]) if getattr(plan, "flow_broker_requests", False) else None
        warmup = warm_broker(bootstrap, settings, app, created, terminals, meter, app_id, log,
                             getattr(plan, "flow_warm_orders", WARM_ORDERS))  # fmt: skip
        rates = getattr(plan, "flow_rates", None)
        if rates:
            fixed = _fixed_rates(bootstrap, settings, app, created, terminals, rates, plan.flow_seconds, app_id, log,
                                 meter, requests)  # fmt: skip
            return {**fixed, "broker_warmup": warmup}
        burst = plan.flow_burst
        log(f"flow: burst of {burst:,} orders to find the maximum")
        before = meter.snapshot()
        sent = _publish_burst(bootstrap, created.topic, created.partitions, burst, f"{app_id}-max-")
        done = terminals.wait(set(sent), timeout=60 + burst / 20)
        if not done:
            return {"status": "failed", "reason": f"no order reached a terminal state; see {log_path}"}
        burst_cpu = meter.between(before, meter.snapshot(), len(done))
        elapsed = (max(done.values()) - min(sent.values())) / 1000
        max_rate = len(done) / max(elapsed, 1e-3)
        log(f"flow: maximum {max_rate:,.0f} orders/s ({len(done)}/{burst} terminal in {elapsed:.1f}s); "
            f"{describe_cpu(burst_cpu)}")  # fmt: skip
        # the orders are terminal, but shipping, notifications and compensations still drain the
        # burst's tail in the same worker: a point measured now would time that backlog
        settled = wait_settled(settings, app, timeout=120 + burst / 20)
        # per order with that tail: what a paced order's CPU compares with (the burst's window
        # above ends at the last terminal event, before shipping and notifications are done)
        burst_cpu_settled = meter.between(before, meter.snapshot(), len(done))
        log(f"flow: agents caught up with the burst ({'yes' if settled else 'not within the wait'}); "
            f"to then: {describe_cpu(burst_cpu_settled)}")  # fmt: skip
        points = []
        for share in plan.flow_loads:
            rate = max(1.0, share * max_rate)
            run_id = f"{app_id}-{int(share * 100)}-"
            sent, done, offered = _offer(
                bootstrap, created, terminals, rate, plan.flow_seconds, run_id, meter, requests
            )
            wait_settled(settings, app, timeout=120)
            point = _point(share, sent, done, offered, terminals)
            points.append(point)
            log(
                f"flow: {share * 100:.0f}% ({rate:,.0f}/s offered): {len(done)}/{len(sent)} terminal, "
                f"p50 {point['p50_ms'] or 0:,.0f} ms, p95 {point['p95_ms'] or 0:,.0f} ms, "
                f"p99 {point['p99_ms'] or 0:,.0f} ms; {describe_tail(point['tail'])}; {describe_cpu(point['cpu'])}"
                + _requests_note(point, requests)
            )
        sustained = None
        sustain_s = getattr(plan, "flow_sustain_seconds", None)
        if sustain_s:
            settle = lambda: wait_settled(settings, app, timeout=120)  # noqa: E731 - between probes
            sustained = sustained_capacity(bootstrap, created, terminals, max_rate, sustain_s, app_id, log, settle)
            best = sustained["sustained_share"]
            log(f"flow: sustained capacity {'none found' if best is None else f'{best * 100:.0f}% of the maximum'}")
        return {
            "status": "ok",
            "max_orders_per_s": max_rate,
            "burst_orders": burst,
            "burst_cpu": burst_cpu,
            "burst_cpu_settled": burst_cpu_settled,
            "broker_warmup": warmup,
            "points": points,
            "sustained": sustained,
            "commit_interval_ms": commit_interval_ms,
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
        if services is not None:
            services.stop()


WARM_ORDERS = 1_000  # orders per warm-up round's burst
WARM_PACED_RATE = 50.0  # ...then this many orders/s
WARM_PACED_S = 5.0  # ...for this long
WARM_ROUNDS = 8
WARM_JIT_CORES = 0.1  # a broker whose compiler threads use less than this (5% of 2 cores) is warm


def _requests_note(point: dict[str, Any], requests: BrokerRequests | None) -> str:
    """A point's broker requests for its log line; nothing when they were not asked for."""
    return "" if requests is None else f"; {describe_requests(point['broker_requests'])}"


def warm_broker(
    bootstrap: str, settings: Settings, app: Any, created: Any, terminals: Terminals, meter: CpuMeter,
    app_id: str, log: Callable[[str], None], orders: int = WARM_ORDERS,
) -> dict[str, Any]:  # fmt: skip
    """Rounds of load, each a burst of ``orders`` orders and then a few seconds paced, until the
    broker's JIT compiler threads use under ``WARM_JIT_CORES`` over a round (at most
    ``WARM_ROUNDS``; one round when the broker's threads cannot be read). A fresh broker compiles
    its hot paths during its first minutes of load, with up to half of this machine's two cores:
    on one broker the burst maximum read 315 orders/s cold and 418/s warm, and the cold point's
    whole tail sat in its first quarter. A burst and paced load run different paths (big batches;
    small transactions and fetches), so a round has both. A broker warmed by the benchmarks before
    takes one round. ``orders`` 0 skips it."""
    rounds: list[dict[str, Any]] = []
    warm = False
    for i in range(WARM_ROUNDS if orders else 0):
        before = meter.snapshot()
        sent = _publish_burst(bootstrap, created.topic, created.partitions, orders, f"{app_id}-warm{i}b-")
        done = terminals.wait(set(sent), timeout=60 + orders / 20)
        paced, paced_done, _ = _offer(
            bootstrap, created, terminals, WARM_PACED_RATE, WARM_PACED_S, f"{app_id}-warm{i}p-"
        )
        cpu = meter.between(before, meter.snapshot(), len(done) + len(paced_done))
        wait_settled(settings, app, timeout=120)
        rounds.append({"orders": len(sent) + len(paced), "completed": len(done) + len(paced_done), "cpu": cpu})
        jit = cpu.get("broker_jit_cores")
        log(f"flow: broker warm-up round {i + 1}: {rounds[-1]['completed']}/{rounds[-1]['orders']} terminal; "
            f"{describe_cpu(cpu)}")  # fmt: skip
        if jit is None or jit < WARM_JIT_CORES:
            warm = jit is not None
            break
    return {"warm": warm, "jit_cores_threshold": WARM_JIT_CORES, "rounds": rounds}


def _fixed_rates(
    bootstrap: str, settings: Settings, app: Any, created: Any, terminals: Terminals, rates: list[float],
    seconds: float, app_id: str, log: Callable[[str], None], cpu: CpuMeter | None = None,
    requests: BrokerRequests | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Offer each of ``rates`` (orders/s) for ``seconds``: the same load for every setting of an
    A/B, where shares of a burst's maximum would differ with each run's maximum. A warm-up (3 s
    at 20/s, not reported) goes first: without it the first point timed the worker's first
    transactions and store opens (its p99 read 1.6-3.2 s at 80/s against 0.8-1.0 s at 160/s)."""
    _offer(bootstrap, created, terminals, 20.0, 3.0, f"{app_id}-warm-")
    wait_settled(settings, app, timeout=120)
    points = []
    for i, rate in enumerate(rates):  # the point's index in its run id: a rate given twice is new orders
        run_id = f"{app_id}-r{i}x{int(rate)}-"
        sent, done, offered = _offer(bootstrap, created, terminals, rate, seconds, run_id, cpu, requests)
        wait_settled(settings, app, timeout=120)
        point = _point(0.0, sent, done, offered, terminals)
        point.pop("load_pct")
        point["rate"] = rate
        samples = backlog_samples(sent, done, min(sent.values()), max(sent.values())) if sent else [0]
        point["backlog"] = samples
        point["held"] = bool(sent) and not grows(samples, rate) and len(done) == len(sent)
        points.append(point)
        log(
            f"flow: {rate:,.0f}/s: {len(done)}/{len(sent)} terminal, p50 {point['p50_ms'] or 0:,.0f} ms, "
            f"p99 {point['p99_ms'] or 0:,.0f} ms, backlog {samples}; {describe_tail(point['tail'])}; "
            f"{describe_cpu(point['cpu'])}" + _requests_note(point, requests)
        )
    return {"status": "ok", "points": points, "workers": 1, "app": APP_REF}


def main() -> None:
    """Run the flow benchmark alone against a broker, e.g. to compare commit intervals in one run."""
    parser = argparse.ArgumentParser(description="The full commerce flow under load (one worker)")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--burst", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="each offered-load point")
    parser.add_argument("--loads", default="0.25,0.5,0.75", help="shares of the maximum")
    parser.add_argument("--sustain-seconds", type=float, default=60.0, help="0: no sustained-capacity search")
    parser.add_argument("--commit-interval-ms", type=int, default=None, help="default: the settings'")
    parser.add_argument("--rates", default="", help="fixed offered rates, orders/s (no burst, no sustained search)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the worker (repeatable)")
    parser.add_argument("--psp", action="store_true", help="the PSP and the sink as processes (CHOREO_PSP_URL)")
    parser.add_argument("--broker-requests", action="store_true",
                        help="count the broker's requests per order (JMX; a local broker, jcmd and java)")  # fmt: skip
    parser.add_argument("--warm-orders", type=int, default=WARM_ORDERS,
                        help="orders per broker warm-up round (0: no warm-up)")  # fmt: skip
    parser.add_argument("--root", type=Path, default=Path("/tmp/choreo-bench-flow"))
    args = parser.parse_args()
    plan = argparse.Namespace(
        flow_burst=args.burst,
        flow_seconds=args.seconds,
        flow_loads=[float(x) for x in args.loads.split(",") if x],
        flow_sustain_seconds=args.sustain_seconds,
        commit_interval_ms=args.commit_interval_ms,
        flow_rates=[float(x) for x in args.rates.split(",") if x],
        flow_env=dict(item.split("=", 1) for item in args.env),
        flow_psp=args.psp,
        flow_warm_orders=args.warm_orders,
        flow_broker_requests=args.broker_requests,
    )
    args.root.mkdir(parents=True, exist_ok=True)
    result = run(args.bootstrap, plan, args.root, lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
