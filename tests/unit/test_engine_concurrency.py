"""Key-ordered concurrency through the pure driver and the executor itself: inputs of different
keys at once, of one key strictly in offset order; nothing released past an unfinished input; the
engine's features (dedupe, retries, DLQ, state) unchanged under concurrency."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from processors.runtime import App, AppError, Reject, RetryPolicy
from processors.runtime._concurrency import KeyedExecutor, Released
from processors.runtime.agent import DEFAULT_MAX_IN_FLIGHT
from processors.runtime.dependencies import DependencyPolicy
from processors.runtime.state import BatchView, MemoryStore, keys
from processors.runtime.testing import AgentDriver
from tests.engine.app import CONTRACTS, SCHEMAS
from tests.engine.app import ConcurrencyGauge as Gauge


class Flaky(Exception):
    pass


def sequenced_app(gauge: Gauge, *, threads: bool = False, max_in_flight: int | None = None) -> App:
    """An agent whose inputs carry per-key sequence numbers (``by``): it records any input that
    comes out of order (``bad``) and emits each number it saw, after a random wait (so inputs
    finish out of order across keys). ``by`` < 0 fails permanently; a name starting "flaky" fails
    transiently on its first attempt."""
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    attempts: dict[tuple[str, int], int] = {}
    rng = random.Random(7)

    def body(event, ctx, wait_s: float) -> None:
        name, by = event.value["name"], event.value["by"]
        if by < 0:
            raise Reject("negative", "refused")
        if name.startswith("flaky"):
            n = attempts[(name, by)] = attempts.get((name, by), 0) + 1
            if n == 1:
                raise Flaky("first attempt fails")
        state = ctx.state
        if state.get("last", 0) + 1 != by:
            state["bad"] = state.get("bad", 0) + 1
        state["last"] = by
        ctx.emit("counter.total", name, {"name": name, "total": by, "seq": by})

    retry = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002, max_elapsed_s=5.0)
    if threads:

        @app.agent("seq", consumes=["counter.incremented"], produces=["counter.total"], transient=(Flaky,),
                   retry=retry, threads=True, max_in_flight=max_in_flight)  # fmt: skip
        def sync_handler(event, ctx):
            gauge.enter()
            try:
                time.sleep(rng.random() * 0.003)
                body(event, ctx, 0)
            finally:
                gauge.leave()

    else:

        @app.agent("seq", consumes=["counter.incremented"], produces=["counter.total"], transient=(Flaky,),
                   retry=retry, max_in_flight=max_in_flight)  # fmt: skip
        async def async_handler(event, ctx):
            gauge.enter()
            try:
                await asyncio.sleep(rng.random() * 0.003)
                body(event, ctx, 0)
            finally:
                gauge.leave()

    return app


def interleaved(keys: list[str], per_key: int) -> list[tuple[str, dict, str]]:
    """Each key's inputs 1..per_key, the keys interleaved (so one poll holds all of them)."""
    return [("counter.incremented", {"name": k, "by": n}, k) for n in range(1, per_key + 1) for k in keys]


def seqs_by_key(results) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in results:
        for e in r.emitted:
            out.setdefault(e.key, []).append(e.value["seq"])
    return out


@pytest.mark.parametrize("threads", [False, True], ids=["async", "threads"])
def test_inputs_of_one_key_run_in_order_while_keys_run_at_once(threads):
    gauge = Gauge()
    driver = AgentDriver(sequenced_app(gauge, threads=threads), "seq")
    keys = [f"k{i}" for i in range(12)]
    results = driver.send_many(interleaved(keys, 15), max_in_flight=8)
    assert len(results) == 12 * 15
    assert {r.outcome for r in results} == {"PROCESSED"}
    for k in keys:
        assert driver.state(k) == {"last": 15}, k  # never a "bad": no input of a key overtook another
    assert seqs_by_key(results) == {k: list(range(1, 16)) for k in keys}
    assert 2 <= gauge.peak <= 8  # concurrent, within the bound


def test_results_are_released_in_each_partitions_offset_order():
    driver = AgentDriver(sequenced_app(Gauge()), "seq", partition=0)  # one partition: one total order
    events = interleaved([f"k{i}" for i in range(6)], 5)
    results = driver.send_many(events, max_in_flight=16)
    offsets = [r.raw.audit["offset"] for r in results if r.raw.audit is not None]
    assert offsets == sorted(offsets) == list(range(len(events)))


def test_a_hot_key_runs_alone_and_the_bound_holds():
    gauge = Gauge()
    driver = AgentDriver(sequenced_app(gauge), "seq")
    results = driver.send_many(interleaved(["hot"], 30), max_in_flight=16)
    assert gauge.peak == 1
    assert seqs_by_key(results) == {"hot": list(range(1, 31))}


def run_all(executor: KeyedExecutor, view: BatchView) -> list:
    """Collect until the executor is empty; the released results, their writes applied."""
    out: list = []
    deadline = time.monotonic() + 10
    while True:
        out.extend(released.result for released in executor.take_released())
        if not executor.busy or time.monotonic() > deadline:
            return out
        executor.collect(0.1)


def test_a_duplicate_in_the_same_poll_waits_for_its_first_copy_and_is_dropped():
    driver = AgentDriver(sequenced_app(Gauge()), "seq")
    t, k, d, h = driver._record_of("counter.incremented", {"name": "a", "by": 1}, "a", idempotency_key="same")
    p = driver.home_partition(t, k)
    view = BatchView(driver.store)
    executor = KeyedExecutor(driver.processor, 8, lambda _p: view)
    for offset in (0, 1):
        executor.submit(t, p, offset, driver.processor.admit(t, p, offset, k, d, h))
    results = run_all(executor, view)
    executor.close()
    assert [r.outcome for r in results] == ["PROCESSED", "DUPLICATE"]
    assert len(results[0].emitted) == 1 and results[1].emitted == []


def test_retries_and_dead_letters_stay_per_input_under_concurrency():
    driver = AgentDriver(sequenced_app(Gauge()), "seq")
    events = [
        ("counter.incremented", {"name": "flaky-1", "by": 1}, "flaky-1"),
        ("counter.incremented", {"name": "bad", "by": -1}, "bad"),
        ("counter.incremented", {"name": "ok", "by": 1}, "ok"),
        ("counter.incremented", {"name": "flaky-1", "by": 2}, "flaky-1"),
    ]
    results = driver.send_many(events, max_in_flight=4)
    by_name: dict[str, list] = {}
    for r in results:
        by_name.setdefault((r.raw.key or b"").decode(), []).append(r)
    assert [r.outcome for r in by_name["flaky-1"]] == ["PROCESSED", "PROCESSED"]
    assert driver.state("flaky-1") == {"last": 2}
    [bad] = by_name["bad"]
    assert bad.outcome == "DEAD_LETTERED" and bad.reason == "negative"
    assert driver.state("ok") == {"last": 1}
    assert len(driver.sleeps) == 2  # one backoff per flaky input, recorded by the driver's clock


def test_an_async_handler_runs_in_order_through_send_too():
    driver = AgentDriver(sequenced_app(Gauge()), "seq")
    for n in (1, 2, 3):
        r = driver.send("counter.incremented", {"name": "a", "by": n})
        assert r.outcome == "PROCESSED" and r.emitted[0].value["seq"] == n
    assert driver.state("a") == {"last": 3}


def gated_executor(max_in_flight: int) -> tuple[AgentDriver, KeyedExecutor, BatchView, threading.Event]:
    """An executor over an agent whose input named "slow" runs until the event is set (each input
    emits one record); its open work is one overlay of a memory store."""
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    release_slow = threading.Event()

    @app.agent("gate", consumes=["counter.incremented"], produces=["counter.total"], max_in_flight=max_in_flight,
               routing="any")  # fmt: skip
    async def gate(event, ctx):
        if event.value["name"] == "slow":
            while not release_slow.is_set():
                await asyncio.sleep(0.005)
        ctx.emit("counter.total", event.value["name"], {"name": event.value["name"], "total": 1, "seq": 1})

    driver = AgentDriver(app, "gate")
    view = BatchView(MemoryStore())
    return driver, KeyedExecutor(driver.processor, max_in_flight, lambda _p: view), view, release_slow


def test_nothing_is_released_past_an_unfinished_input_and_a_drop_says_where_to_resume():
    driver, executor, view, release_slow = gated_executor(4)
    proc = driver.processor
    for offset, name in enumerate(["slow", "fast-1", "fast-2"]):
        t, k, d, h = driver._record_of("counter.incremented", {"name": name, "by": 1}, name)
        executor.submit(t, 0, offset, proc.admit(t, 0, offset, k, d, h))
    deadline = time.monotonic() + 10
    finished = 0
    while finished < 2 and time.monotonic() < deadline:
        finished += executor.collect(0.05)
    assert finished == 2  # both fast inputs are done...
    assert executor.take_released() == []  # ...and wait behind the slow one
    assert executor.lowest_offsets() == {(t, 0): 0}
    assert executor.drop() == {(t, 0): 0}  # dropped: handled again from offset 0
    assert not executor.busy and executor.capacity == 4
    release_slow.set()
    executor.close()


def test_a_drain_finishes_what_runs_and_releases_in_order():
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    @app.agent("gate", consumes=["counter.incremented"], produces=["counter.total"], max_in_flight=8, routing="any")
    async def gate(event, ctx):
        await asyncio.sleep(0.01)
        ctx.state["n"] = ctx.state.get("n", 0) + 1

    driver = AgentDriver(app, "gate", partition=0)
    view = BatchView(MemoryStore())
    executor = KeyedExecutor(driver.processor, 8, lambda _p: view)
    for offset, name in enumerate(["a", "b", "a", "c"]):
        t, k, d, h = driver._record_of("counter.incremented", {"name": name, "by": 1}, name)
        executor.submit(t, 0, offset, driver.processor.admit(t, 0, offset, k, d, h))
    assert executor.drain([0], timeout_s=10)  # the second "a" never starts while draining
    released = executor.take_released()
    assert [r.offset for r in released] == [0, 1]
    assert executor.drop([0]) == {(t, 0): 2}
    executor.close()


def test_concurrency_needs_an_async_handler_or_threads():
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    with pytest.raises(AppError, match="max_in_flight 4 needs an async def handler or threads=True"):

        @app.agent("plain", consumes=["counter.incremented"], max_in_flight=4)
        def plain(event, ctx):
            pass

    @app.agent("a", consumes=["counter.incremented"])
    async def a(event, ctx):
        pass

    @app.agent("t", consumes=["counter.incremented"], threads=True)
    def t(event, ctx):
        pass

    @app.agent("s", consumes=["counter.incremented"])
    def s(event, ctx):
        pass

    assert app.agents["a"].concurrency() == DEFAULT_MAX_IN_FLIGHT
    assert app.agents["t"].concurrency() == DEFAULT_MAX_IN_FLIGHT
    assert app.agents["s"].concurrency() == 1
    assert app.agents["a"].concurrency(7) == 7


def test_the_loop_guard_and_contracts_judge_inputs_before_they_run_concurrently():
    driver = AgentDriver(sequenced_app(Gauge()), "seq")
    events = [
        ("counter.incremented", {"name": "a", "by": 1}, "a"),
        ("counter.incremented", {"name": "b", "by": 1}, "b", {"hop_count": 500}),
        ("counter.incremented", {"name": "a", "by": 2}, "a"),
    ]
    results = driver.send_many(events, max_in_flight=8)
    outcomes = {(r.raw.key, r.outcome, r.reason) for r in results}
    assert outcomes == {(b"a", "PROCESSED", None), (b"b", "DEAD_LETTERED", "loop")}
    assert driver.state("a") == {"last": 2}


def test_a_dropped_coroutine_is_cancelled():
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    started, cancelled = threading.Event(), threading.Event()

    @app.agent("hang", consumes=["counter.incremented"], max_in_flight=2, routing="any")
    async def hang(event, ctx):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    driver = AgentDriver(app, "hang", partition=0)
    view = BatchView(MemoryStore())
    executor = KeyedExecutor(driver.processor, 2, lambda _p: view)
    t, k, d, h = driver._record_of("counter.incremented", {"name": "x", "by": 1}, "x")
    executor.submit(t, 0, 0, driver.processor.admit(t, 0, 0, k, d, h))
    assert started.wait(10)
    assert executor.drop([0]) == {(t, 0): 0}
    assert cancelled.wait(10), "the handler of a dropped input went on running"
    assert executor.collect(0.2) == 0 and executor.take_released() == []  # its end is ignored
    executor.close()


def test_a_due_timer_waits_while_an_input_of_its_key_is_in_flight():
    from processors.runtime._commit import Batch
    from processors.runtime._housekeeping import Housekeeping, HousekeepingOptions
    from processors.runtime.metrics import AgentMetrics

    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    def on_timer(timer, ctx):
        ctx.state["fired"] = True

    @app.agent("t", consumes=["counter.incremented"], on_timer=on_timer, max_in_flight=2)
    async def t(event, ctx):
        pass

    driver = AgentDriver(app, "t", now_ms=1_000_000)
    store = MemoryStore()
    for name in ("busy", "free"):
        store.apply({keys.timer_key(name.encode(), "nudge"): keys.pack_u64(10) + b"{}"})
    housekeeping = Housekeeping(driver.processor, {0: store}, AgentMetrics("t"), HousekeepingOptions())
    batch = Batch({0: store})
    fired: list = []
    housekeeping.fire_timers(batch, fired.append, lambda p, key: key == b"busy")
    assert len(fired) == 1
    view = batch.views[0]
    assert view.get(keys.state_key(b"free")) is not None
    assert view.get(keys.state_key(b"busy")) is None  # left due: fired once its key is free
    assert view.get(keys.timer_key(b"busy", "nudge")) is not None


def test_an_input_reads_its_keys_state_from_the_open_work_a_commit_put_there():
    """A key's earlier input finished but waited behind a slow input of another key; a commit
    replaced the open work; then it was released into the new one. The key's next input, still
    running, must read that state (it left the staged writes for the new open work)."""
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    gates = {"slow": threading.Event(), "retry": threading.Event()}
    attempts: dict[int, int] = {}

    @app.agent("gate", consumes=["counter.incremented"], routing="any", max_in_flight=4, transient=(Flaky,),
               retry=RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.001, max_elapsed_s=30))  # fmt: skip
    async def gate(event, ctx):
        name, by = event.value["name"], event.value["by"]
        if name == "slow":
            while not gates["slow"].is_set():
                await asyncio.sleep(0.005)
        if by == 2 and attempts.setdefault(by, 0) == 0:
            attempts[by] = 1
            while not gates["retry"].is_set():
                await asyncio.sleep(0.005)
            raise Flaky("once")
        ctx.state["n"] = ctx.state.get("n", 0) + 1

    driver = AgentDriver(app, "gate", partition=0)
    store = MemoryStore()
    views = [BatchView(store)]
    executor = KeyedExecutor(driver.processor, 4, lambda _p: views[-1])
    proc = driver.processor
    for offset, (name, by) in enumerate([("slow", 1), ("a", 1), ("a", 2)]):
        t, k, d, h = driver._record_of("counter.incremented", {"name": name, "by": by}, name)
        executor.submit(t, 0, offset, proc.admit(t, 0, offset, k, d, h))
    deadline = time.monotonic() + 10
    while not attempts and time.monotonic() < deadline:  # "a" 1 finished, "a" 2 in its first attempt
        executor.collect(0.05)
    assert attempts and executor.take_released() == []
    store.apply(views[-1].writes)  # the commit: the open work written, a new one opened
    views.append(BatchView(store))
    gates["slow"].set()
    while len(executor.take_released() or []) == 0 and time.monotonic() < deadline:
        executor.collect(0.05)
    gates["retry"].set()
    while executor.busy and time.monotonic() < deadline:
        executor.collect(0.05)
    executor.take_released()
    executor.close()
    assert views[-1].get(keys.state_key(b"a")) == b'{"n":2}'


def test_a_blocking_ctx_call_from_an_async_handler_is_named_once(caplog):
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    @app.agent("blocks", consumes=["counter.incremented"], dependencies=["slow-api"])
    async def blocks(event, ctx):
        ctx.call("slow-api", lambda: None)

    driver = AgentDriver(app, "blocks")
    with caplog.at_level("WARNING", logger="choreo.runtime"):
        driver.send("counter.incremented", {"name": "a", "by": 1})
        driver.send("counter.incremented", {"name": "b", "by": 1})
    warnings = [r for r in caplog.records if "blocks every other input" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].dependency == "slow-api"


def test_an_open_breaker_stops_the_calls_of_every_input_in_flight():
    """One breaker per dependency and agent session, shared by the inputs running at once: once the
    window opens it, the other inputs' calls fail fast (no call reaches the service) and are
    retried, then dead-lettered with their reason; none is lost or processed twice."""
    app = App("breaker-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    calls: list[str] = []
    policy = DependencyPolicy(failure_rate_threshold=0.5, window_size=4, min_calls=4, open_seconds=3600.0)
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002, max_elapsed_s=5.0)

    @app.agent("caller", consumes=["counter.incremented"], produces=["counter.total"],
               dependencies={"svc": policy}, transient=(Flaky,), retry=retry, max_in_flight=8)  # fmt: skip
    async def caller(event, ctx):
        async def down() -> None:
            calls.append(event.value["name"])
            await asyncio.sleep(0.002)
            raise Flaky("svc: down")

        await ctx.call_async("svc", down)
        ctx.emit("counter.total", event.value["name"], {"name": event.value["name"], "total": 1, "seq": 1})

    driver = AgentDriver(app, "caller")
    results = driver.send_many(interleaved([f"k{i}" for i in range(16)], 1), max_in_flight=8)
    assert [r.outcome for r in results] == ["DEAD_LETTERED"] * 16 and not any(r.emitted for r in results)
    assert {r.reason for r in results} <= {"retries_exhausted", "circuit_open"}
    # 16 inputs x 3 attempts would be 48 calls without the breaker; with it, the 4 that opened it
    # and at most the other inputs already inside a call then (7 more)
    assert 4 <= len(calls) <= 4 + 7


def test_finished_inputs_behind_a_slow_head_free_their_slot_up_to_the_held_bound():
    """A finished input waiting for an earlier one of its partition holds no handler slot: with a
    slow head and max_in_flight 2 the other slot keeps running inputs, until the executor holds
    ``max_held`` (HELD_PER_SLOT × max_in_flight) in all; they are released in offset order after it."""
    driver, executor, view, release_slow = gated_executor(2)
    proc = driver.processor

    def submit(offset: int, name: str) -> str:
        t, k, d, h = driver._record_of("counter.incremented", {"name": name, "by": 1}, name)
        executor.submit(t, 0, offset, proc.admit(t, 0, offset, k, d, h))
        return t

    topic = submit(0, "slow")
    offset, deadline = 1, time.monotonic() + 10
    while executor.capacity and time.monotonic() < deadline:
        submit(offset, f"fast-{offset}")
        while executor.collect(0.05) == 0 and time.monotonic() < deadline:
            pass  # until this fast one finished: it then waits behind the slow head
        offset += 1
    assert executor.max_held == 8 and offset == 8  # 7 fast inputs ran through the second slot
    assert executor.in_flight() == 8 and executor.capacity == 0
    assert executor.take_released() == []  # nothing released past the unfinished head
    release_slow.set()
    released: list[Released] = []
    while len(released) < 8 and time.monotonic() < deadline:
        executor.collect(0.05)
        released += executor.take_released()
    assert [(r.topic, r.offset) for r in released] == [(topic, o) for o in range(8)]
    assert executor.capacity == 2 and not executor.busy
    executor.close()


def test_an_input_of_another_topic_reads_what_an_earlier_input_of_its_key_wrote():
    """An agent on two co-partitioned topics: one key's input on each, the first finished but held
    behind a slow input of its own topic. The second (other topic, same key, same store) must not
    start before the first is released, or it reads the key's state without the first's write and
    one of the two writes is lost (the fault run's missing notification: an order.cancelled's
    pending notice overwritten by its order.created)."""
    app = App("concurrency-test", contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)
    slow, first_ran = threading.Event(), threading.Event()

    @app.agent("two", consumes=["counter.incremented", "counter.reset"], routing="any", max_in_flight=4)
    async def two(event, ctx):
        if event.value["name"] == "slow":
            while not slow.is_set():
                await asyncio.sleep(0.002)
        elif event.type == "counter.incremented":
            first_ran.set()
        seen = ctx.state.get("seen", [])
        ctx.state["seen"] = [*seen, event.type]

    driver = AgentDriver(app, "two", partition=0)
    views = [BatchView(MemoryStore())]
    executor = KeyedExecutor(driver.processor, 4, lambda _p: views[-1])
    proc = driver.processor
    inputs = [("counter.incremented", {"name": "slow", "by": 1}), ("counter.incremented", {"name": "a", "by": 1})]
    inputs.append(("counter.reset", {"name": "a"}))
    offsets: dict[str, int] = {}
    for event_type, value in inputs:
        t, k, d, h = driver._record_of(event_type, value, str(value["name"]))
        offset = offsets[t] = offsets.get(t, -1) + 1
        executor.submit(t, 0, offset, proc.admit(t, 0, offset, k, d, h))
    deadline = time.monotonic() + 10
    while not first_ran.is_set() and time.monotonic() < deadline:
        executor.collect(0.01)
    for _ in range(10):  # "a" on counter.incremented finishes, held behind "slow"; the reset waits
        executor.collect(0.01)
    slow.set()
    released = []
    while executor.busy and time.monotonic() < deadline:
        executor.collect(0.02)
        released += executor.take_released()
    released += executor.take_released()
    executor.close()
    assert len(released) == 3
    assert views[-1].get(keys.state_key(b"a")) == b'{"seen":["counter.incremented","counter.reset"]}'
