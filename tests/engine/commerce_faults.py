"""The commerce fault run (``make fault-commerce``): the commerce choreography
(``processors.agents.app``) against the real PSP and delivery sink processes, its workers SIGKILLed
at random while 2,000+ orders flow, then judged from the services' own ledgers.

It starts a broker of its own, the PSP (``choreo psp serve``, default 50 ms latency and 3 %
transient failures) and the sink (``choreo sink serve``), and worker processes of the commerce app
(:class:`tests.engine.harness.WorkerPool`, as ``make chaos``). The orders are the demo's
(:func:`processors.agents.demo.publish_orders`, paced to the flow): declined, out of stock (valid
card: charged, then cancelled, then refunded), never answered (timed out), invalid, plus repeats
and undecodable payloads. While they are published, ``--kills`` workers are SIGKILLed, each at a
random point of the publication, and restarted. Once every order is terminal and the agents have
caught up, the PSP's ledger (``GET /v1/ledger``) and the sink's (``GET /v1/deliveries``) are read
for the run's orders and judged (:func:`judge`), and ``choreo verify`` is run against the topics
and both services. Failures (each must be 0):

* ``double_charges``: orders with more than one approved charge at the PSP;
* ``orphan_refunds``: refunds at the PSP of a payment that is no approved charge;
* ``double_refunds``: orders refunded more than once;
* ``unrefunded``: orders charged at the PSP and cancelled, with no refund;
* ``wrong_refunds``: refunds of orders that were not cancelled;
* ``confirmed_uncharged``: confirmed orders with no approved charge at the PSP;
* ``duplicate_notifications``: an (order, kind) delivered at the sink under more than one key;
* ``missing_notifications``: a terminal (or shipped) order whose notice the sink never received;
* ``non_terminal``: orders without a terminal event when the wait ran out (a stall);
* ``wrong_outcomes``: orders that ended otherwise than the generator meant, a timeout aside;
* ``unexpected_exits``: workers that ended when nobody stopped them, or stopped with non-zero;
* ``verify_failed``: ``choreo verify`` exited non-zero, or the agents never caught up.

Context: ``charged_then_cancelled`` and ``refunded_once`` (equal when all is well), kills done,
PSP replays of a key, timed-out-instead orders, repeated outputs of our own (at_least_once may
repeat them; the receivers must not). Exit 0 only when every failure is 0; ``--json`` prints the
figures as one JSON list.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from processors.agents.demo import (
    DemoOptions,
    Published,
    TerminalFollower,
    await_terminal,
    publish_orders,
    wait_for_members,
)
from processors.agents.ledger import FlowLedger
from processors.agents.loadgen import Expected, OrderMix
from processors.localbroker import LocalBroker
from processors.localbroker.broker import free_port
from processors.settings import Settings
from tests.engine.harness import REPO, WorkerPool

MIX = OrderMix(declined=0.1, out_of_stock=0.2, timeout=0.02, invalid=0.02)
NOTICE = {"confirmed": "ORDER_CONFIRMED", "cancelled": "ORDER_CANCELLED"}
SHIPPED_NOTICE = "ORDER_SHIPPED"
SHOWN = 10  # order ids named per failure in the notes


@dataclass(frozen=True)
class Options:
    guarantee: str
    orders: int = 2000
    kills: int = 5
    workers: int = 2
    psp_latency_ms: float = 50.0
    psp_failure_rate: float = 0.03
    sink_failure_rate: float = 0.02
    timeout_s: float = 45.0  # a killed worker's partitions wait out a session: no order may time out for it
    seed: int = 14
    in_flight: int = 32
    payments_max_in_flight: int | None = None  # CHOREO_AGENT_PAYMENTS__MAX_IN_FLIGHT for the workers
    broker_port: int = 0  # 0: a free one


@dataclass(frozen=True)
class OrderOutcome:
    """One order as the run saw it: what the generator meant (an :class:`Expected` value), what the
    topics say became of it (``confirmed``, ``cancelled_<reason>`` or None) and whether it shipped."""

    expected: str
    actual: str | None
    shipped: bool = False

    @property
    def status(self) -> str | None:
        return None if self.actual is None else self.actual.split("_", 1)[0]


@dataclass
class Judged:
    """What the receivers' ledgers say of the run's orders (see the module's docstring)."""

    double_charges: int = 0
    orphan_refunds: int = 0
    double_refunds: int = 0
    unrefunded: int = 0
    wrong_refunds: int = 0
    confirmed_uncharged: int = 0
    duplicate_notifications: int = 0
    missing_notifications: int = 0
    non_terminal: int = 0
    wrong_outcomes: int = 0
    # context
    charges: int = 0
    approved: int = 0
    refunds: int = 0
    charged_then_cancelled: int = 0
    refunded_once: int = 0
    deliveries: int = 0
    timed_out_instead: int = 0
    notes: list[str] = field(default_factory=list)

    FAILURES = (
        "double_charges",
        "orphan_refunds",
        "double_refunds",
        "unrefunded",
        "wrong_refunds",
        "confirmed_uncharged",
        "duplicate_notifications",
        "missing_notifications",
        "non_terminal",
        "wrong_outcomes",
    )

    def failures(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FAILURES if getattr(self, name)}

    def flag(self, name: str, orders: list[str], what: str) -> None:
        """Count ``orders`` under figure ``name`` and name the first few in a note."""
        if not orders:
            return
        setattr(self, name, getattr(self, name) + len(orders))
        more = f" (and {len(orders) - SHOWN} more)" if len(orders) > SHOWN else ""
        self.notes.append(f"{what}: {', '.join(sorted(orders)[:SHOWN])}{more}")


def judge(orders: Mapping[str, OrderOutcome], psp: Mapping[str, Any], sink: Mapping[str, Any]) -> Judged:
    """Judge the PSP's ledger (``charges``/``refunds`` rows of ``GET /v1/ledger``) and the sink's
    (``deliveries`` rows of ``GET /v1/deliveries``) against the orders' outcomes. Computed from the
    rows, not from the services' own summaries: the judge does not take anyone's word."""
    out = Judged()
    _judge_outcomes(out, orders)
    _judge_psp(out, orders, psp)
    _judge_sink(out, orders, sink)
    return out


def _judge_outcomes(out: Judged, orders: Mapping[str, OrderOutcome]) -> None:
    out.flag("non_terminal", [o for o, x in orders.items() if x.actual is None], "no terminal event")
    timed_out: list[str] = []
    wrong: list[str] = []
    for order_id, x in orders.items():
        if x.actual is None or x.actual == _meant(x.expected):
            continue
        (timed_out if x.actual == "cancelled_timeout" else wrong).append(order_id)
    out.flag("wrong_outcomes", wrong, "ended otherwise than meant")
    out.timed_out_instead = len(timed_out)
    if timed_out:
        out.notes.append(f"{len(timed_out)} orders timed out instead: {', '.join(sorted(timed_out)[:SHOWN])}")


def _meant(expected: str) -> str:
    return "confirmed" if expected == Expected.CONFIRMED.value else f"cancelled_{expected}"


def _judge_psp(out: Judged, orders: Mapping[str, OrderOutcome], psp: Mapping[str, Any]) -> None:
    charges, refunds = psp["charges"], psp["refunds"]
    approved = [c for c in charges if c["status"] == "approved"]
    out.charges, out.approved, out.refunds = len(charges), len(approved), len(refunds)
    charged = Counter(c["order_id"] for c in approved)
    approved_ids = {c["payment_id"] for c in approved}
    refunded = Counter(r["order_id"] for r in refunds)
    out.flag("double_charges", [o for o, n in charged.items() if n > 1], "charged more than once at the PSP")
    orphans = [r["order_id"] for r in refunds if r["payment_id"] not in approved_ids]
    out.flag("orphan_refunds", orphans, "refunded at the PSP without an approved charge")
    out.flag("double_refunds", [o for o, n in refunded.items() if n > 1], "refunded more than once at the PSP")

    def status(order_id: str) -> str | None:
        outcome = orders.get(order_id)
        return None if outcome is None else outcome.status

    cancelled_charged = [o for o in charged if status(o) == "cancelled"]
    out.charged_then_cancelled = len(cancelled_charged)
    out.refunded_once = sum(1 for o in cancelled_charged if refunded[o] == 1)
    charged_at = {c["order_id"]: c.get("created_ms") for c in approved}
    unrefunded = [f"{o} (charged {_utc(charged_at[o])})" for o in cancelled_charged if not refunded[o]]
    out.flag("unrefunded", unrefunded, "charged and cancelled, never refunded")
    out.flag("wrong_refunds", [o for o in refunded if status(o) != "cancelled"], "refunded but not cancelled")
    confirmed = [o for o, x in orders.items() if x.status == "confirmed"]
    out.flag("confirmed_uncharged", [o for o in confirmed if not charged[o]], "confirmed without a charge at the PSP")


def _judge_sink(out: Judged, orders: Mapping[str, OrderOutcome], sink: Mapping[str, Any]) -> None:
    deliveries = sink["deliveries"]
    out.deliveries = len(deliveries)
    per_notice = Counter((d["order_id"], d["kind"]) for d in deliveries)
    twice = [f"{o} {k}" for (o, k), n in per_notice.items() if n > 1]
    out.flag("duplicate_notifications", twice, "delivered more than once at the sink")
    missing = []
    for order_id, x in orders.items():
        wanted = [NOTICE[x.status]] if x.status in NOTICE else []
        wanted += [SHIPPED_NOTICE] if x.shipped else []
        missing += [f"{order_id} {kind}" for kind in wanted if (order_id, kind) not in per_notice]
    out.flag("missing_notifications", missing, "never delivered at the sink")


def _utc(ms: int | None) -> str:
    """A ledger's time in UTC to the millisecond, to set beside the kill lines and the worker logs."""
    if ms is None:
        return "at an unknown time"
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d} UTC"


def outcomes_of(ledger: FlowLedger, published: Published) -> dict[str, OrderOutcome]:
    """Each published order's outcome from the topics (its first terminal event)."""
    out = {}
    for order in published.orders:
        events = ledger.terminal.get(order.order_id)
        actual = None
        if events:
            kind, reason, _ = events[0]
            actual = "confirmed" if kind == "order.confirmed" else f"cancelled_{(reason or '').lower()}"
        out[order.order_id] = OrderOutcome(order.expected.value, actual, bool(ledger.shipped.get(order.order_id)))
    return out


def repeated_outputs(ledger: FlowLedger) -> int:
    """Business outputs of our own seen more than once (at_least_once may repeat them)."""
    counters = (ledger.authorized, ledger.refunded, ledger.shipped, ledger.notifications)
    repeats = sum(n - 1 for counter in counters for n in counter.values() if n > 1)
    return repeats + sum(len(events) - 1 for events in ledger.terminal.values() if len(events) > 1)


@dataclass
class Figures:
    guarantee: str
    orders: int
    kills_asked: int
    psp_latency_ms: float
    psp_failure_rate: float
    judged: Judged = field(default_factory=Judged)
    unexpected_exits: int = 0
    verify_ok: bool = False
    settled: bool = False
    sigkills: int = 0
    kills: list[str] = field(default_factory=list)  # when and whom
    psp_replays: int = 0
    repeated_outputs: int = 0
    verify_violations: list[str] = field(default_factory=list)
    payments_max_in_flight: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def verify_failed(self) -> int:
        return 0 if self.verify_ok and self.settled else 1

    def failures(self) -> dict[str, int]:
        found = self.judged.failures()
        for name in ("unexpected_exits", "verify_failed"):
            if getattr(self, name):
                found[name] = getattr(self, name)
        if self.sigkills < self.kills_asked:
            found["kills_not_done"] = self.kills_asked - self.sigkills
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("judged"))
        data.update(verify_failed=self.verify_failed, failures=self.failures(), ok=self.ok)
        return data


class Run:
    """One fault run under one guarantee, in ``work`` (the broker's data, the services' ledgers,
    the worker logs and state directories)."""

    def __init__(self, options: Options, work: Path) -> None:
        self.options = options
        self.work = work
        self.figures = Figures(
            options.guarantee, options.orders, options.kills, options.psp_latency_ms, options.psp_failure_rate,
            payments_max_in_flight=options.payments_max_in_flight,
        )  # fmt: skip
        self.broker = LocalBroker(data_dir=work / "kafka", port=options.broker_port or free_port())
        self.run_id = uuid.uuid4().hex[:6]
        self.services_env: dict[str, str] = {}
        self.pool = WorkerPool(self.worker_command, self.worker_env, work)
        self.published_count = 0
        self.t0 = time.monotonic()

    def worker_command(self, name: str) -> list[str]:
        state_dir = str(self.work / f"state-{name}")
        identity = ("--worker-id", f"fault-{name}", "--guarantee", self.options.guarantee, "--state-dir", state_dir)
        return [sys.executable, "-m", "processors.cli.main", "worker", "--app", "processors.agents.app:app", *identity]

    def worker_env(self, name: str) -> dict[str, str]:
        env = {**os.environ, **self.services_env}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
                "CHOREO_BOOTSTRAP_SERVERS": self.broker.bootstrap,
                "CHOREO_COMMERCE_TIMEOUT_S": str(self.options.timeout_s),
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            }
        )
        if self.options.payments_max_in_flight is not None:
            env["CHOREO_AGENT_PAYMENTS__MAX_IN_FLIGHT"] = str(self.options.payments_max_in_flight)
        return env

    def say(self, line: str) -> None:
        print(f"[fault-commerce {self.options.guarantee} t+{time.monotonic() - self.t0:.0f}s] {line}", file=sys.stderr)

    # ------------------------------------------------------------------ the run
    def run(self) -> Figures:
        from processors.agents.app import app
        from processors.runtime import Worker
        from processors.services.process import start_commerce_services

        o = self.options
        self.t0 = time.monotonic()
        self.broker.start()
        services = None
        try:
            settings = Settings.load(bootstrap_servers=self.broker.bootstrap)
            app.configure(settings)
            Worker(app, settings).prepare()  # the topics, as the workers would create them
            services = start_commerce_services(
                self.work / "services", psp_latency_ms=o.psp_latency_ms, psp_failure_rate=o.psp_failure_rate,
                sink_failure_rate=o.sink_failure_rate, seed=o.seed,
            )  # fmt: skip
            self.services_env = services.env
            names = [f"w{i}" for i in range(o.workers)]
            for name in names:
                self.pool.start(name)
            try:
                wait_for_members(settings, app, o.workers, timeout=300)
            except TimeoutError:  # a loaded machine: the orders go out anyway, the judge is the same
                self.figures.notes.append("not every agent group was stable with every worker within 300 s")
            self.say(f"{o.workers} workers joined; publishing {o.orders} orders, {o.kills} SIGKILLs on the way")
            published = self.publish_while_killing(app, settings, names)
            self.say(f"published; waiting for every order to be terminal ({len(self.pool.procs)} workers)")
            self.settle(app, settings, published)
            self.pool.stop_all()
            self.measure(app, settings, published)
        finally:
            self.pool.kill_leftovers()
            if services is not None:
                services.stop()
            self.broker.stop()
            self.figures.sigkills = self.pool.sigkills
            self.figures.unexpected_exits += self.pool.unexpected_exits
            self.figures.notes += self.pool.notes
            self.figures.seconds = round(time.monotonic() - self.t0, 1)
        return self.figures

    def demo_options(self) -> DemoOptions:
        o = self.options
        return DemoOptions(
            orders=o.orders, bad_ratio=0.01, duplicate_ratio=0.03, workers=o.workers, timeout_s=o.timeout_s,
            mix=MIX, seed=o.seed, work_dir=self.work, in_flight=o.in_flight,
        )  # fmt: skip

    def publish_while_killing(self, app, settings: Settings, names: list[str]) -> Published:
        """Publish on a thread; SIGKILL a random worker each time the publication passes one of
        ``kills`` random marks (between 10 % and 90 % of the orders), and restart it at once."""
        o, rng = self.options, random.Random(self.options.seed)
        follower = TerminalFollower(settings, {})
        self.follower = follower
        result: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "published":
                self.published_count = done

        def publish() -> None:
            try:
                options = self.demo_options()
                result["published"] = publish_orders(app, settings, options, self.run_id, progress, follower)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                result["error"] = exc

        publisher = threading.Thread(target=publish, name="fault-publisher", daemon=True)
        publisher.start()
        low, high = max(1, o.orders // 10), max(2, o.orders * 9 // 10)
        marks = sorted(rng.randrange(low, high) for _ in range(o.kills))
        for index, mark in enumerate(marks, 1):
            while self.published_count < mark and publisher.is_alive():
                self.pool.wait(0.2)
            if not publisher.is_alive():
                break
            victim = rng.choice(names)
            self.pool.kill(victim)
            at = time.strftime("%H:%M:%S", time.gmtime())  # UTC, to set beside the PSP's and the logs' times
            elapsed = time.monotonic() - self.t0
            line = f"t+{elapsed:.1f}s ({at} UTC) {victim} at {self.published_count}/{o.orders} published"
            self.figures.kills.append(line)
            self.say(f"SIGKILL {index}/{o.kills}: {line}")
        while publisher.is_alive():
            self.pool.wait(0.5)
        if "error" in result:
            raise RuntimeError(f"publishing failed: {type(result['error']).__name__}: {result['error']}")
        return result["published"]

    def settle(self, app, settings: Settings, published: Published) -> None:
        from processors.agents.verify import wait_settled

        try:
            await_terminal(self.follower, published.orders, self.demo_options(), lambda *_: self.pool.check())
        finally:
            self.follower.close()
        self.figures.settled = wait_settled(settings, app, timeout=180)
        if not self.figures.settled:
            self.figures.notes.append("the agents did not catch up with their inputs within 180 s")

    def measure(self, app, settings: Settings, published: Published) -> None:
        from processors.agents.verify import collect

        prefix = f"ord-{self.run_id}"
        ledger = collect(settings, app, order_prefix=prefix)
        psp = _get(self.services_env["CHOREO_PSP_URL"], "/v1/ledger", prefix)
        sink = _get(self.services_env["CHOREO_SINK_URL"], "/v1/deliveries", prefix)
        f = self.figures
        f.judged = judge(outcomes_of(ledger, published), psp, sink)
        f.psp_replays = int(psp["summary"].get("replayed_requests", 0))
        f.repeated_outputs = repeated_outputs(ledger)
        f.verify_ok, f.verify_violations = self.verify(prefix)

    def verify(self, prefix: str) -> tuple[bool, list[str]]:
        """``choreo verify --json`` against the topics and both services, as a user would run it."""
        env = {**os.environ, **self.services_env, "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
        done = subprocess.run(
            [sys.executable, "-m", "processors.cli.main", "verify", "--json", "--order-prefix", prefix],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        try:
            result = orjson.loads(done.stdout.strip().splitlines()[-1])
            violations = [str(v)[:300] for v in result["invariant_violations"]]
        except (IndexError, orjson.JSONDecodeError, KeyError, TypeError):
            violations = [f"verify printed no summary (exit {done.returncode}): {done.stderr[-300:]}"]
        return done.returncode == 0, violations


def _get(base_url: str, path: str, order_prefix: str) -> dict[str, Any]:
    response = httpx.get(base_url.rstrip("/") + path, params={"order_prefix": order_prefix}, timeout=60)
    response.raise_for_status()
    return response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--guarantee", choices=["exactly_once", "at_least_once", "both"], default="both")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs while the orders are published")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--psp-latency-ms", type=float, default=50.0)
    parser.add_argument("--psp-failure-rate", type=float, default=0.03)
    parser.add_argument("--sink-failure-rate", type=float, default=0.02)
    parser.add_argument("--timeout-s", type=float, default=45.0, help="the commerce flow's answer timeout")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--payments-max-in-flight", type=int, default=None, help="the payments agent's max_in_flight")
    parser.add_argument("--broker-port", type=int, default=0, help="the run's own broker (default: a free port)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (worker and service logs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    guarantees = ["exactly_once", "at_least_once"] if args.guarantee == "both" else [args.guarantee]
    results = []
    for guarantee in guarantees:
        options = Options(
            guarantee, orders=args.orders, kills=args.kills, workers=args.workers, psp_latency_ms=args.psp_latency_ms,
            psp_failure_rate=args.psp_failure_rate, sink_failure_rate=args.sink_failure_rate,
            timeout_s=args.timeout_s, seed=args.seed, payments_max_in_flight=args.payments_max_in_flight,
            broker_port=args.broker_port,
        )  # fmt: skip
        work = Path(tempfile.mkdtemp(prefix=f"fault-commerce-{guarantee}-"))
        try:
            figures = Run(options, work).run()
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        results.append(figures)
        if not args.json:
            print_figures(figures, work if args.keep else None)
    if args.json:
        print(orjson.dumps([f.as_json() for f in results]).decode())
    return 0 if all(f.ok for f in results) else 1


def print_figures(f: Figures, work: Path | None) -> None:
    j = f.judged
    verdict = "OK" if f.ok else "FAILED " + ", ".join(f"{k} {v}" for k, v in f.failures().items())
    print(
        f"fault-commerce {f.guarantee}: {verdict} — {f.orders} orders, {f.sigkills} SIGKILLs, PSP at "
        f"{f.psp_latency_ms:g} ms / {f.psp_failure_rate:.0%} failures, {f.seconds} s"
    )
    print(
        f"  PSP: {j.approved} approved charges ({j.charges} in all), {j.refunds} refunds; double charges "
        f"{j.double_charges}, refunds without a charge {j.orphan_refunds}, double refunds {j.double_refunds}"
    )
    print(
        f"  charged then cancelled {j.charged_then_cancelled}: refunded once {j.refunded_once}, never {j.unrefunded}; "
        f"wrong refunds {j.wrong_refunds}; confirmed without a charge {j.confirmed_uncharged}; PSP key replays "
        f"{f.psp_replays}"
    )
    print(
        f"  sink: {j.deliveries} deliveries, duplicate notifications {j.duplicate_notifications}, missing "
        f"{j.missing_notifications}"
    )
    print(
        f"  orders not terminal {j.non_terminal}, wrong outcomes {j.wrong_outcomes}, timed out instead "
        f"{j.timed_out_instead}; unexpected worker exits {f.unexpected_exits}; our own repeated outputs "
        f"{f.repeated_outputs}"
    )
    print(f"  choreo verify: {'holds' if f.verify_ok else 'FAILED'}; agents caught up: {f.settled}")
    for line in f.kills:
        print(f"  kill: {line}")
    for line in [*j.notes, *f.notes, *(f"verify: {v}" for v in f.verify_violations[:20])]:
        print(f"  note: {line}")
    if work is not None:
        print(f"  logs in {work}")


if __name__ == "__main__":
    sys.exit(main())
