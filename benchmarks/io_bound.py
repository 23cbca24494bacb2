"""I/O-bound agents (issue 14 item 5): the single-agent workload plus one dependency call per event.

The agent is the load benchmark's (:mod:`workload`: per-key state, an ``order.confirmed``
follow-up, audit) with, before that work, one call per event through ``ctx.call`` /
``ctx.call_async`` to the *latency server*: a real HTTP process (aiohttp, started by this module)
that answers ``POST /v1/calls?latency_ms=L`` after ``L`` ms. Not the PSP: the PSP's threaded
standard-library server (listen backlog 5, one SQLite lock) resets connections beyond a few dozen
opened at once and answers ~600–900 charges/s, so it would measure itself, not the agent.

Variants, each with the dependency's call at 0 ms (the *CPU-bound rate* of that variant, same run)
and at every latency of the plan (20, 50, 200 ms; ``--quick``: 50 ms):

* ``sync/1``: a plain ``def`` handler calling ``ctx.call`` with a sync ``httpx.Client``: today's
  path, one record at a time (the "before");
* ``async/1``, ``async/default``, ``async/256``: an ``async def`` handler awaiting
  ``ctx.call_async`` with an ``httpx.AsyncClient`` created lazily per running loop, at
  ``max_in_flight`` 1, the engine's default (``DEFAULT_MAX_IN_FLIGHT``) and 256.

A variant the engine of this commit cannot run (no async handlers, no ``max_in_flight``) is
reported as not measured, with the reason. 6 partitions, one worker (in this process), a fresh
consumer group per case over one pre-loaded topic. Events/s = handler completions in a fixed
window that opens ``warmup_s`` after the first completion (group join, first fetch and the
connection pool's growth are not measured), beside the ideal ``min(max_in_flight / latency, the
CPU-bound rate)`` (benchmarks/report.py). Target: at 50 ms and 256 in flight ≥ 0.8× the ideal.

The full run also measures the whole commerce flow (benchmarks/flow.py) with the PSP as a process
at 50 ms latency: orders/s and flow time p50/p95/p99 of whatever payments agent this commit has.

    .venv/bin/python benchmarks/io_bound.py --bootstrap HOST:PORT [--quick] [--no-flow] [--json F]
    .venv/bin/python benchmarks/io_bound.py --bootstrap HOST:PORT --only-flow     # the flow part alone
    .venv/bin/python benchmarks/io_bound.py serve [--port 0]                      # the latency server alone

`benchmarks/run.py` runs it as its ``io`` section and writes the section "I/O-bound agents: latest
`make bench` run" of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import report  # noqa: E402
import workload  # noqa: E402

from processors.runtime import App, Context, Worker, WorkerOptions  # noqa: E402
from processors.runtime.dependencies import DependencyPolicy  # noqa: E402
from processors.settings import Settings  # noqa: E402

AGENT = "io"
DEPENDENCY = "latency"
# A backstop only: no call of the plan comes near it. No bulkhead or rate limit: the agent's
# max_in_flight is the only bound measured here.
POLICY = DependencyPolicy(timeout_s=10.0)
SECTION = "## I/O-bound agents: latest `make bench` run"
_LISTENING = re.compile(rb"latency listening on (http://\S+)")
MAX_LATENCY_MS = 10_000.0


def log_stderr(message: str) -> None:
    print(f"[io {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================ plan
@dataclass(frozen=True)
class Variant:
    """A handler kind and its ``max_in_flight`` (None: the engine's default)."""

    name: str
    handler: str  # "sync" (ctx.call) or "async" (ctx.call_async)
    max_in_flight: int | None
    client: str | None = None  # an async handler's HTTP client; None: the plan's


SYNC_1 = Variant("sync/1", "sync", 1)
ASYNC_1 = Variant("async/1", "async", 1)
ASYNC_DEFAULT = Variant("async/default", "async", None)
ASYNC_256 = Variant("async/256", "async", 256)
# the same on httpx's AsyncClient (the client the commerce agents use): what the client costs
ASYNC_256_HTTPX = Variant("async/256 httpx", "async", 256, client="httpx")


@dataclass
class IoPlan:
    latencies_ms: list[float]
    variants: list[Variant]
    window_s: float  # the measured window of one case
    warmup_s: float  # from the first completion to the window's start
    events: int  # pre-loaded: enough for the fastest case's warm-up and window
    partitions: int = 6
    keys: int = 10_000
    batch: int = 500
    # a poll's batch is cut short past this: a stop would otherwise wait for the rest of a sync
    # handler's batch (500 records × 50 ms = 25 s) before the next case can start
    max_batch_s: float = 1.0
    guarantee: str = "exactly_once"
    # The async handlers' HTTP client: aiohttp, since httpx's AsyncClient serves 50–250 requests/s
    # with 256 waiting on it whatever the latency (benchmarks/RESULTS.md): it would measure itself.
    async_client: str = "aiohttp"
    start_timeout_s: float = 90.0  # worker start to its first completion
    flow: bool = True  # the commerce flow with the PSP at flow_psp_latency_ms
    flow_psp_latency_ms: float = 50.0
    flow_burst: int = 800
    flow_seconds: float = 30.0
    flow_loads: list[float] = field(default_factory=lambda: [0.5])

    @classmethod
    def make(cls, quick: bool) -> IoPlan:
        if quick:  # ~80 s: 50 ms only, three variants, short windows, no flow
            return cls([50.0], [SYNC_1, ASYNC_DEFAULT, ASYNC_256], window_s=4.0, warmup_s=1.0, events=15_000,
                       flow=False)  # fmt: skip
        return cls([20.0, 50.0, 200.0], [SYNC_1, ASYNC_1, ASYNC_DEFAULT, ASYNC_256, ASYNC_256_HTTPX], window_s=8.0,
                   warmup_s=2.0,
                   events=40_000)  # fmt: skip


def parse_variants(text: str) -> list[Variant]:
    """``sync/1,async/default,async/64`` → variants (``--variants``, e.g. to sweep max_in_flight)."""
    out = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        handler, _, bound = name.partition("/")
        if name == SYNC_1.name:
            out.append(SYNC_1)
        elif handler == "async" and bound == "default":
            out.append(ASYNC_DEFAULT)
        elif handler == "async" and bound.isdigit() and int(bound) >= 1:
            out.append(ASYNC_256 if bound == "256" else Variant(name, "async", int(bound)))
        elif name == ASYNC_256_HTTPX.name:
            out.append(ASYNC_256_HTTPX)
        else:
            raise ValueError(f"a variant is sync/1, async/default, async/N or {ASYNC_256_HTTPX.name!r}, got {name!r}")
    return out


# ============================================================================ what this engine can run
def engine_features() -> dict[str, Any]:
    """Whether the engine of this commit runs async handlers (an agent spec that knows it is
    async, a default ``max_in_flight``), takes ``max_in_flight`` per agent and has
    ``ctx.call_async``; and the default."""
    from processors.runtime import agent as agent_module

    default = getattr(agent_module, "DEFAULT_MAX_IN_FLIGHT", None)
    return {
        "async_handlers": hasattr(agent_module.AgentSpec, "is_async") and default is not None,
        "max_in_flight": "max_in_flight" in inspect.signature(App.agent).parameters,
        "call_async": hasattr(Context, "call_async"),
        "default_max_in_flight": default,
    }


def unsupported(variant: Variant, features: dict[str, Any]) -> str | None:
    """Why this engine cannot run ``variant`` (None: it can)."""
    if variant.handler == "async" and not features["async_handlers"]:
        return "this engine has no async handlers"
    if variant.handler == "async" and variant.max_in_flight is not None and not features["max_in_flight"]:
        return "this engine takes no max_in_flight per agent"
    return None


def effective_in_flight(variant: Variant, features: dict[str, Any]) -> int | None:
    return features["default_max_in_flight"] if variant.max_in_flight is None else variant.max_in_flight


# ============================================================================ the latency server
def serve(host: str = "127.0.0.1", port: int = 0) -> None:
    """``POST /v1/calls?latency_ms=L`` answers after L ms (at most 10 s) and counts the call and
    its Idempotency-Key; ``GET /v1/stats`` the counts (calls, keys seen again); ``POST /v1/reset``
    zeroes them; ``GET /healthz``. Prints its URL once it listens; serves until SIGTERM/SIGINT.
    No request content is logged."""
    from aiohttp import web

    calls = {"requests": 0, "repeated_keys": 0}
    keys: set[str] = set()

    async def call(request: web.Request) -> web.Response:
        try:
            latency = min(max(float(request.query.get("latency_ms", "0")), 0.0), MAX_LATENCY_MS)
        except ValueError:
            return web.json_response({"error": "latency_ms must be a number"}, status=400)
        key = request.headers.get("Idempotency-Key", "")[:255]
        if latency:
            await asyncio.sleep(latency / 1000)
        calls["requests"] += 1
        replayed = bool(key) and key in keys
        if replayed:
            calls["repeated_keys"] += 1
        elif key:
            keys.add(key)
        return web.json_response({"ok": True, "replayed": replayed})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({**calls, "distinct_keys": len(keys)})

    async def reset(_request: web.Request) -> web.Response:
        # every case replays the same input through an agent of the same name: the same call keys
        calls.update(requests=0, repeated_keys=0)
        keys.clear()
        return web.json_response({"ok": True})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def main() -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/calls", call),
                web.get("/v1/stats", stats),
                web.post("/v1/reset", reset),
                web.get("/healthz", health),
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # a deep backlog: 256 connections opened at once must all be accepted, none reset
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        bound = runner.addresses[0]
        sys.stdout.write(f"latency listening on http://{bound[0]}:{bound[1]}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


@dataclass
class LatencyServer:
    url: str
    process: subprocess.Popen[bytes]

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(self.url + "/v1/stats", timeout=10).json())

    def reset(self) -> None:
        httpx.post(self.url + "/v1/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_latency_server(log_path: Path, timeout: float = 30.0) -> LatencyServer:
    """The latency server as a process of its own; returns once it listens."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = _LISTENING.search(log_path.read_bytes())
        if found:
            return LatencyServer(found.group(1).decode(), process)
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait()
    tail = log_path.read_bytes()[-600:].decode("utf-8", "replace")
    raise RuntimeError(f"the latency server did not start (exit {process.returncode}): {tail}")


# ============================================================================ the agent under test
ASYNC_CLIENTS = ("httpx", "aiohttp")


class LatencyClient:
    """The dependency's client: a sync ``httpx.Client`` for ``ctx.call`` and, for
    ``ctx.call_async``, one ``httpx.AsyncClient`` (or, with ``async_client="aiohttp"``, one
    ``aiohttp.ClientSession``) per running event loop, created on first use from that loop (its
    connections belong to the loop that opened them; a replaced agent session runs on a new loop).

    Why aiohttp as a choice: httpx's AsyncClient costs more per request the more connections it
    holds (httpcore's pool re-checks every connection when it hands one out; encode/httpx#3215),
    so at 64–256 in flight it can be the bottleneck instead of the engine."""

    def __init__(self, url: str, latency_ms: float, connections: int, async_client: str = "httpx") -> None:
        if async_client not in ASYNC_CLIENTS:
            raise ValueError(f"async_client must be one of {ASYNC_CLIENTS}, got {async_client!r}")
        self.url = url
        self.path = f"/v1/calls?latency_ms={latency_ms:g}"
        self.connections = connections
        self.async_client = async_client
        self.limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._sync: httpx.Client | None = None
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}
        self._sessions: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        self._lock = threading.Lock()

    def call(self, idempotency_key: str = "") -> None:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = httpx.Client(base_url=self.url, limits=self.limits, timeout=30.0)
        self._sync.post(self.path, headers={"Idempotency-Key": idempotency_key}).raise_for_status()

    async def call_async(self, idempotency_key: str = "") -> None:
        loop = asyncio.get_running_loop()
        headers = {"Idempotency-Key": idempotency_key}
        if self.async_client == "aiohttp":
            async with self._session_for(loop).post(self.url + self.path, headers=headers) as answer:
                answer.raise_for_status()
                await answer.read()
            return
        response = await self._client_for(loop).post(self.path, headers=headers)
        response.raise_for_status()

    def _session_for(self, loop: asyncio.AbstractEventLoop) -> Any:
        import aiohttp

        entry = self._sessions.get(id(loop))
        if entry is None or entry[0] is not loop:
            connector = aiohttp.TCPConnector(limit=self.connections)
            entry = (loop, aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)))
            self._sessions[id(loop)] = entry
        return entry[1]

    def _client_for(self, loop: asyncio.AbstractEventLoop) -> httpx.AsyncClient:
        entry = self._async.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = (loop, httpx.AsyncClient(base_url=self.url, limits=self.limits, timeout=30.0))
            self._async[id(loop)] = entry
        return entry[1]

    def close(self) -> None:
        """Close the sync client; an AsyncClient is closed on its own loop while that still runs
        (a stopped session's loop is gone: its sockets are closed with it)."""
        if self._sync is not None:
            self._sync.close()
        for loop, client in [*self._async.values(), *self._sessions.values()]:
            closed = False
            if loop.is_running() and not loop.is_closed():
                with contextlib.suppress(Exception):
                    aclose = client.aclose if isinstance(client, httpx.AsyncClient) else client.close
                    asyncio.run_coroutine_threadsafe(aclose(), loop).result(5)
                    closed = True
            if not closed and not isinstance(client, httpx.AsyncClient):
                # its loop is gone, and its sockets with it: mark the session closed from a loop of
                # our own (else aiohttp prints every pooled connection as "unclosed" when collected)
                with contextlib.suppress(Exception):
                    asyncio.run(client.close())
        self._async.clear()
        self._sessions.clear()


class Completions:
    """When each handling ended (monotonic clock), from any thread; ``first`` is set at the first,
    ``exhausted`` once ``limit`` are done."""

    def __init__(self, limit: int) -> None:
        self.times: list[float] = []
        self.limit = limit
        self.first = threading.Event()
        self.exhausted = threading.Event()

    def done(self) -> None:
        self.times.append(time.monotonic())  # list.append is atomic
        self.first.set()
        if len(self.times) >= self.limit:
            self.exhausted.set()


def _record(event: Any, ctx: Any) -> None:
    """The workload's work (workload.build_app): per-key totals and an ``order.confirmed``."""
    order = event.value
    state = ctx.state
    state["orders"] = state.get("orders", 0) + 1
    state["total_minor"] = state.get("total_minor", 0) + order["total_minor"]
    ctx.emit(
        workload.OUTPUT_TYPE,
        event.key,
        {
            "order_id": order["order_id"],
            "total_minor": order["total_minor"],
            "currency": order["currency"],
            "confirmed_at": int(time.time() * 1000),
        },
    )


def build_app(
    app_id: str,
    contracts: Path,
    schemas: Path,
    variant: Variant,
    client: LatencyClient,
    completions: Completions,
    call_async: bool = True,
) -> App:
    """The workload's agent with one call to the latency server per event, before its work. An
    async handler awaits ``ctx.call_async``, or, on an engine without it (``call_async=False``),
    the client itself with the input's idempotency key: the engine's concurrency without the
    dependency's machinery."""
    app = App(app_id, contracts_dir=contracts, schemas_dir=schemas)
    declare: dict[str, Any] = {
        "consumes": [workload.INPUT_TYPE],
        "produces": [workload.OUTPUT_TYPE],
        "version": "1",
        "routing": "key",
        "dependencies": {DEPENDENCY: POLICY},
    }
    if variant.handler == "sync":

        def io_sync(event: Any, ctx: Any) -> None:
            ctx.call(DEPENDENCY, client.call)
            _record(event, ctx)
            completions.done()

        app.agent(AGENT, **declare)(io_sync)
        return app

    if variant.max_in_flight is not None:
        declare["max_in_flight"] = variant.max_in_flight

    async def io_async(event: Any, ctx: Any) -> None:
        await ctx.call_async(DEPENDENCY, client.call_async)
        _record(event, ctx)
        completions.done()

    async def io_direct(event: Any, ctx: Any) -> None:
        await client.call_async(idempotency_key=event.idempotency_key)
        _record(event, ctx)
        completions.done()

    # the Handler type of an engine without async handlers says "returns None"
    app.agent(AGENT, **declare)(cast(Any, io_async if call_async else io_direct))
    return app


# ============================================================================ one case
@dataclass
class Bench:
    """The pre-loaded input, the contracts and the latency server every case shares."""

    bootstrap: str
    prefix: str
    workdir: Path
    server: LatencyServer
    load: dict[str, Any]

    @property
    def contracts(self) -> tuple[Path, Path]:
        return self.workdir / "contracts", self.workdir / "schemas"


def prepare(bootstrap: str, root: Path, plan: IoPlan, say: Callable[[str], None]) -> Bench:
    prefix = "benchio" + uuid.uuid4().hex[:6]
    workdir = root / prefix
    workload.write_contracts(workdir, prefix, plan.partitions)
    spec = loadgen.LoadSpec(workload.topics(prefix)["input"], plan.events, plan.partitions, plan.keys)
    say(f"io: pre-loading {spec.describe()}")
    load = loadgen.preload(bootstrap, spec, recreate=True)
    server = start_latency_server(workdir / "latency-server.log")
    say(f"io: latency server at {server.url}")
    return Bench(bootstrap, prefix, workdir, server, load)


def run_case(bench: Bench, variant: Variant, latency_ms: float, plan: IoPlan, features: dict[str, Any]) -> dict:
    """One variant at one call latency: a fresh worker and group over the pre-loaded topic."""
    in_flight = effective_in_flight(variant, features)
    case: dict[str, Any] = {
        "variant": variant.name,
        "handler": variant.handler,
        "max_in_flight": in_flight,
        "latency_ms": latency_ms,
        "call": "ctx.call" if variant.handler == "sync" else "ctx.call_async" if features["call_async"] else "direct",
        "client": "httpx" if variant.handler == "sync" else variant.client or plan.async_client,
        "events_per_s": None,
    }
    reason = unsupported(variant, features)
    if reason:
        return {**case, "skipped": reason}
    completions = Completions(plan.events)
    client = LatencyClient(bench.server.url, latency_ms, (in_flight or 1) + 4, case["client"])
    app_id = f"{bench.prefix}-{variant.handler}{in_flight}-{int(latency_ms)}-{uuid.uuid4().hex[:4]}"
    contracts, schemas = bench.contracts
    app = build_app(app_id, contracts, schemas, variant, client, completions, features["call_async"])
    settings = Settings(
        bootstrap_servers=bench.bootstrap, state_dir=bench.workdir / "state" / app_id,
        processing_guarantee=plan.guarantee,
    )  # fmt: skip
    bench.server.reset()
    worker = Worker(app, settings, agents=[AGENT], worker_id="bench-io", guarantee=plan.guarantee,
                    options=WorkerOptions(batch_size=plan.batch, max_batch_s=plan.max_batch_s))  # fmt: skip
    started = time.monotonic()
    worker.start()
    try:
        problem = wait_first(worker, completions, plan.start_timeout_s)
        if problem:
            return {**case, "error": problem}
        first = completions.times[0]
        start, end = first + plan.warmup_s, first + plan.warmup_s + plan.window_s
        completions.exhausted.wait(max(0.0, end - time.monotonic()))
    finally:
        worker.stop()
        worker.join(60)
        client.close()
    times = list(completions.times)
    calls = bench.server.stats()
    rate, window = report.io_window_rate(times, start, end, completions.exhausted.is_set())
    case.update(
        events_per_s=rate,
        window_s=window,
        completed=len(times),
        exhausted=completions.exhausted.is_set(),
        start_to_first_s=round(first - started, 2),
        load_average=round(os.getloadavg()[0], 1),  # the machine is shared: say how busy it was
        calls=calls["requests"],
        repeated_keys=calls["repeated_keys"],  # a handling called twice with one key: a replay
    )
    if rate is None:
        case["error"] = f"the input ran out within the warm-up ({len(times)} events)"
    elif case["calls"] < len(times):
        case["error"] = f"{len(times)} handlings but {case['calls']} calls reached the latency server"
    return case


def wait_first(worker: Worker, completions: Completions, timeout_s: float) -> str | None:
    """Wait for the first completion; what went wrong when none came: the worker failed, or it
    handled records without running the handler to its end (a worker that does not await an
    async handler), or nothing at all within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not completions.first.wait(0.5):
        if worker.errors:
            return "the worker failed: " + "; ".join(repr(e)[:200] for e in worker.errors)
        handled = sum(getattr(r, "handled", 0) for r in worker.runners)
        if handled >= 50:
            return f"the worker handled {handled} records but no handler completed (async handlers not awaited?)"
        if time.monotonic() > deadline:
            return f"no event handled within {timeout_s:.0f} s"
    return None


def measure(bench: Bench, plan: IoPlan, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every variant at 0 ms (its CPU-bound rate) and at each latency of the plan."""
    features = engine_features()
    cases: list[dict[str, Any]] = []
    for variant in plan.variants:
        if variant is ASYNC_256 and features["default_max_in_flight"] == 256 and ASYNC_DEFAULT in plan.variants:
            continue  # the default is 256: the same case
        for latency in [0.0, *plan.latencies_ms]:
            case = run_case(bench, variant, latency, plan, features)
            cases.append(case)
            say(f"io: {variant.name:13s} at {latency:>5g} ms: " + _describe(case))
    return cases


def _describe(case: dict[str, Any]) -> str:
    if case.get("skipped"):
        return f"not measured ({case['skipped']})"
    if case.get("error"):
        return f"FAILED: {case['error']}"
    return (
        f"{case['events_per_s']:,.0f} events/s (max_in_flight {case['max_in_flight']}, "
        f"{case['completed']:,} handled, {case['calls']:,} calls, first after {case['start_to_first_s']} s)"
    )


# ============================================================================ the commerce flow, PSP at 50 ms
@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in this process's environment for the block: flow.py hands its environment to
    the worker it starts (the PSP's and the sink's URLs)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def payments_agent() -> dict[str, Any]:
    """What kind of payments agent this commit has (the flow's "before" or "after")."""
    from processors.agents.app import CommerceConfig
    from processors.agents.app import build_app as commerce_app

    spec = commerce_app(CommerceConfig(app_id="probe")).agents["payments"]
    return {
        "handler": "async" if inspect.iscoroutinefunction(spec.handler) else "sync",
        "max_in_flight": getattr(spec, "max_in_flight", None),
    }


def commerce_flow(bootstrap: str, plan: IoPlan, root: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """benchmarks/flow.py (one worker process) with the PSP and the delivery sink as processes, the
    PSP answering after ``plan.flow_psp_latency_ms``; the PSP's ledger checked for double charges."""
    import flow as flow_bench

    from processors.services.process import start_commerce_services

    agent = payments_agent()
    say(f"io: commerce flow with the PSP at {plan.flow_psp_latency_ms:g} ms ({agent['handler']} payments agent)")
    # a ledger of its own: everything on it is this run's
    services_dir = root / f"io-flow-services-{uuid.uuid4().hex[:6]}"
    services = start_commerce_services(services_dir, psp_latency_ms=plan.flow_psp_latency_ms)
    flow_plan = argparse.Namespace(
        flow_burst=plan.flow_burst, flow_seconds=plan.flow_seconds, flow_loads=list(plan.flow_loads),
        flow_sustain_seconds=0, commit_interval_ms=None,
    )  # fmt: skip
    try:
        with environ(services.env):
            result = flow_bench.run(bootstrap, flow_plan, root, say)
        ledger = httpx.get(services.psp.url + "/v1/ledger", timeout=60).json()
    finally:
        services.stop()
    summary = ledger.get("summary", {})
    result.update(
        psp_latency_ms=plan.flow_psp_latency_ms,
        payments=agent,
        psp_charges=summary.get("charges"),
        psp_approved=summary.get("approved"),
        psp_double_charges=len(summary.get("double_charges") or {}),
        psp_refunds_without_charge=len(summary.get("refunds_without_charge") or []),
    )
    return result


# ============================================================================ the section
def bench(bootstrap: str, plan: IoPlan, root: Path, say: Callable[[str], None], flow: bool = True) -> dict:
    """Measure; a failure is reported, not raised (the other sections of `make bench` stand)."""
    result: dict[str, Any] = {"status": "ok", "plan": asdict(plan), "features": engine_features()}
    try:
        bench_env = prepare(bootstrap, root, plan, say)
        try:
            result["load"] = bench_env.load
            result["cases"] = measure(bench_env, plan, say)
        finally:
            bench_env.server.stop()
            delete_topics(bootstrap, bench_env.prefix)
        result["rows"] = report.io_rows(result["cases"])
        result["target"] = report.io_target(result["rows"])
    except Exception as exc:  # noqa: BLE001 - keep the rest of the report
        say(f"io failed: {exc!r}")
        result.update(status="failed", reason=repr(exc)[:300])
    if plan.flow and flow:
        try:
            result["flow"] = commerce_flow(bootstrap, plan, root, say)
        except Exception as exc:  # noqa: BLE001
            say(f"io flow failed: {exc!r}")
            result["flow"] = {"status": "failed", "reason": repr(exc)[:300]}
    return result


def delete_topics(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=15).topics if t.startswith((prefix + ".", prefix + "-"))]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(30)


def section(result: dict[str, Any], command: str) -> str:
    """The RESULTS.md section of one run."""
    parts = [SECTION, ""]
    plan = result.get("plan", {})
    feats = result.get("features", {})
    parts.append(
        f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): one worker, "
        f"{plan.get('partitions')} partitions, {plan.get('guarantee')}, the workload's agent plus one call per "
        f"event to the latency server (aiohttp, its own process), async handlers on the HTTP client named in "
        f"their row (an `aiohttp.ClientSession` or an `httpx.AsyncClient`), sync ones on an `httpx.Client`; "
        f"events/s over a {plan.get('window_s', 0):g} s "
        f"window opening {plan.get('warmup_s', 0):g} s after the first event; engine default max_in_flight "
        f"{feats.get('default_max_in_flight') or '—'}"
        + ("." if feats.get("async_handlers") else " (async handlers cannot run on this commit).")
    )
    parts.append("")
    if result.get("status") != "ok":
        parts.append(f"Not measured ({result.get('status')}): {result.get('reason')}.")
    else:
        parts.append(report.io_table(result["rows"]))
        parts.append("")
        notes = []
        if any(r.get("call") == "direct" for r in result["rows"]):
            notes.append("\"direct await\": this commit has no `ctx.call_async`; the handler awaits the client itself "
                         "(the engine's concurrency without the dependency's limits).")  # fmt: skip
        if any((r.get("share") or 0) > 1.05 for r in result["rows"]):
            notes.append("A share above 1× means the variant's 0 ms case ran slower than the same variant with a "
                         "latency: its CPU-bound rate is then no upper bound (a loaded machine, or per-event costs "
                         "that waiting hides).")  # fmt: skip
        if notes:
            parts.append(" ".join(notes))
            parts.append("")
        parts.append(report.io_target_table(result["target"]))
        loads = [c["load_average"] for c in result["cases"] if c.get("load_average") is not None]
        if loads:
            parts.append("")
            parts.append(f"Load average (1 min) at the cases' ends: {min(loads):g}–{max(loads):g} on "
                         f"{os.cpu_count()} cores.")  # fmt: skip
        failed = [c for c in result["cases"] if c.get("error")]
        if failed:
            parts.append("")
            parts.append("Failed cases: " + "; ".join(f"{c['variant']} at {c['latency_ms']:g} ms: "
                                                      f"`{c['error'][:200]}`" for c in failed))  # fmt: skip
    fl = result.get("flow")
    if fl:
        parts.append("")
        if fl.get("status") != "ok":
            parts.append(f"Commerce flow with the PSP at 50 ms: not measured ({fl.get('status')}): {fl.get('reason')}.")
        else:
            pay = fl.get("payments", {})
            parts.append(
                f"Commerce flow (`benchmarks/flow.py`, one worker) with the PSP at {fl['psp_latency_ms']:g} ms, "
                f"{pay.get('handler')} payments agent (max_in_flight "
                f"{pay.get('max_in_flight') or ('the default' if pay.get('handler') == 'async' else 1)}): maximum "
                f"{fl.get('max_orders_per_s', 0):,.1f} orders/s (burst of {fl.get('burst_orders', 0):,}); PSP "
                f"ledger: {fl.get('psp_charges')} charges ({fl.get('psp_approved')} approved), "
                f"{fl.get('psp_double_charges')} double charges, "
                f"{fl.get('psp_refunds_without_charge')} refunds without a charge."
            )
            parts.append("")
            parts.append(report.flow_table(fl.get("points", [])))
    return "\n".join(parts) + "\n"


def write_section(results_md: Path, result: dict[str, Any], command: str) -> None:
    text = results_md.read_text() if results_md.is_file() else "# Benchmark results\n"
    results_md.write_text(report.replace_section(text, section(result, command), heading=SECTION))


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        parser = argparse.ArgumentParser(description="the latency server")
        parser.add_argument("serve")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=0)
        args = parser.parse_args()
        serve(args.host, args.port)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-flow", action="store_true", help="leave out the commerce flow")
    parser.add_argument("--only-flow", action="store_true", help="only the commerce flow with the PSP at 50 ms")
    parser.add_argument("--guarantee", choices=["exactly_once", "at_least_once"])
    parser.add_argument("--variants", type=parse_variants, help="e.g. sync/1,async/default,async/16,async/256")
    parser.add_argument("--latencies", help="call latencies in ms, e.g. 20,50,200")
    parser.add_argument("--async-client", choices=ASYNC_CLIENTS, help="the async handlers' HTTP client (aiohttp)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/choreo-bench-io"))
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--results-md", type=Path, default=None, help="write the RESULTS.md section here")
    args = parser.parse_args()
    plan = IoPlan.make(args.quick)
    if args.guarantee:
        plan.guarantee = args.guarantee
    if args.variants:
        plan.variants = args.variants
    if args.async_client:
        plan.async_client = args.async_client
    if args.latencies is not None:  # "" for none: the 0 ms cases alone
        plan.latencies_ms = [float(x) for x in args.latencies.split(",") if x.strip()]
    args.root.mkdir(parents=True, exist_ok=True)
    if args.only_flow:
        result: dict[str, Any] = {"status": "flow only", "flow": commerce_flow(args.bootstrap, plan, args.root,
                                                                               log_stderr)}  # fmt: skip
    else:
        result = bench(args.bootstrap, plan, args.root, log_stderr, flow=not args.no_flow)
    out = json.dumps(result, indent=1, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(out + "\n")
    if args.results_md and not args.only_flow:
        write_section(args.results_md, result, " ".join(["benchmarks/io_bound.py", *sys.argv[1:]]))
    print(out)
    return 0 if result.get("status") in ("ok", "flow only") else 1


if __name__ == "__main__":
    sys.exit(main())
