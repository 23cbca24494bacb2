"""A small domain-free app for engine tests: a counter agent (two co-partitioned inputs, state,
emit, timers, transient and permanent failures, a circuit-broken dependency) and a ping/pong pair
that loops.

Run as a worker subprocess with ``--app tests.engine.app:app``; the environment chooses the app id
and the contract directories (integration tests write contracts whose topics are unique per test).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
from pathlib import Path

import yaml

from processors.runtime import App, BreakerPolicy, Reject, RetryPolicy

DATA = Path(__file__).resolve().parents[1] / "data" / "engine"
CONTRACTS = DATA / "contracts"
SCHEMAS = DATA / "schemas"


class FlakyError(Exception):
    """Declared transient by the counter agent."""


class ConcurrencyGauge:
    """How many handlers run at once, and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def write_contracts(dest: Path, prefix: str, partitions: int = 3, only: list[str] | None = None) -> tuple[Path, Path]:
    """Copy the test contracts into ``dest`` with every topic renamed ``<prefix>.<event type>``
    (the audit contract too), so each test has its own topics on a shared broker."""
    contracts = dest / "contracts"
    schemas = dest / "schemas"
    contracts.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SCHEMAS, schemas, dirs_exist_ok=True)
    for path in sorted(CONTRACTS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if only is not None and data["event_type"] not in only and data["event_type"] != "audit.record":
            continue
        data["topic"] = f"{prefix}.{data['event_type']}"
        data["partitions"] = partitions
        (contracts / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return contracts, schemas


def build_app(
    app_id: str = "engine-test",
    contracts_dir: Path | str = CONTRACTS,
    schemas_dir: Path | str = SCHEMAS,
    *,
    ping_bound: int | None = 4,
    with_pingpong: bool = True,
    audit_topic: str | None = None,
    slow_s: float = 0.0,
    max_in_flight: int | None = None,
    gauge: ConcurrencyGauge | None = None,
) -> App:
    """``max_in_flight`` > 1 makes the counter's handler ``async def``: it awaits a random few
    milliseconds first (so inputs of other keys overtake each other), then does the same work;
    ``gauge`` counts how many run at once."""
    app = App(app_id, contracts_dir=contracts_dir, schemas_dir=schemas_dir, audit_topic=audit_topic)

    def on_timer(timer, ctx):
        state = ctx.state
        state["n"] = state.get("n", 0) + timer.payload["by"]
        state["seq"] = state.get("seq", 0) + 1
        ctx.emit("counter.total", timer.key, {"name": timer.key, "total": state["n"], "seq": state["seq"]})

    def counter(event, ctx):
        if event.type == "counter.reset":
            ctx.clear_state()
            ctx.cancel_timer("nudge")
            return
        by = event.value["by"]
        if by == -1:
            raise ValueError(f"boom: refusing {event.value.get('email')}")
        if by == -2:
            raise FlakyError("dependency timed out")
        if by == -3:

            def down():
                raise ConnectionError("flaky-api is down")

            ctx.call("flaky-api", down)
        if by == 1000:
            ctx.schedule_timer("nudge", delay_s=1.0, payload={"by": 1})
            return
        if slow_s:
            import time

            time.sleep(slow_s)
        state = ctx.state
        if by <= -10 and state.get("n", 0) + by < 0:
            # a ledger's overdraft: refused by the state as it is when the event is judged
            raise Reject("negative_total", f"{event.key} cannot go below zero")
        state["n"] = state.get("n", 0) + by
        state["seq"] = state.get("seq", 0) + 1
        if event.value.get("email"):
            state["email"] = event.value["email"]
        ctx.emit("counter.total", event.key, {"name": event.key, "total": state["n"], "seq": state["seq"]})

    async def counter_async(event, ctx):
        if gauge is not None:
            gauge.enter()
        try:
            await asyncio.sleep(random.random() * 0.01)
            counter(event, ctx)
        finally:
            if gauge is not None:
                gauge.leave()

    concurrent = max_in_flight is not None and max_in_flight > 1
    app.agent(
        "counter",
        consumes=["counter.incremented", "counter.reset"],
        produces=["counter.total"],
        version="3",
        transient=(FlakyError, ConnectionError),
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_elapsed_s=2.0),
        dependencies={
            "flaky-api": BreakerPolicy(failure_rate_threshold=0.5, window_size=4, min_calls=2, open_seconds=60)
        },
        on_timer=on_timer,
        max_in_flight=max_in_flight if concurrent else None,
    )(counter_async if concurrent else counter)

    if with_pingpong:

        @app.agent("ping", consumes=["ping.sent"], produces=["pong.sent"], max_hops=ping_bound)
        def ping(event, ctx):
            ctx.emit("pong.sent", event.key, {"chain": event.key, "n": event.value["n"] + 1})

        @app.agent("pong", consumes=["pong.sent"], produces=["ping.sent"])
        def pong(event, ctx):
            ctx.emit("ping.sent", event.key, {"chain": event.key, "n": event.value["n"] + 1})

    return app


app = build_app(
    os.environ.get("ENGINE_APP_ID", "engine-test"),
    os.environ.get("ENGINE_CONTRACTS_DIR", str(CONTRACTS)),
    os.environ.get("ENGINE_SCHEMAS_DIR", str(SCHEMAS)),
    audit_topic=os.environ.get("ENGINE_AUDIT_TOPIC") or None,
    slow_s=float(os.environ.get("ENGINE_SLOW_S", "0")),
    max_in_flight=int(os.environ.get("ENGINE_MAX_IN_FLIGHT", "0")) or None,
)


def _install_crash_point() -> None:
    """``ENGINE_KILL_IN_APPLY=N``: SIGKILL this worker process on the Nth batch, after its outputs
    and changelog are durable but before its store is written and (at-least-once) before its input
    offsets are committed: the window that only dedupe (at-least-once) or a changelog restore of
    the local store's missing tail (exactly-once) can make right."""
    n = int(os.environ.get("ENGINE_KILL_IN_APPLY", "0"))
    if n <= 0:
        return
    import signal

    from processors.runtime._commit import Batch

    original = Batch.write_stores
    calls = {"n": 0}

    def write_stores(self, reached):
        if self.dirty:
            calls["n"] += 1
            if calls["n"] >= n:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, reached)

    Batch.write_stores = write_stores  # type: ignore[method-assign]


_install_crash_point()


def _install_stuck_call() -> None:
    """``ENGINE_STUCK_CALL=send_offsets_to_transaction:N``: the Nth call of that producer method
    (counted over the process, across producers) blocks for an hour, as librdkafka 2.x was seen to
    block there after a broker restart; the watchdog must give the agent up and replace it.
    ``ENGINE_CALL_DEADLINE=T:G`` shortens the client timeout and the watchdog's grace (seconds)."""
    deadline = os.environ.get("ENGINE_CALL_DEADLINE")
    if deadline:
        import dataclasses

        from processors.runtime import supervisor
        from processors.runtime.worker import WorkerOptions

        timeout_s, grace_s = (float(x) for x in deadline.split(":"))
        defaults = dataclasses.replace(WorkerOptions(), commit_timeout_s=timeout_s, call_grace_s=grace_s)
        supervisor.WorkerOptions = lambda: defaults  # type: ignore[assignment,misc]
    spec = os.environ.get("ENGINE_STUCK_CALL")
    if not spec:
        return
    import time

    from confluent_kafka import Producer

    from processors.runtime import _commit

    method, _, nth = spec.partition(":")
    calls = {"n": 0}

    class StuckProducer(Producer):
        pass

    original = getattr(Producer, method)

    def stuck(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(nth or 1):
            time.sleep(3600)
        return original(self, *args, **kwargs)

    setattr(StuckProducer, method, stuck)
    _commit.Producer = StuckProducer  # type: ignore[misc]


_install_stuck_call()


def _install_slow_restore() -> None:
    """``ENGINE_SLOW_RESTORE_S=S``: a restore step that starts partitions waits S seconds before it
    reads their watermarks, so a test can stop the broker in the middle of a restore."""
    delay = float(os.environ.get("ENGINE_SLOW_RESTORE_S", "0"))
    if delay <= 0:
        return
    import time

    from processors.runtime._restore import ChangelogRestorer

    original = ChangelogRestorer.step

    def step(self):
        if self.queued:
            time.sleep(delay)
        return original(self)

    ChangelogRestorer.step = step  # type: ignore[method-assign]


_install_slow_restore()
