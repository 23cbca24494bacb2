"""The dependency machinery of ``ctx.call``: derived call keys, the token bucket, the bulkhead, the
timeout, in-place retries with full jitter, limits from settings, and their metrics. Pure: fake
clocks and sleeps where time matters, threads and events where concurrency does; ``ctx.call_async``
on real event loops (``asyncio.run``), with the same key, limits and metrics as ``ctx.call``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from processors.agents.gateway import Authorization, GatewayRules, GatewayUnavailable, SimulatedPaymentGateway
from processors.contracts import Envelope
from processors.runtime import RetryPolicy
from processors.runtime.context import AgentServices, Context
from processors.runtime.dependencies import (
    TRANSIENT_CALL_ERRORS,
    Dependencies,
    Dependency,
    DependencyBusy,
    DependencyPolicy,
    DependencySettingError,
    DependencyThrottled,
    DependencyTimeout,
    DependencyUnavailable,
    TokenBucket,
    call_key,
    call_key_reference,
    policy_with,
)
from processors.runtime.retry import BreakerPolicy, CircuitBreaker, CircuitOpenError
from processors.runtime.state import BatchView, MemoryStore
from processors.settings import Settings
from tests.unit.commerce_flow import CommerceFlow, order


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dependency(policy: DependencyPolicy, **kw: Any) -> Dependency:
    breaker = CircuitBreaker("dep-t", policy, clock=kw["clock"]) if "clock" in kw else CircuitBreaker("dep-t", policy)
    return Dependency("agent-t", "dep-t", breaker, policy, **kw)


# ---------------------------------------------------------------- keys
def test_call_key_is_deterministic_and_matches_the_uuid5_reference():
    key = call_key("order-created-ord-1", "payments", "payment-gateway", 0)
    assert key == call_key("order-created-ord-1", "payments", "payment-gateway", 0)
    assert key == call_key_reference("order-created-ord-1", "payments", "payment-gateway", 0)
    others = {
        call_key("order-created-ord-2", "payments", "payment-gateway", 0),
        call_key("order-created-ord-1", "refunds", "payment-gateway", 0),
        call_key("order-created-ord-1", "payments", "other", 0),
        call_key("order-created-ord-1", "payments", "payment-gateway", 1),
    }
    assert key not in others and len(others) == 4


class KeyRecordingGateway(SimulatedPaymentGateway):
    def __init__(self, fail_first: int = 0) -> None:
        super().__init__(GatewayRules())
        self.keys: list[str] = []
        self.fail_first = fail_first

    def authorize(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        self._fail_first_calls(idempotency_key)
        return super().authorize(order_id, amount_minor, card_token, currency, idempotency_key)

    async def authorize_async(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        self._fail_first_calls(idempotency_key)
        return await super().authorize_async(order_id, amount_minor, card_token, currency, idempotency_key)

    def _fail_first_calls(self, idempotency_key: str) -> None:
        self.keys.append(idempotency_key)
        if len(self.keys) <= self.fail_first:
            raise GatewayUnavailable("down")


def test_ctx_call_hands_the_same_key_on_every_retry_and_replay():
    first = KeyRecordingGateway(fail_first=4)  # in-place retries (3) and one engine retry
    CommerceFlow(gateway=first).place(order())
    assert len(first.keys) == 5 and len(set(first.keys)) == 1 and first.keys[0]
    assert first.charges == {"ord-1": 1}
    replayed = KeyRecordingGateway()  # a fresh worker replaying the same input (state never committed)
    CommerceFlow(gateway=replayed).place(order())
    assert replayed.keys == first.keys[:1]


def test_a_callee_without_an_idempotency_key_parameter_is_called_as_before():
    seen: list[tuple[Any, ...]] = []
    breakers = {"dep": CircuitBreaker("dep", BreakerPolicy())}
    deps = Dependencies("a", breakers, limits={})

    def old_style(*args: Any) -> str:
        seen.append(args)
        return "ok"

    assert deps.invoke("dep", "k-1", old_style, (1, 2), {}) == "ok"
    assert seen == [(1, 2)]
    with pytest.raises(KeyError, match="does not declare"):
        deps.invoke("other", "k", lambda: None, (), {})


# ---------------------------------------------------------------- token bucket
def test_token_bucket_spends_its_burst_then_books_tokens_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, size=3, clock=clock)
    assert [bucket.reserve(1.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(1.0) == pytest.approx(0.1)  # booked: the next token comes in 100 ms
    assert bucket.reserve(1.0) == pytest.approx(0.2)  # and the one after in 200 ms
    assert bucket.reserve(0.25) is None  # would wait 300 ms: refused, nothing booked
    clock.now += 0.31  # the two booked tokens arrived and were spent; one more accrued
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) is None


def test_token_bucket_long_run_rate_never_exceeds_the_limit():
    clock = FakeClock()
    bucket = TokenBucket(rate=50.0, size=5, clock=clock)
    granted = 0
    for _ in range(2000):  # 2 s of attempts every millisecond, none willing to wait
        if bucket.reserve(0.0) == 0.0:
            granted += 1
        clock.now += 0.001
    assert 5 + 2 * 50 - 1 <= granted <= 5 + 2 * 50


def test_rate_limited_call_is_refused_as_throttled_and_counted():
    clock = FakeClock()
    dep = dependency(DependencyPolicy(rate_per_s=1.0, burst=1, max_wait_s=0.0), clock=clock)
    assert dep.call(None, lambda: 1, (), {}) == 1
    with pytest.raises(DependencyThrottled):
        dep.call(None, lambda: 2, (), {})
    assert isinstance(DependencyThrottled("d", "x"), TRANSIENT_CALL_ERRORS)  # transient for the engine
    sample = REGISTRY.get_sample_value(
        "choreo_dependency_calls_total", {"agent": "agent-t", "dependency": "dep-t", "outcome": "throttled"}
    )
    assert sample is not None and sample >= 1


# ---------------------------------------------------------------- bulkhead and timeout
def test_bulkhead_refuses_a_call_over_the_concurrency_limit():
    dep = dependency(DependencyPolicy(max_concurrency=1, max_wait_s=0.0))
    inside, release = threading.Event(), threading.Event()

    def slow() -> str:
        inside.set()
        release.wait(10)
        return "done"

    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(dep.call(None, slow, (), {})))
    worker.start()
    assert inside.wait(10)
    with pytest.raises(DependencyBusy):
        dep.call(None, lambda: "second", (), {})
    release.set()
    worker.join(10)
    assert results == ["done"]
    assert dep.call(None, lambda: "third", (), {}) == "third"  # the slot came back


def test_timeout_cuts_the_call_and_the_slot_is_held_until_the_call_really_ends():
    dep = dependency(DependencyPolicy(timeout_s=0.05, max_concurrency=1, max_wait_s=0.0, min_calls=1, window_size=1))
    release, ended = threading.Event(), threading.Event()

    def hangs() -> None:
        release.wait(10)
        ended.set()

    with pytest.raises(DependencyTimeout, match="no answer within 0.05s"):
        dep.call(None, hangs, (), {})
    assert dep.bulkhead is not None and dep.bulkhead.in_flight == 1
    with pytest.raises(DependencyBusy):  # the abandoned call still holds the only slot
        dep.call(None, lambda: None, (), {})
    release.set()
    assert ended.wait(10)
    assert dep.breaker.state == "open"  # the timeout counted as the breaker's failure


# ---------------------------------------------------------------- retries
def test_in_place_retries_use_full_jitter_within_the_exponential_cap_and_stop_at_max_attempts():
    sleeps: list[float] = []
    bounds: list[tuple[float, float]] = []

    def rng(low: float, high: float) -> float:
        bounds.append((low, high))
        return high  # the worst case of full jitter

    retry = RetryPolicy(max_attempts=4, base_delay_s=0.1, max_delay_s=0.25, max_elapsed_s=10.0)
    dep = dependency(
        DependencyPolicy(retry=retry, retry_on=(ConnectionError,), min_calls=20), sleep=sleeps.append, rng=rng
    )
    calls: list[str] = []

    def down(idempotency_key: str) -> None:
        calls.append(idempotency_key)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        dep.call("key-1", down, (), {})
    assert calls == ["key-1"] * 4
    assert bounds == [(0.0, 0.1), (0.0, 0.2), (0.0, 0.25)]
    assert sleeps == [0.1, 0.2, 0.25]


def test_jitter_is_uniform_between_zero_and_the_cap():
    import random

    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(7).uniform
    delays = [policy.backoff(3, rng) for _ in range(500)]
    assert all(0.0 <= d <= 0.4 for d in delays)
    assert min(delays) < 0.05 and max(delays) > 0.35  # spread over the whole range, not a fixed delay


def test_an_error_not_declared_retryable_is_not_retried():
    dep = dependency(DependencyPolicy(retry=RetryPolicy(max_attempts=5), retry_on=(ConnectionError,)))
    calls: list[int] = []

    def bad() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        dep.call(None, bad, (), {})
    assert calls == [1]


def test_retries_stop_when_the_next_backoff_would_cross_max_elapsed():
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=10, base_delay_s=1.0, max_delay_s=1.0, max_elapsed_s=2.5)

    def sleep(s: float) -> None:
        clock.now += s

    dep = dependency(
        DependencyPolicy(retry=retry, retry_on=(ConnectionError,), min_calls=20),
        clock=clock,
        sleep=sleep,
        rng=lambda lo, hi: hi,
    )
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError

    with pytest.raises(ConnectionError):
        dep.call(None, down, (), {})
    assert len(calls) == 3  # tries at 0 s, 1 s, 2 s; the next would start past 2.5 s


# ---------------------------------------------------------------- settings and metrics
def test_limits_from_settings_override_the_declaration():
    env = {
        "CHOREO_DEPENDENCY_PAYMENT_GATEWAY__TIMEOUT_S": "2.5",
        "CHOREO_DEPENDENCY_PAYMENT_GATEWAY__RATE_PER_S": "40",
        "CHOREO_DEPENDENCY_PAYMENT_GATEWAY__MAX_ATTEMPTS": "2",
    }
    settings = Settings.load(env=env)
    limits = settings.dependencies["payment_gateway"]
    declared = DependencyPolicy(timeout_s=10.0, max_concurrency=4)
    policy = policy_with(declared, limits, "payment-gateway")
    assert (policy.timeout_s, policy.max_concurrency, policy.rate_per_s, policy.retry.max_attempts) == (2.5, 4, 40, 2)
    assert policy_with(declared, {"timeout_s": "none"}).timeout_s is None
    with pytest.raises(DependencySettingError, match="unknown limit"):
        policy_with(declared, {"timeout": "1"})
    with pytest.raises(DependencySettingError, match="must be a number"):
        policy_with(declared, {"timeout_s": "soon"})
    with pytest.raises(DependencySettingError, match="timeout_s must be positive"):
        policy_with(declared, {"timeout_s": "-1"})


def test_limits_from_the_config_file(tmp_path):
    path = tmp_path / "choreo.toml"
    path.write_text("[dependencies.payment-gateway]\nmax_concurrency = 3\nopen_seconds = 5\n")
    settings = Settings.load(config_file=path, env={"CHOREO_DEPENDENCY_PAYMENT_GATEWAY__MAX_CONCURRENCY": "7"})
    assert settings.dependencies == {"payment_gateway": {"max_concurrency": "7", "open_seconds": "5"}}
    breaker = CircuitBreaker("payment-gateway", BreakerPolicy())
    deps = Dependencies("payments", {"payment-gateway": breaker}, limits=settings.dependencies)
    assert deps.calls["payment-gateway"].policy.max_concurrency == 7
    assert breaker.policy.open_seconds == 5.0  # the breaker took the settings too


def test_configured_limits_are_exported_as_metrics():
    policy = DependencyPolicy(timeout_s=1.5, max_concurrency=6, rate_per_s=20.0, burst=4)
    Dependency("agent-m", "dep-m", CircuitBreaker("dep-m", policy), policy)

    def limit(name: str) -> float | None:
        labels = {"agent": "agent-m", "dependency": "dep-m", "limit": name}
        return REGISTRY.get_sample_value("choreo_dependency_limit", labels)

    assert (limit("timeout_s"), limit("max_concurrency"), limit("rate_per_s"), limit("burst")) == (1.5, 6, 20, 4)


def test_a_worker_takes_the_limits_of_the_settings_it_was_started_with(tmp_path, monkeypatch):
    """`choreo worker --config F` loads F into its settings: the dependency limits must come from
    those settings, not from a second load of the environment's defaults (which knows no F)."""
    from processors.runtime.worker import AgentRunner, WorkerOptions
    from tests.engine.app import build_app

    monkeypatch.delenv("CHOREO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./choreo.toml here either
    path = tmp_path / "elsewhere.toml"
    path.write_text("[dependencies.flaky-api]\nmax_concurrency = 3\ntimeout_s = 1.5\n")
    settings = Settings.load(config_file=path, env={})
    app = build_app("limits-test")
    runner = AgentRunner(app, app.agents["counter"], settings, "w1", "exactly_once", threading.Event(), WorkerOptions())
    policy = runner.processor.services.dependencies.calls["flaky-api"].policy
    assert (policy.max_concurrency, policy.timeout_s) == (3, 1.5)


# ---------------------------------------------------------------- many threads at once (threads=True agents)
def test_sync_calls_from_many_threads_keep_the_bulkhead_the_counters_and_the_slots_exact():
    dep = dependency(DependencyPolicy(max_concurrency=3, max_wait_s=10.0, timeout_s=10.0, min_calls=20))
    lock = threading.Lock()
    inside, peak, done = [0], [0], []

    def work(n: int) -> int:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        threading.Event().wait(0.002)
        with lock:
            inside[0] -= 1
        return n

    before = _calls("agent-t", "dep-t", "ok")

    def caller(base: int) -> None:
        for i in range(20):
            done.append(dep.call(None, work, (base + i,), {}))

    threads = [threading.Thread(target=caller, args=(100 * t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(done) == sorted(100 * t + i for t in range(8) for i in range(20))
    assert 1 <= peak[0] <= 3
    assert dep.bulkhead is not None and dep.bulkhead.in_flight == 0
    assert _calls("agent-t", "dep-t", "ok") - before == 160


def test_a_half_open_breaker_lets_exactly_one_probe_through_when_many_threads_call_at_once():
    clock = FakeClock()
    breaker = CircuitBreaker("dep-b", BreakerPolicy(min_calls=1, window_size=1, open_seconds=5), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_raise, ConnectionError("down"))
    clock.now += 5
    gate, release = threading.Barrier(16), threading.Event()
    probes: list[int] = []
    refused: list[int] = []

    def probe() -> None:
        probes.append(1)
        release.wait(10)

    def one() -> None:
        gate.wait(10)
        try:
            breaker.call(probe)
        except CircuitOpenError:
            refused.append(1)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    while len(refused) < 15 and any(t.is_alive() for t in threads):
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join(10)
    assert (len(probes), len(refused)) == (1, 15)
    assert breaker.state == "closed"


def _raise(exc: BaseException) -> None:
    raise exc


def _calls(agent: str, dep: str, outcome: str) -> float:
    labels = {"agent": agent, "dependency": dep, "outcome": outcome}
    return REGISTRY.get_sample_value("choreo_dependency_calls_total", labels) or 0.0


# ---------------------------------------------------------------- ctx.call_async
def _context(deps: Dependencies, cause: str = "cause-1") -> Context:
    services = AgentServices("agent-a", False, cast(Any, None), deps)
    return Context(
        services, BatchView(MemoryStore()), b"k-1", Envelope.new("order.created", "/t", idempotency_key=cause)
    )


def test_call_async_hands_the_key_ctx_call_would_and_shares_its_ordinal():
    deps = Dependencies("agent-a", {"psp": CircuitBreaker("psp"), "mail": CircuitBreaker("mail")}, limits={})
    seen: list[str] = []

    def sync_charge(idempotency_key: str) -> str:
        seen.append(idempotency_key)
        return "sync"

    async def charge(amount: int, idempotency_key: str) -> int:
        seen.append(idempotency_key)
        return amount

    async def handle(ctx: Context) -> list[int]:
        first = await ctx.call_async("psp", charge, 1)
        assert ctx.call("psp", sync_charge) == "sync"
        gathered = await asyncio.gather(ctx.call_async("psp", charge, 2), ctx.call_async("mail", charge, amount=3))
        return [first, *gathered]

    assert asyncio.run(handle(_context(deps))) == [1, 2, 3]
    expected = [call_key("cause-1", "agent-a", "psp", n) for n in (0, 1, 2)] + [
        call_key("cause-1", "agent-a", "mail", 0)
    ]
    assert seen == expected
    again: list[str] = []  # a replay of the same input made with ctx.call alone hands the same keys
    replay = _context(deps)
    for _ in range(3):
        replay.call("psp", lambda idempotency_key: again.append(idempotency_key))
    assert again == expected[:3]


def test_call_async_timeout_cancels_the_callee_and_frees_its_slot_at_once():
    policy = DependencyPolicy(timeout_s=0.05, max_concurrency=1, max_wait_s=0.0, min_calls=1, window_size=1)
    dep = dependency(policy)
    events: list[str] = []
    before = _calls("agent-t", "dep-t", "timeout")

    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def run() -> None:
        with pytest.raises(DependencyTimeout, match="no answer within 0.05s"):
            await dep.call_async(None, hangs, (), {})
        assert events == ["cancelled"]  # the callee saw the cancellation, it did not run on
        assert dep.bulkhead is not None and dep.bulkhead.in_flight == 0
        with pytest.raises(CircuitOpenError):  # the timeout counted as the breaker's failure
            await dep.call_async(None, hangs, (), {})

    asyncio.run(run())
    assert _calls("agent-t", "dep-t", "timeout") - before == 1


def test_call_async_a_timeout_error_of_the_callee_itself_is_not_our_timeout():
    dep = dependency(DependencyPolicy(timeout_s=5.0))

    async def own_timeout() -> None:
        raise TimeoutError("the callee's own")

    with pytest.raises(TimeoutError, match="the callee's own") as raised:
        asyncio.run(dep.call_async(None, own_timeout, (), {}))
    assert not isinstance(raised.value, DependencyTimeout)


def test_call_async_bulkhead_waits_without_blocking_the_loop_then_refuses_past_max_wait():
    dep = dependency(DependencyPolicy(max_concurrency=2, max_wait_s=0.2, min_calls=20))
    assert dep.bulkhead is not None
    peak: list[int] = []

    async def work(hold: asyncio.Event) -> str:
        peak.append(dep.bulkhead.in_flight if dep.bulkhead else 0)
        await hold.wait()
        return "done"

    async def run() -> None:
        hold = asyncio.Event()
        first = [asyncio.create_task(dep.call_async(None, work, (hold,), {})) for _ in range(2)]
        waiting = asyncio.create_task(dep.call_async(None, work, (hold,), {}))
        await asyncio.sleep(0.02)  # the loop runs on while the third waits for a slot
        assert not waiting.done() and max(peak) == 2
        hold.set()
        assert await asyncio.gather(*first, waiting) == ["done"] * 3
        hold.clear()
        holders = [asyncio.create_task(dep.call_async(None, work, (hold,), {})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(DependencyBusy):  # nobody gives a slot back within max_wait_s
            await dep.call_async(None, work, (hold,), {})
        hold.set()
        await asyncio.gather(*holders)

    asyncio.run(run())
    assert max(peak) == 2 and dep.bulkhead.in_flight == 0


def test_call_async_makes_its_semaphore_per_running_loop_never_before():
    dep = dependency(DependencyPolicy(max_concurrency=1, max_wait_s=0.0))  # built outside any loop

    async def one() -> int:
        return await dep.call_async(None, _answer, (7,), {})

    assert asyncio.run(one()) == 7  # a first loop
    assert asyncio.run(one()) == 7  # a second one (a replaced session): its own semaphore, no error
    assert dep.bulkhead is not None and len(dep.bulkhead._loop_slots) <= 1  # none kept for a closed loop


async def _answer(n: int) -> int:
    return n


def test_call_async_rate_limit_awaits_the_booked_token_and_refuses_past_max_wait():
    clock = FakeClock()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)  # the clock stands still: the booked token is still owed

    dep = dependency(DependencyPolicy(rate_per_s=10.0, burst=1, max_wait_s=0.15), clock=clock, async_sleep=fake_sleep)

    async def run() -> None:
        assert await dep.call_async(None, _answer, (1,), {}) == 1
        assert await dep.call_async(None, _answer, (2,), {}) == 2  # waited for the next token
        with pytest.raises(DependencyThrottled):
            await asyncio.gather(*(dep.call_async(None, _answer, (n,), {}) for n in range(3)))

    asyncio.run(run())
    assert slept == [pytest.approx(0.1)]  # the second call's wait; the third's (0.2 s) was refused


def test_call_async_retries_in_place_with_full_jitter_and_the_same_key():
    slept: list[float] = []
    bounds: list[tuple[float, float]] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    def rng(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    retry = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=1.0, max_elapsed_s=10.0)
    policy = DependencyPolicy(retry=retry, retry_on=(ConnectionError,), min_calls=20)
    dep = dependency(policy, rng=rng, async_sleep=fake_sleep)
    keys: list[str] = []

    async def flaky(idempotency_key: str) -> str:
        keys.append(idempotency_key)
        if len(keys) < 3:
            raise ConnectionError("blip")
        return "ok"

    before = REGISTRY.get_sample_value("choreo_dependency_retries_total", {"agent": "agent-t", "dependency": "dep-t"})
    assert asyncio.run(dep.call_async("key-9", flaky, (), {})) == "ok"
    assert keys == ["key-9"] * 3
    assert bounds == [(0.0, 0.1), (0.0, 0.2)] and slept == [0.05, 0.1]
    after = REGISTRY.get_sample_value("choreo_dependency_retries_total", {"agent": "agent-t", "dependency": "dep-t"})
    assert (after or 0) - (before or 0) == 2


def test_call_async_an_open_breaker_is_not_retried_and_a_cancelled_probe_hands_the_probe_on():
    clock = FakeClock()
    policy = DependencyPolicy(min_calls=1, window_size=1, open_seconds=5, retry=RetryPolicy(max_attempts=5))
    dep = dependency(policy, clock=clock)
    calls: list[int] = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    async def run() -> None:
        with pytest.raises(ConnectionError):
            await dep.call_async(None, down, (), {})
        with pytest.raises(CircuitOpenError):
            await dep.call_async(None, down, (), {})
        assert calls == [1]  # open: short-circuited, not retried in place
        clock.now += 5
        probe = asyncio.create_task(dep.call_async(None, asyncio.sleep, (30,), {}))
        await asyncio.sleep(0.01)
        probe.cancel()  # the handler was cancelled (shutdown, rebalance): no verdict on the dependency
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert await dep.call_async(None, _answer, (5,), {}) == 5  # the next call may probe
        assert dep.breaker.state == "closed"

    before = _calls("agent-t", "dep-t", "cancelled")
    asyncio.run(run())
    assert _calls("agent-t", "dep-t", "cancelled") - before == 1


def test_call_async_refuses_a_sync_function_with_a_clear_error():
    dep = dependency(DependencyPolicy())
    with pytest.raises(TypeError, match="needs an async function"):
        asyncio.run(dep.call_async(None, cast(Any, lambda: 1), (), {}))
    deps = Dependencies("agent-a", {}, limits={})
    with pytest.raises(KeyError, match="does not declare"):
        _never = deps.invoke_async("nope", None, _answer, (1,), {})  # at once, before any await


def test_dependency_errors_the_engine_must_treat_as_transient_are_named():
    assert set(TRANSIENT_CALL_ERRORS) == {CircuitOpenError, DependencyUnavailable}
    for error in (DependencyTimeout, DependencyBusy, DependencyThrottled):
        assert isinstance(error("d", "x"), TRANSIENT_CALL_ERRORS)
