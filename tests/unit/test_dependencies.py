"""The dependency machinery of ``ctx.call``: derived call keys, the token bucket, the bulkhead, the
timeout, in-place retries with full jitter, limits from settings, and their metrics. Pure: fake
clocks and sleeps where time matters, threads and events where concurrency does."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY

from processors.agents.gateway import Authorization, GatewayRules, GatewayUnavailable, SimulatedPaymentGateway
from processors.runtime import RetryPolicy
from processors.runtime.dependencies import (
    Dependencies,
    Dependency,
    DependencyBusy,
    DependencyPolicy,
    DependencySettingError,
    DependencyThrottled,
    DependencyTimeout,
    TokenBucket,
    call_key,
    call_key_reference,
    policy_with,
)
from processors.runtime.retry import BreakerPolicy, CircuitBreaker, CircuitOpenError
from processors.settings import Settings
from tests.unit.commerce_flow import CommerceFlow, order


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dependency(policy: DependencyPolicy, **kw: Any) -> Dependency:
    return Dependency("agent-t", "dep-t", CircuitBreaker("dep-t", policy), policy, **kw)


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
        self.keys.append(idempotency_key)
        if len(self.keys) <= self.fail_first:
            raise GatewayUnavailable("down")
        return super().authorize(order_id, amount_minor, card_token, currency, idempotency_key)


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
    assert isinstance(DependencyThrottled("d", "x"), CircuitOpenError)  # transient for the engine
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
