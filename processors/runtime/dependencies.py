"""Calls to an agent's external dependencies (``ctx.call``): an idempotency key of their own, and
per dependency a timeout, a concurrency limit (bulkhead), a rate limit (token bucket), retries with
backoff and full jitter, and the circuit breaker of :mod:`processors.runtime.retry`.

Why a key per call: Kafka transactions cover Kafka, not a payment provider. A worker killed after
the provider charged but before the transaction committed replays the input, and the replayed
handler calls again. The key :func:`call_key` derives from the input's idempotency key, the agent,
the dependency and the call's ordinal within that handling is the same on every replay and on every
retry, so a provider with Idempotency-Key semantics answers the replay with its first answer and
charges once. The callee gets the key when it takes a keyword parameter named ``idempotency_key``.

Why limits per dependency: a third-party API has quotas (token bucket) and a capacity (bulkhead);
a call that hangs must not hold the partition without end (timeout); a short blip is cheaper to
retry in place, with the same key, than to fail the whole handler (retries). A call refused by a
limit or cut by its timeout raises a :class:`DependencyUnavailable`, which the engine treats as
transient like an open circuit: the handler is retried with the engine's backoff, never
dead-lettered for a slow dependency until the agent's retry budget is spent.

Limits come from the agent's declaration (a :class:`DependencyPolicy` in ``dependencies=``) and
then from settings (``[dependencies.<name>]`` in the file, ``CHOREO_DEPENDENCY_<NAME>__<LIMIT>`` in
the environment), which win. Each configured limit and every call's outcome are Prometheus metrics.

A sync call (``ctx.call``) enforces its timeout by running in a thread of the dependency's own
pool and waiting at most ``timeout_s``: Python cannot stop a blocking call, so a call cut by its
timeout still runs to its end in that thread and keeps its bulkhead slot until then (which is what
bounds the calls a slow dependency can pile up). ``ctx.call`` is safe from many threads at once (a
``threads=True`` agent): the bucket, the bulkhead and the breaker each guard their state with a lock.

An async call (``await ctx.call_async``) gets the same key (one ordinal counter per dependency is
shared by both), the same limits and the same metrics with ``asyncio`` means: its timeout cancels
the call for real (the callee sees :class:`asyncio.CancelledError` and its slot is free at once),
waits for a token, a slot or a backoff are ``await asyncio.sleep`` and never block the loop, and
the bulkhead is an :class:`asyncio.Semaphore`. The engine runs an agent session's handlers on one
event loop and gives a replaced session a new one, so the semaphore is made lazily for each running
loop, never at import or declaration time; ``max_concurrency`` therefore bounds the async calls of
one loop (one agent session), and the sync calls of all threads.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from processors.contracts import ids
from processors.errors import ChoreoError
from processors.runtime.retry import NO_RETRY, BreakerPolicy, CircuitBreaker, CircuitOpenError, RetryPolicy

T = TypeVar("T")

# Call keys have a namespace of their own, so no call key can equal an emitted event's key or id.
CALL_KEY_NAMESPACE = uuid.UUID("ffe5e39a-4ee8-4691-96ac-720502e493d1")
_CALL_KEY_PREFIX = CALL_KEY_NAMESPACE.bytes
KEY_PARAMETER = "idempotency_key"


def call_key(cause_key: str, agent: str, dependency: str, ordinal: int) -> str:
    """Idempotency key of the ``ordinal``-th call (from 0) ``agent`` makes to ``dependency`` while
    handling the input keyed ``cause_key``: a version-5 UUID, the same on every replay."""
    name = ids.SEPARATOR.join((cause_key, agent, dependency, str(ordinal)))
    return ids.uuid_from_sha1(_CALL_KEY_PREFIX + name.encode("utf-8"))


def call_key_reference(cause_key: str, agent: str, dependency: str, ordinal: int) -> str:
    """What :func:`call_key` must equal: the standard library's uuid5 of the same name."""
    return ids.uuid5_reference(CALL_KEY_NAMESPACE, ids.SEPARATOR.join((cause_key, agent, dependency, str(ordinal))))


# ---------------------------------------------------------------------- errors
class DependencyUnavailable(ChoreoError):
    """The call did not reach the dependency or did not finish in time (timeout, bulkhead full,
    rate limit): transient, the engine retries the handler with backoff as under an open circuit
    (it names both types in :data:`TRANSIENT_CALL_ERRORS`)."""

    reason = "unavailable"

    def __init__(self, dependency: str, detail: str, retry_in_s: float = 0.0) -> None:
        self.dependency = dependency
        self.retry_in_s = retry_in_s
        super().__init__(f"dependency {dependency!r}: {detail}")


class DependencyTimeout(DependencyUnavailable):
    reason = "timeout"


class DependencyBusy(DependencyUnavailable):
    reason = "busy"


class DependencyThrottled(DependencyUnavailable):
    reason = "throttled"


# What the engine must always treat as transient, whatever the agent declares: an open circuit and
# a call refused or cut by its limits.
TRANSIENT_CALL_ERRORS: tuple[type[BaseException], ...] = (CircuitOpenError, DependencyUnavailable)


# ---------------------------------------------------------------------- policy
@dataclass(frozen=True)
class DependencyPolicy(BreakerPolicy):
    """The breaker's policy plus the call's limits; ``None`` means no such limit.

    ``timeout_s`` bounds one attempt; ``max_concurrency`` the attempts in flight at once (per agent
    and worker process); ``rate_per_s`` and ``burst`` the token bucket (``burst`` defaults to
    ``max(1, rate_per_s)``); ``max_wait_s`` how long an attempt may wait for a slot or a token
    before it is refused; ``retry`` the in-place retries of one call (same key), on a
    :class:`DependencyUnavailable` or on any of ``retry_on``."""

    timeout_s: float | None = None
    max_concurrency: int | None = None
    rate_per_s: float | None = None
    burst: int | None = None
    max_wait_s: float = 1.0
    retry: RetryPolicy = NO_RETRY
    retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("DependencyPolicy.timeout_s must be positive (or None for no timeout)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("DependencyPolicy.max_concurrency must be at least 1 (or None)")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ValueError("DependencyPolicy.rate_per_s must be positive (or None for no rate limit)")
        if self.burst is not None and self.burst < 1:
            raise ValueError("DependencyPolicy.burst must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("DependencyPolicy.max_wait_s must not be negative")

    @property
    def bucket_size(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, int(self.rate_per_s or 1))

    def limits(self) -> dict[str, float]:
        """The configured limits as numbers (the ``choreo_dependency_limit`` gauge; 0 = none)."""
        return {
            "timeout_s": self.timeout_s or 0.0,
            "max_concurrency": float(self.max_concurrency or 0),
            "rate_per_s": self.rate_per_s or 0.0,
            "burst": float(self.bucket_size if self.rate_per_s else 0),
            "max_attempts": float(self.retry.max_attempts),
            "open_seconds": self.open_seconds,
        }


_UNLIMITED = ("", "0", "none", "off")
_OPTIONAL = {"timeout_s": float, "max_concurrency": int, "rate_per_s": float, "burst": int}
_NUMBERS = {"max_wait_s": float, "failure_rate_threshold": float, "window_size": int, "min_calls": int}
_NUMBERS["open_seconds"] = float
_RETRY = {"max_attempts": int, "base_delay_s": float, "max_delay_s": float, "max_elapsed_s": float}
SETTABLE_LIMITS = frozenset(_OPTIONAL) | frozenset(_NUMBERS) | frozenset(_RETRY)


def policy_with(declared: BreakerPolicy, limits: Mapping[str, str] | None, name: str = "?") -> DependencyPolicy:
    """The declared policy (a plain :class:`BreakerPolicy` gets no limits) with the limits from
    settings over it. An unknown limit or a malformed value raises :class:`DependencySettingError`."""
    base = {f.name: getattr(declared, f.name) for f in fields(BreakerPolicy)}
    policy = declared if isinstance(declared, DependencyPolicy) else DependencyPolicy(**base)
    if not limits:
        return policy
    unknown = sorted(set(limits) - SETTABLE_LIMITS)
    if unknown:
        raise DependencySettingError(
            f"dependency {name!r}: unknown limit(s) {', '.join(unknown)} (known: {', '.join(sorted(SETTABLE_LIMITS))})"
        )
    changes: dict[str, Any] = {}
    retry_changes: dict[str, Any] = {}
    for limit, raw in limits.items():
        text = str(raw).strip().lower()
        try:
            if limit in _OPTIONAL:
                changes[limit] = None if text in _UNLIMITED else _OPTIONAL[limit](text)
            elif limit in _NUMBERS:
                changes[limit] = _NUMBERS[limit](text)
            else:
                retry_changes[limit] = _RETRY[limit](text)
        except ValueError as exc:
            raise DependencySettingError(f"dependency {name!r}: {limit} must be a number, got {raw!r}") from exc
    if retry_changes:
        changes["retry"] = replace(policy.retry, **retry_changes)
    try:
        return replace(policy, **changes)
    except ValueError as exc:
        raise DependencySettingError(f"dependency {name!r}: {exc}") from exc


class DependencySettingError(ChoreoError, ValueError):
    """A dependency limit in the settings is unknown or malformed."""


# ---------------------------------------------------------------------- limits
class TokenBucket:
    """``rate`` tokens a second, at most ``size`` saved up. :meth:`reserve` takes a token now or
    books the next one and says how long to wait for it, so waiting callers are served in order and
    the long-run rate never exceeds ``rate``. Thread-safe; the clock is injectable for tests."""

    def __init__(self, rate: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.size = size
        self._clock = clock
        self._tokens = float(size)
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self, max_wait_s: float) -> float | None:
        """Seconds to wait before the call may go (0.0: go now); ``None`` when that would be more
        than ``max_wait_s`` (nothing is booked then)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.size), self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            wait = (1.0 - self._tokens) / self.rate
            if wait > max_wait_s:
                return None
            self._tokens -= 1.0
            return wait


class Bulkhead:
    """At most ``size`` calls in flight; a call waits up to ``max_wait_s`` for a slot. Sync calls
    (from any number of threads) share one :class:`threading.BoundedSemaphore`; async calls share
    an :class:`asyncio.Semaphore` per running event loop, made on the loop's first call (a
    semaphore is bound to its loop). ``in_flight`` counts both."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._loop_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.in_flight = 0

    def acquire(self, max_wait_s: float) -> bool:
        if not self._slots.acquire(timeout=max_wait_s):
            return False
        self._count(1)
        return True

    def release(self) -> None:
        self._count(-1)
        self._slots.release()

    async def acquire_async(self, max_wait_s: float) -> bool:
        """A slot of the running loop's semaphore, waiting at most ``max_wait_s`` without blocking
        the loop; False when none came in time."""
        slots = self._semaphore()
        if slots.locked():
            if max_wait_s <= 0:
                return False
            try:
                async with asyncio.timeout(max_wait_s):
                    await slots.acquire()
            except TimeoutError:
                return False
        else:
            await slots.acquire()  # free and nobody queued: taken without suspending
        self._count(1)
        return True

    def release_async(self) -> None:
        """Give back the slot :meth:`acquire_async` took, on the same loop."""
        self._count(-1)
        self._semaphore().release()

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            slots = self._loop_slots.get(loop)
            if slots is None:
                # A semaphore that waited holds its loop, so its entry outlives the loop: drop those
                # of closed loops (replaced agent sessions) now.
                for closed in [old for old in self._loop_slots if old.is_closed()]:
                    del self._loop_slots[closed]
                slots = self._loop_slots[loop] = asyncio.Semaphore(self.size)
            return slots

    def _count(self, change: int) -> None:
        with self._lock:
            self.in_flight += change


# ---------------------------------------------------------------------- metrics
CALLS = Counter(
    "choreo_dependency_calls_total",
    "Attempts of calls to an external dependency, by outcome (ok, error, timeout, busy, throttled, open, "
    "cancelled: an async call whose handler was cancelled)",
    ["agent", "dependency", "outcome"],
)
CALL_SECONDS = Histogram(
    "choreo_dependency_call_seconds",
    "Latency of an attempt that reached the dependency (answered, failed or cut by the timeout)",
    ["agent", "dependency"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge("choreo_dependency_in_flight", "Attempts in flight (bulkhead slots taken)", ["agent", "dependency"])
RETRIES = Counter("choreo_dependency_retries_total", "In-place retries of dependency calls", ["agent", "dependency"])
LIMIT = Gauge("choreo_dependency_limit", "A dependency's configured limit (0: none)", ["agent", "dependency", "limit"])


@functools.lru_cache(maxsize=1024)
def _takes_key(fn: Callable[..., Any]) -> bool:
    try:
        return KEY_PARAMETER in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def takes_key(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` declares a parameter named ``idempotency_key`` (looked up once per function)."""
    target = getattr(fn, "__func__", fn)
    try:
        return _takes_key(target)
    except TypeError:  # unhashable callable
        return KEY_PARAMETER in inspect.signature(fn).parameters


# ---------------------------------------------------------------------- one dependency
OUTCOMES = ("ok", "error", "timeout", "busy", "throttled", "open", "cancelled")


class Dependency:
    """One declared dependency of one agent: its breaker, bucket, bulkhead, timeout and retries,
    for sync calls (:meth:`call`, from any thread) and async ones (:meth:`call_async`, on any
    running loop). Nothing loop-bound is made before a call runs on its loop."""

    def __init__(
        self,
        agent: str,
        name: str,
        breaker: CircuitBreaker,
        policy: DependencyPolicy,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[float, float], float] = random.uniform,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.agent = agent
        self.name = name
        self.breaker = breaker
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._rng = rng
        self.bucket = TokenBucket(policy.rate_per_s, policy.bucket_size, clock) if policy.rate_per_s else None
        self.bulkhead = Bulkhead(policy.max_concurrency) if policy.max_concurrency else None
        self._pool: ThreadPoolExecutor | None = None
        self._outcomes = {o: CALLS.labels(agent, name, o) for o in OUTCOMES}
        self._seconds = CALL_SECONDS.labels(agent, name)
        self._in_flight = IN_FLIGHT.labels(agent, name)
        self._retries = RETRIES.labels(agent, name)
        for limit, value in policy.limits().items():
            LIMIT.labels(agent, name, limit).set(value)

    # ------------------------------------------------------------------ sync
    def call(self, key: str | None, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        """``fn(*args, **kwargs)`` (plus ``idempotency_key=key`` when ``fn`` takes it) within the
        limits, retried in place with the same key on a transient failure."""
        kwargs = self._keyed(key, fn, kwargs)
        started, attempt = self._clock(), 1
        while True:
            try:
                return self._attempt(fn, args, kwargs)
            except Exception as exc:
                delay = self._retry_delay(exc, attempt, started)
                if delay is None:
                    raise
                self._retries.inc()
                self._sleep(delay)
                attempt += 1

    def _attempt(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        policy = self.policy
        wait = self._token_wait()
        if wait > 0:
            self._sleep(wait)
        bulkhead = self.bulkhead
        if bulkhead is not None and not bulkhead.acquire(policy.max_wait_s):
            raise self._busy(bulkhead)
        self._in_flight.inc()
        start = self._clock()
        handed_over: list[bool] = []  # set once a pool thread owns the slot: it releases it at the call's end
        try:
            if policy.timeout_s is None:
                result = self.breaker.call(fn, *args, **kwargs)
            else:
                result = self.breaker.call(self._within_timeout, policy.timeout_s, handed_over, fn, args, kwargs)
        except BaseException as exc:
            self._outcomes[_outcome_of(exc)].inc()
            raise
        finally:
            self._seconds.observe(self._clock() - start)
            if not handed_over:
                self._release()
        self._outcomes["ok"].inc()
        return result

    def _within_timeout(
        self,
        timeout_s: float,
        handed_over: list[bool],
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        future: Future[T] = self._executor().submit(fn, *args, **kwargs)
        handed_over.append(True)
        future.add_done_callback(lambda _f: self._release())
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: it never runs (its callback releases the slot)
            raise DependencyTimeout(self.name, f"no answer within {timeout_s:g}s") from None

    def _release(self) -> None:
        self._in_flight.dec()
        if self.bulkhead is not None:
            self.bulkhead.release()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # a race only builds the same pool twice: _pool_for hands out one
            self._pool = _pool_for(self.agent, self.name, self.policy.max_concurrency or DEFAULT_POOL_THREADS)
        return self._pool

    # ------------------------------------------------------------------ async
    async def call_async(
        self, key: str | None, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """:meth:`call` for an async ``fn``, on the running loop: the same key, limits, retries and
        metrics; every wait is an ``await``, and the timeout cancels the call."""
        kwargs = self._keyed(key, fn, kwargs)
        started, attempt = self._clock(), 1
        while True:
            try:
                return await self._attempt_async(fn, args, kwargs)
            except Exception as exc:
                delay = self._retry_delay(exc, attempt, started)
                if delay is None:
                    raise
                self._retries.inc()
                await self._async_sleep(delay)
                attempt += 1

    async def _attempt_async(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        policy = self.policy
        wait = self._token_wait()
        if wait > 0:
            await self._async_sleep(wait)
        bulkhead = self.bulkhead
        if bulkhead is not None and not await bulkhead.acquire_async(policy.max_wait_s):
            raise self._busy(bulkhead)
        self._in_flight.inc()
        start = self._clock()
        try:
            result = await self.breaker.call_async(self._awaited, policy.timeout_s, fn, args, kwargs)
        except BaseException as exc:
            self._outcomes[_outcome_of(exc)].inc()
            raise
        finally:
            self._seconds.observe(self._clock() - start)
            self._in_flight.dec()
            if bulkhead is not None:
                bulkhead.release_async()
        self._outcomes["ok"].inc()
        return result

    async def _awaited(
        self, timeout_s: float | None, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        awaitable = fn(*args, **kwargs)
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"ctx.call_async({self.name!r}, ...) needs an async function; "
                f"{getattr(fn, '__qualname__', type(fn).__name__)} returned {type(awaitable).__name__} "
                "(call a sync function with ctx.call)"
            )
        if timeout_s is None:
            return await awaitable
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if deadline.expired():  # ours: the call was cancelled; a TimeoutError of the callee's own propagates
                raise DependencyTimeout(self.name, f"no answer within {timeout_s:g}s") from None
            raise

    # ------------------------------------------------------------------ shared by both
    def _keyed(self, key: str | None, fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        if key is not None and KEY_PARAMETER not in kwargs and takes_key(fn):
            return {**kwargs, KEY_PARAMETER: key}
        return kwargs

    def _retry_delay(self, exc: Exception, attempt: int, started: float) -> float | None:
        """The backoff before the next in-place attempt, or None to give up and raise ``exc``."""
        retry = self.policy.retry
        if not self._retryable(exc) or attempt >= retry.max_attempts:
            return None
        delay = retry.backoff(attempt, self._rng)
        if self._clock() - started + delay > retry.max_elapsed_s:
            return None
        return delay

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, DependencyUnavailable):
            return True
        if isinstance(exc, CircuitOpenError):
            return False  # open: retrying in place would only hammer the breaker
        return isinstance(exc, self.policy.retry_on)

    def _token_wait(self) -> float:
        """Seconds to wait for the bucket's token (0.0 without a rate limit); raises
        :class:`DependencyThrottled` when the wait would exceed ``max_wait_s``."""
        if self.bucket is None:
            return 0.0
        wait = self.bucket.reserve(self.policy.max_wait_s)
        if wait is None:
            self._outcomes["throttled"].inc()
            policy = self.policy
            raise DependencyThrottled(self.name, f"rate limit of {policy.rate_per_s}/s reached", policy.max_wait_s)
        return wait

    def _busy(self, bulkhead: Bulkhead) -> DependencyBusy:
        self._outcomes["busy"].inc()
        return DependencyBusy(self.name, f"all {bulkhead.size} concurrent calls in flight", self.policy.max_wait_s)


def _outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of an attempt that reached the breaker and raised ``exc``."""
    if isinstance(exc, DependencyTimeout):
        return "timeout"
    if isinstance(exc, CircuitOpenError):
        return "open"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


DEFAULT_POOL_THREADS = 32
_POOLS: dict[tuple[str, str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool_for(agent: str, dependency: str, threads: int) -> ThreadPoolExecutor:
    """One pool per agent and dependency in the process, shared by the agent's successive sessions
    (an agent restarted after a failure builds its dependencies again; its threads stay few)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((agent, dependency, threads))
        if pool is None:
            pool = ThreadPoolExecutor(threads, thread_name_prefix=f"choreo-dep-{dependency}")
            _POOLS[(agent, dependency, threads)] = pool
        return pool


# ---------------------------------------------------------------------- an agent's dependencies
def settings_limits() -> Mapping[str, Mapping[str, str]]:
    """The dependency limits of the process's settings (file and environment)."""
    from processors.settings import Settings

    return Settings.load().dependencies


class Dependencies:
    """The external systems one agent declared, each a :class:`Dependency`: what ``ctx.call``
    and ``ctx.call_async`` go through. Built once per agent; breakers, buckets and bulkheads are shared by every
    invocation. ``limits`` (settings by dependency name, see
    :func:`processors.settings.dependency_setting_name`) default to the process's settings."""

    __slots__ = ("agent", "breakers", "calls")

    def __init__(
        self,
        agent: str,
        breakers: dict[str, CircuitBreaker],
        limits: Mapping[str, Mapping[str, str]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[float, float], float] = random.uniform,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        from processors.settings import dependency_setting_name

        self.agent = agent
        self.breakers = breakers
        if limits is None:
            limits = settings_limits() if breakers else {}
        self.calls: dict[str, Dependency] = {}
        for name, breaker in breakers.items():
            policy = policy_with(breaker.policy, limits.get(dependency_setting_name(name)), name)
            breaker.reconfigure(policy)
            self.calls[name] = Dependency(
                agent, name, breaker, policy, clock=breaker.clock, sleep=sleep, rng=rng, async_sleep=async_sleep
            )

    def call(self, dependency: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` within the limits of ``dependency``, without an idempotency key."""
        return self.invoke(dependency, None, fn, args, kwargs)

    def invoke(
        self, dependency: str, key: str | None, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """The call ``ctx.call`` makes: an open breaker raises :class:`CircuitOpenError` without
        calling ``fn``, a limit a :class:`DependencyUnavailable`, an undeclared dependency
        ``KeyError``."""
        return self._target(dependency).call(key, fn, args, kwargs)

    def invoke_async(
        self,
        dependency: str,
        key: str | None,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Coroutine[Any, Any, T]:
        """The call ``ctx.call_async`` makes, to be awaited on the running loop; the same errors as
        :meth:`invoke` (an undeclared dependency raises ``KeyError`` at once, before any await)."""
        return self._target(dependency).call_async(key, fn, args, kwargs)

    def _target(self, dependency: str) -> Dependency:
        try:
            return self.calls[dependency]
        except KeyError:
            raise KeyError(
                f"agent {self.agent!r} calls dependency {dependency!r} it does not declare "
                f"(declared: {', '.join(self.calls) or 'none'})"
            ) from None


__all__ = [
    "CALL_KEY_NAMESPACE",
    "Bulkhead",
    "Dependencies",
    "Dependency",
    "DependencyBusy",
    "DependencyPolicy",
    "DependencySettingError",
    "DependencyThrottled",
    "DependencyTimeout",
    "DependencyUnavailable",
    "TRANSIENT_CALL_ERRORS",
    "TokenBucket",
    "call_key",
    "policy_with",
]
