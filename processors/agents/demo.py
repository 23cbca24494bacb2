"""The commerce demo: publish generated orders into the running choreography and judge the outcome.

Separated from the CLI so tests can drive it: :func:`run_demo` starts worker processes
(`choreo worker --app processors.agents.app:app`), publishes orders — some declined, some out of
stock, some timing out, some invalid, plus undecodable payloads and exact duplicates — waits until
every order is terminal, then reads the topics back and checks the invariants.

Publishing is paced by the flow itself (closed loop): at most ``in_flight`` orders that are meant to
complete are published and not yet terminal at any time, and the window halves while orders take
longer than a quarter of the flow timeout. A burst would otherwise queue every order behind the
others, and an order that waits in that queue longer than the flow timeout is cancelled as timed
out: the verdict would depend on the machine's speed. Paced, a slow or loaded machine gives the
same outcomes, only later. (Orders meant to time out are not counted in the window: they wait for
the timer, not for the flow.)
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from processors.agents.loadgen import Expected, GeneratedOrder, OrderGenerator, OrderMix
from processors.agents.verify import (
    PSP_URL_ENV,
    SINK_URL_ENV,
    check_receivers,
    collect,
    end_offsets,
    wait_settled,
    watched_topics,
)
from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.runtime import App, Worker
from processors.services.process import start_commerce_services
from processors.settings import Settings
from processors.tooling.kafka_io import reader_config

APP_REF = "processors.agents.app:app"
SOURCE = "urn:choreo:demo:storefront"


@dataclass(frozen=True)
class DemoOptions:
    orders: int = 300
    bad_ratio: float = 0.03
    duplicate_ratio: float = 0.05
    workers: int = 2
    timeout_s: float = 8.0
    mix: OrderMix = field(default_factory=lambda: OrderMix(declined=0.1, out_of_stock=0.1, timeout=0.03, invalid=0.02))
    seed: int | None = None
    work_dir: Path = Path(".choreo/demo")
    max_wait_s: float | None = None
    # Orders meant to complete, published and not yet terminal, at most. 8, not 32: the 24 more
    # open orders mostly queued in the agents (p50 flow time 460-600 ms against 140-240 ms with 8)
    # for a demo only 3-5 s shorter (benchmarks/RESULTS.md, "Flow latency (issue 16, items 3-5)").
    in_flight: int = 8


@dataclass
class Published:
    orders: list[GeneratedOrder]
    bad: int
    duplicates: int
    first_ms: int
    last_ms: int


Progress = Callable[[str, int, int], None]


def run_demo(app: App, settings: Settings, options: DemoOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole demo and return its summary (the `--json` object)."""
    progress = progress or (lambda stage, done, total: None)
    Worker(app, settings).prepare()  # refuses a bad topology and creates the topics from contracts
    since = end_offsets(settings, watched_topics(app))
    run_id = uuid.uuid4().hex[:6]
    running = {name: os.environ[name] for name in (PSP_URL_ENV, SINK_URL_ENV) if os.environ.get(name)}
    if len(running) == 2:  # the user's own PSP and sink (e.g. `choreo psp serve` with faults)
        return _run_with_services(app, settings, options, progress, since, run_id, running)
    services = start_commerce_services(options.work_dir / "services", seed=options.seed)
    try:
        return _run_with_services(app, settings, options, progress, since, run_id, services.env)
    finally:
        services.stop()


def _run_with_services(
    app: App,
    settings: Settings,
    options: DemoOptions,
    progress: Progress,
    since: dict[tuple[str, int], int],
    run_id: str,
    services_env: dict[str, str],
) -> dict[str, Any]:
    """The demo against the PSP and the delivery sink at ``services_env`` (real processes): their
    own ledgers are judged beside the topics, so "never charged twice" is the receiver's word."""
    ports = [_free_port() for _ in range(options.workers)]
    workers = start_workers(settings, options, run_id, services_env, ports)
    follower = TerminalFollower(settings, since)
    try:
        started = time.monotonic()
        wait_for_members(settings, app, options.workers, timeout=90)
        wait_for_ready(ports, timeout=90)
        joined_s = time.monotonic() - started
        published = publish_orders(app, settings, options, run_id, progress, follower)
        terminal_at = await_terminal(follower, published.orders, options, progress)
        settled = wait_settled(settings, app, timeout=60)
    finally:
        follower.close()
        stop_workers(workers)
    ledger = collect(settings, app, since, order_prefix=f"ord-{run_id}")
    summary = ledger.summary()
    summary["invariant_violations"] += outcome_mismatches(ledger, published.orders)
    receivers = check_receivers(ledger, f"ord-{run_id}", services_env)
    summary["invariant_violations"] += receivers["violations"]
    summary["receivers"] = {"psp": receivers["psp"], "sink": receivers["sink"]}
    if not settled:
        summary["invariant_violations"].append("the agents did not catch up with their inputs within 60s")
    elapsed_s = max(1e-3, (terminal_at - published.first_ms) / 1000)
    summary.update(
        run_id=run_id,
        published={"orders": len(published.orders), "undecodable": published.bad, "duplicates": published.duplicates},
        orders_per_s=round(summary["orders"] / elapsed_s, 1),
        bootstrap=settings.bootstrap_servers,
        workers_ready_s=round(joined_s, 1),
        publish_window=follower.window_min,
    )
    return summary


class TerminalFollower:
    """Follows order.confirmed / order.cancelled (read_committed) from ``since`` on a thread of its
    own: order id → when its first terminal event was read (wall clock, ms). The publisher asks it
    for room (:meth:`wait_for_room`), :func:`wait_terminal` for the end."""

    def __init__(self, settings: Settings, since: dict[tuple[str, int], int]) -> None:
        self.done: dict[str, int] = {}
        self.produced_ms: dict[str, int] = {}  # the terminal record's timestamp
        self.window_min: int | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._consumer = Consumer(reader_config(settings, **{"enable.partition.eof": False}))
        assignment = []
        for topic in ("order.confirmed", "order.cancelled"):
            for partition in self._consumer.list_topics(topic, timeout=15).topics[topic].partitions:
                assignment.append(TopicPartition(topic, partition, since.get((topic, partition), 0)))
        self._consumer.assign(assignment)
        self._thread = threading.Thread(target=self._run, name="demo-terminals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._consumer.poll(0.1)  # then what is there: consume(n, t) alone waits t for n
            if first is None:
                continue
            msgs = [first, *self._consumer.consume(500, 0)]
            now = int(time.time() * 1000)
            with self._cond:
                for msg in msgs:
                    if msg.error() is None:
                        order_id = (msg.key() or b"").decode()
                        if order_id not in self.done:
                            self.done[order_id] = now
                            self.produced_ms[order_id] = msg.timestamp()[1]
                self._cond.notify_all()

    def wait_for_room(self, paced: dict[str, int], window: int, deadline: float) -> None:
        """Wait until fewer than ``window`` of the ``paced`` orders (id → publish ms) are open."""
        with self._cond:
            while time.monotonic() < deadline:
                open_now = [o for o in paced if o not in self.done]
                for order_id in [o for o in paced if o in self.done]:
                    del paced[order_id]
                if len(open_now) < window:
                    return
                self._cond.wait(0.5)

    def terminal(self, wanted: set[str]) -> set[str]:
        with self._cond:
            return wanted & self.done.keys()

    def wait(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


class Window:
    """How many orders may be open at once: halved while orders take longer than a quarter of the
    flow timeout (at most once per second), grown by one while they take under an eighth of it."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = self.size = max(1, limit)
        self.slow_ms = timeout_s * 1000 / 4
        self.fast_ms = timeout_s * 1000 / 8
        self.smallest = self.size
        self._cut_at = 0.0

    def observe(self, flow_ms: float) -> None:
        if flow_ms > self.slow_ms:
            now = time.monotonic()
            if now - self._cut_at >= 1.0:
                self._cut_at = now
                self.size = max(1, self.size // 2)
                self.smallest = min(self.smallest, self.size)
        elif flow_ms < self.fast_ms and self.size < self.limit:
            self.size += 1


def start_workers(
    settings: Settings,
    options: DemoOptions,
    run_id: str,
    extra_env: Mapping[str, str] | None = None,
    metrics_ports: list[int] | None = None,
) -> list[subprocess.Popen]:
    options.work_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(options.workers):
        env = {
            **os.environ,
            **(extra_env or {}),
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CHOREO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,  # it would win over the line above
            "CHOREO_COMMERCE_TIMEOUT_S": str(options.timeout_s),
            "CHOREO_STATE_DIR": str(options.work_dir / "state" / f"worker-{index}"),
        }
        if metrics_ports:  # its /readyz says when every agent is assigned and restored (wait_for_ready)
            env["CHOREO_METRICS_PORT"] = str(metrics_ports[index])
        if settings.config_file is not None:  # the workers read the file the command read
            env["CHOREO_CONFIG"] = str(Path(settings.config_file).resolve())
        log = open(options.work_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "processors.cli.main",
                    "worker",
                    "--app",
                    APP_REF,
                    "--worker-id",
                    f"demo-{index}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        log.close()
    return procs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_workers(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM: each worker finishes its batch, commits and closes its stores."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_members(settings: Settings, app: App, members: int, timeout: float) -> None:
    """Publish only once every agent's group is stable with every worker in it, so flow times
    measure the flow, not the workers' start-up."""
    admin = AdminClient(settings.kafka_config())
    groups = [app.group_id(name) for name in app.agents]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = admin.describe_consumer_groups(groups)
        ready = 0
        for future in described.values():
            try:
                group = future.result(timeout=10)
            except Exception:  # noqa: BLE001 - a group that does not exist yet is simply not ready
                continue
            if str(group.state).endswith("STABLE") and len(group.members) >= members:
                ready += 1
        if ready == len(groups):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"the workers did not join all {len(groups)} agent groups within {timeout:.0f}s; see .choreo/demo/worker-*.log"
    )


def wait_for_ready(ports: list[int], timeout: float, host: str = "127.0.0.1") -> None:
    """Publish only once every worker's ``/readyz`` answers ready (every agent assigned, its stores
    restored, healthy): a stable group alone still leaves stores restoring, and the first orders
    would wait for them and count that in their flow time."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    with httpx.Client(timeout=2.0) as client:
        while pending and time.monotonic() < deadline:
            for port in list(pending):
                try:
                    if client.get(f"http://{host}:{port}/readyz").status_code == 200:
                        pending.remove(port)
                except httpx.HTTPError:
                    pass  # not listening yet
            if pending:
                time.sleep(0.2)
    if pending:
        raise TimeoutError(f"workers on metrics ports {pending} not ready within {timeout:.0f}s; see their logs")


def publish_orders(
    app: App,
    settings: Settings,
    options: DemoOptions,
    run_id: str,
    progress: Progress,
    follower: TerminalFollower | None = None,
) -> Published:
    """Publish the orders; with a ``follower``, paced to the flow (see the module's docstring)."""
    rng = random.Random(options.seed)
    generator = OrderGenerator(
        seed=options.seed if options.seed is not None else rng.randrange(1 << 30), mix=options.mix, run_id=f"{run_id}-"
    )
    contract = app.registry.get("order.created")
    producer = Producer(settings.producer_config())
    orders, bad, duplicates = [], 0, 0
    first_ms = int(time.time() * 1000)
    paced: dict[str, int] = {}  # open orders that are meant to complete: id -> publish time
    window = Window(options.in_flight, options.timeout_s)
    seen_done: set[str] = set()
    deadline = time.monotonic() + (options.max_wait_s or (60 + options.timeout_s * 3 + options.orders / 5))
    for index in range(options.orders):
        generated = generator.next()
        orders.append(generated)
        if follower is not None:
            _observe_done(follower, paced, seen_done, window)
            producer.poll(0)
            follower.wait_for_room(paced, window.size, deadline)
            if generated.expected is not Expected.TIMEOUT:
                paced[generated.order_id] = int(time.time() * 1000)
        env = Envelope.new("order.created", SOURCE, idempotency_key=f"order-created-{generated.order_id}")
        value = app.codec.encode("order.created", generated.value)
        # confluent-kafka's stub types produce(headers=) as an invariant List of (str, str | bytes | None),
        # refusing our read-only list of bytes pairs (the same below).
        producer.produce(contract.topic, value, generated.order_id.encode(), headers=produce_headers(env.to_headers()))
        if rng.random() < options.duplicate_ratio:
            producer.produce(
                contract.topic, value, generated.order_id.encode(), headers=produce_headers(env.to_headers())
            )
            duplicates += 1
        if rng.random() < options.bad_ratio:
            producer.produce(
                contract.topic,
                _poison(rng, generated.order_id),
                generated.order_id.encode(),
                headers=produce_headers(Envelope.new("order.created", SOURCE).to_headers()),
            )
            bad += 1
        producer.poll(0)
        progress("published", index + 1, options.orders)
        if follower is not None:
            producer.flush(10)  # paced: each order goes out now, not after the producer's linger
    if producer.flush(60):
        raise RuntimeError("the broker did not confirm every published order within 60s")
    if follower is not None:
        follower.window_min = window.smallest
    return Published(orders, bad, duplicates, first_ms, int(time.time() * 1000))


def _observe_done(follower: TerminalFollower, paced: dict[str, int], seen: set[str], window: Window) -> None:
    """Feed the window the flow times of paced orders that became terminal since the last look."""
    with follower._cond:  # noqa: SLF001 - the follower's own lock, read in its module
        finished = [(o, follower.done[o] - t) for o, t in paced.items() if o in follower.done and o not in seen]
    for order_id, flow_ms in finished:
        seen.add(order_id)
        window.observe(flow_ms)


def _poison(rng: random.Random, order_id: str) -> bytes:
    """Bytes a careless producer might send: JSON instead of Avro, or a truncated Avro frame."""
    if rng.random() < 0.5:
        return b'{"order_id": "' + order_id.encode() + b'", "note": "json, not avro"}'
    return b"\xc3\x01" + os.urandom(5)


def wait_terminal(
    settings: Settings, orders: list[GeneratedOrder], since, options: DemoOptions, progress: Progress
) -> int:
    """Follow the terminal topics from ``since`` until every order has its terminal event; returns
    the timestamp of the last one (ms)."""
    follower = TerminalFollower(settings, since)
    try:
        return await_terminal(follower, orders, options, progress)
    finally:
        follower.close()


def await_terminal(follower: TerminalFollower, orders: list[GeneratedOrder], options: DemoOptions,
                   progress: Progress) -> int:  # fmt: skip
    """Wait until every order has its terminal event (or the budget is spent: the summary then
    names the orders still open); returns the timestamp of the last terminal event (ms)."""
    wanted = {o.order_id for o in orders}
    budget = options.max_wait_s or (60 + options.timeout_s * 3 + len(orders) / 20)
    deadline = time.monotonic() + budget
    done = follower.terminal(wanted)
    while len(done) < len(wanted) and time.monotonic() < deadline:
        follower.wait(0.5)
        done = follower.terminal(wanted)
        progress("terminal", len(done), len(wanted))
    with follower._cond:  # noqa: SLF001 - the follower's own lock, read in its module
        stamps = [follower.produced_ms[o] for o in done if o in follower.produced_ms]
    return max(stamps, default=int(time.time() * 1000))


def outcome_mismatches(ledger, orders: list[GeneratedOrder]) -> list[str]:
    """Each generated order knows what should become of it; say where the flow disagreed."""
    expected_state = {
        Expected.CONFIRMED: "confirmed",
        Expected.PAYMENT_DECLINED: "cancelled_payment_declined",
        Expected.OUT_OF_STOCK: "cancelled_out_of_stock",
        Expected.TIMEOUT: "cancelled_timeout",
        Expected.INVALID: "cancelled_invalid",
    }
    out = []
    for order in orders:
        events = ledger.terminal.get(order.order_id)
        if not events:
            continue  # reported as non-terminal already
        kind, reason, _ = events[0]
        actual = "confirmed" if kind == "order.confirmed" else f"cancelled_{(reason or '').lower()}"
        if actual != expected_state[order.expected]:
            out.append(f"order {order.order_id}: expected {expected_state[order.expected]}, got {actual}")
    return out
