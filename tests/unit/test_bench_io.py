"""The I/O-bound benchmark's pure parts (benchmarks/io_bound.py, report.py's io_* functions): the
window rate, the ideal min(max_in_flight / latency, CPU-bound rate), the rows and the target, the
RESULTS.md section, which variants an engine can run, and the per-loop async client."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import io_bound  # noqa: E402
import report  # noqa: E402


def case(variant: str, latency: float, rate: float | None, in_flight: int | None, **extra: object) -> dict:
    handler = "sync" if variant.startswith("sync") else "async"
    return {"variant": variant, "handler": handler, "max_in_flight": in_flight, "latency_ms": latency,
            "events_per_s": rate, **extra}  # fmt: skip


CASES = [
    case("sync/1", 0, 640.0, 1),
    case("sync/1", 50, 18.0, 1),
    case("async/64", 0, 2000.0, 64),
    case("async/64", 50, 1200.0, 64),
    case("async/256", 0, 1800.0, 256),
    case("async/256", 50, 1500.0, 256),
    case("async/256", 200, 1200.0, 256),
]


def test_window_rate_counts_the_completions_inside_the_window() -> None:
    times = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 10.0]
    rate, window = report.io_window_rate(times, 1.0, 3.0)
    assert window == 2.0
    assert rate == 4 / 2.0  # 1.5, 2.0, 2.5, 3.0: (start, end]


def test_window_rate_ends_at_the_last_completion_when_the_input_ran_out() -> None:
    rate, window = report.io_window_rate([0.5, 1.0, 1.5, 2.0], 1.0, 5.0, exhausted=True)
    assert window == 1.0 and rate == 2.0
    assert report.io_window_rate([0.5, 1.0, 1.5, 2.0], 1.0, 5.0) == (0.5, 4.0)  # stopped on time: the full window
    assert report.io_window_rate([0.1, 0.2], 1.0, 5.0, exhausted=True) == (None, 0.0)  # ran out in the warm-up
    assert report.io_window_rate([], 1.0, 5.0) == (0.0, 4.0)  # nothing at all: 0 events/s, not a crash


@pytest.mark.parametrize(
    ("in_flight", "latency", "cpu", "ideal"),
    [
        (1, 50, 640.0, 20.0),  # one call at a time: 1 / 50 ms
        (256, 50, 1800.0, 1800.0),  # 5,120/s of calls, but the CPU does 1,800/s
        (256, 200, 1800.0, 1280.0),
        (64, 20, 10_000.0, 3200.0),
        (256, 0, 1800.0, 1800.0),  # no latency: the CPU-bound rate itself
        (256, 50, None, None),  # no CPU-bound rate measured: no ideal
        (None, 50, 1800.0, None),  # unknown in-flight bound
    ],
)
def test_ideal(in_flight: int | None, latency: float, cpu: float | None, ideal: float | None) -> None:
    value = report.io_ideal(in_flight, latency, cpu)
    if ideal is None:
        assert value is None
    else:
        assert value == pytest.approx(ideal)


def test_rows_put_each_case_beside_its_own_variants_cpu_bound_rate() -> None:
    rows = {(r["variant"], r["latency_ms"]): r for r in report.io_rows(CASES)}
    assert set(rows) == {("sync/1", 50), ("async/64", 50), ("async/256", 50), ("async/256", 200)}  # no 0 ms rows
    sync = rows[("sync/1", 50)]
    assert (sync["cpu_rate"], sync["ideal"], sync["share"]) == (640.0, 20.0, pytest.approx(0.9))
    assert rows[("async/64", 50)]["ideal"] == 1280.0  # 64 / 50 ms < 2,000/s
    assert rows[("async/256", 50)]["share"] == pytest.approx(1500 / 1800)
    assert rows[("async/256", 200)]["ideal"] == 1280.0


def test_a_failed_or_skipped_case_has_no_rate_and_says_why() -> None:
    cases = [
        case("async/256", 0, 1800.0, 256),
        case("async/256", 50, 1700.0, 256, error="the input ran out within the warm-up (3 events)"),
        case("async/1", 0, None, 1, skipped="this engine has no async handlers (ctx.call_async)"),
        case("async/1", 50, None, 1, skipped="this engine has no async handlers (ctx.call_async)"),
    ]
    rows = report.io_rows(cases)
    assert [r["events_per_s"] for r in rows] == [None, None]
    assert rows[0]["note"].startswith("the input ran out") and rows[1]["note"].startswith("this engine")
    assert rows[1]["ideal"] is None
    table = report.io_table(rows)
    assert "— (the input ran out" in table and "— (this engine has no async handlers" in table


def test_target_is_the_async_row_at_50_ms_and_256_in_flight() -> None:
    target = report.io_target(report.io_rows(CASES))
    assert target["value"] == pytest.approx(1500 / 1800) and target["met"] is True
    slow = [dict(c, events_per_s=1000.0) if (c["variant"], c["latency_ms"]) == ("async/256", 50) else c for c in CASES]
    missed = report.io_target(report.io_rows(slow))
    assert missed["value"] == pytest.approx(1000 / 1800) and missed["met"] is False
    assert "**no**" in report.io_target_table(missed)
    none = report.io_target(report.io_rows(CASES[:4]))  # no 256 case: not measured, neither met nor missed
    assert none["met"] is None and "| — |" in report.io_target_table(none)


def test_table_rows() -> None:
    table = report.io_table(report.io_rows(CASES)).splitlines()
    assert table[0].startswith("| handler | max_in_flight | call latency | events/s |")
    assert table[2] == "| `def` + `ctx.call` | 1 | 50 ms | 18.0 | 640 | 20.0 | 0.90× |"
    assert table[4] == "| `async def` + `ctx.call_async` | 256 | 50 ms | 1,500 | 1,800 | 1,800 | 0.83× |"


def test_section_renders_the_tables_and_replaces_only_its_own_section() -> None:
    result = {
        "status": "ok",
        "plan": {"partitions": 6, "guarantee": "exactly_once", "window_s": 8.0, "warmup_s": 2.0},
        "features": {"default_max_in_flight": 64, "async_handlers": True},
        "cases": CASES,
        "rows": report.io_rows(CASES),
        "target": report.io_target(report.io_rows(CASES)),
    }
    text = io_bound.section(result, "benchmarks/run.py --only io")
    assert text.startswith(io_bound.SECTION + "\n\n`benchmarks/run.py --only io`")
    assert "engine default max_in_flight 64" in text
    assert "| events/s at 50 ms and 256 in flight / ideal | 0.83× (1,500 of 1,800 events/s) | ≥ 0.8× | yes |" in text
    doc = "# Benchmark results\n\n## Other\n\nkept\n"
    once = report.replace_section(doc, text, heading=io_bound.SECTION)
    assert once.startswith(doc) and once.count(io_bound.SECTION) == 1
    assert report.replace_section(once, text, heading=io_bound.SECTION) == once


def test_section_says_why_nothing_was_measured() -> None:
    text = io_bound.section({"status": "failed", "reason": "RuntimeError('no broker')", "plan": {}}, "cmd")
    assert "Not measured (failed): RuntimeError('no broker')." in text
    assert "async handlers cannot run on this commit" in text


def test_variants_an_engine_cannot_run_are_skipped_with_the_reason() -> None:
    old = {"async_handlers": False, "max_in_flight": False, "call_async": False, "default_max_in_flight": None}
    assert io_bound.unsupported(io_bound.SYNC_1, old) is None
    assert "no async handlers" in (io_bound.unsupported(io_bound.ASYNC_DEFAULT, old) or "")
    half = {"async_handlers": True, "max_in_flight": False, "call_async": False, "default_max_in_flight": 64}
    assert io_bound.unsupported(io_bound.ASYNC_DEFAULT, half) is None
    assert "no max_in_flight" in (io_bound.unsupported(io_bound.ASYNC_256, half) or "")
    assert io_bound.effective_in_flight(io_bound.ASYNC_DEFAULT, half) == 64
    assert io_bound.effective_in_flight(io_bound.SYNC_1, half) == 1


def test_quick_plan_fits_its_budget() -> None:
    """make bench-quick gives the io section ≤ 90 s: every case costs a worker start (~2–3 s), the
    warm-up and the window."""
    plan = io_bound.IoPlan.make(quick=True)
    cases = len(plan.variants) * (1 + len(plan.latencies_ms))
    assert not plan.flow and plan.latencies_ms == [50.0]
    assert cases * (3.0 + plan.warmup_s + plan.window_s) <= 75
    full = io_bound.IoPlan.make(quick=False)
    assert full.latencies_ms == [20.0, 50.0, 200.0] and io_bound.ASYNC_256 in full.variants and full.flow


def test_async_client_is_one_per_running_loop() -> None:
    client = io_bound.LatencyClient("http://127.0.0.1:1", 50, connections=4)

    async def which() -> object:
        loop = asyncio.get_running_loop()
        first = client._client_for(loop)
        assert client._client_for(loop) is first  # the same loop reuses its client
        return first

    one, two = asyncio.run(which()), asyncio.run(which())
    assert one is not two  # a new loop (a replaced agent session) gets a client of its own
    client.close()


def test_completions_signal_the_first_and_the_last() -> None:
    done = io_bound.Completions(limit=2)
    assert not done.first.is_set()
    done.done()
    assert done.first.is_set() and not done.exhausted.is_set()
    done.done()
    assert done.exhausted.is_set() and len(done.times) == 2 and done.times[0] <= done.times[1]


def test_variants_from_the_command_line() -> None:
    parsed = io_bound.parse_variants("sync/1, async/default,async/16,async/256,async/256 httpx")
    assert [v.name for v in parsed] == ["sync/1", "async/default", "async/16", "async/256", "async/256 httpx"]
    assert parsed[4].client == "httpx" and parsed[3].client is None
    assert parsed[2] == io_bound.Variant("async/16", "async", 16) and parsed[3] is io_bound.ASYNC_256
    for bad in ("sync/4", "async/0", "async/x", "threads/8"):
        with pytest.raises(ValueError, match="sync/1, async/default, async/N or"):
            io_bound.parse_variants(bad)


class RecordingClient:
    """Stands in for the latency server's client in a pure driver run: records the keys."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def call(self, idempotency_key: str = "") -> None:
        self.keys.append(idempotency_key)

    async def call_async(self, idempotency_key: str = "") -> None:
        await asyncio.sleep(0)
        self.keys.append(idempotency_key)


@pytest.mark.parametrize(
    ("variant", "call_async"), [(io_bound.SYNC_1, False), (io_bound.ASYNC_256, False), (io_bound.ASYNC_256, True)]
)
def test_the_agent_under_test_calls_once_then_does_the_workloads_work(
    tmp_path: Path, variant: io_bound.Variant, call_async: bool
) -> None:
    from processors.agents.loadgen import OrderGenerator
    from processors.runtime import Context
    from processors.runtime.testing import AgentDriver

    if call_async and not hasattr(Context, "call_async"):
        pytest.skip("no ctx.call_async on this commit")
    contracts, schemas = io_bound.workload.write_contracts(tmp_path, "t", 6)
    client = RecordingClient()
    done = io_bound.Completions(limit=2)
    app = io_bound.build_app("t", contracts, schemas, variant, client, done, call_async)  # type: ignore[arg-type]
    driver = AgentDriver(app, io_bound.AGENT)
    orders = OrderGenerator(seed=3)
    first, second = orders.next().value, orders.next().value
    for order in (first, second):
        result = driver.send("order.created", order, key="cust-1", idempotency_key=order["order_id"])
        assert result.outcome == "PROCESSED"
        assert [e.value["order_id"] for e in result.emitted_of("order.confirmed")] == [order["order_id"]]
    assert driver.state("cust-1") == {"orders": 2, "total_minor": first["total_minor"] + second["total_minor"]}
    assert len(client.keys) == 2 and len(set(client.keys)) == 2 and all(client.keys)  # one keyed call per event
    assert done.exhausted.is_set()


def test_the_async_client_is_httpx_or_aiohttp() -> None:
    with pytest.raises(ValueError, match="async_client must be one of"):
        io_bound.LatencyClient("http://127.0.0.1:1", 50, 4, "requests")
    client = io_bound.LatencyClient("http://127.0.0.1:1", 50, 4, "aiohttp")

    async def which() -> object:
        loop = asyncio.get_running_loop()
        session = client._session_for(loop)
        assert client._session_for(loop) is session
        return session

    one, two = asyncio.run(which()), asyncio.run(which())
    assert one is not two  # one session per loop, as the httpx clients
    client.close()  # both loops are gone: closed without them, no "unclosed" noise
    assert getattr(one, "closed", False) and getattr(two, "closed", False)


def test_target_takes_the_async_256_row_not_the_one_on_another_client() -> None:
    cases = [
        case("async/256 httpx", 0, 90.0, 256, client="httpx"),
        case("async/256 httpx", 50, 50.0, 256, client="httpx"),
        case("async/256", 0, 1800.0, 256, client="aiohttp"),
        case("async/256", 50, 1500.0, 256, client="aiohttp"),
    ]
    rows = report.io_rows(cases)
    assert report.io_target(rows)["events_per_s"] == 1500.0
    table = report.io_table(rows)
    assert "| `async def` + `ctx.call_async` (httpx) | 256 | 50 ms | 50.0 | 90.0 | 90.0 | 0.56× |" in table
    assert "| `async def` + `ctx.call_async` (aiohttp) | 256 | 50 ms | 1,500 |" in table
