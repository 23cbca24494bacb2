"""`benchmarks/flow.py`: with `--rates`, every point publishes orders of its own (a rate given twice
once reused the first point's order ids, so the second point read the first one's terminal
events); each point says where its slowest orders are."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import flow  # noqa: E402


def test_a_rate_given_twice_publishes_new_orders(monkeypatch):
    run_ids: list[str] = []

    def offer(
        bootstrap: str, created: Any, terminals: Any, rate: float, seconds: float, run_id: str, cpu=None, requests=None
    ):
        run_ids.append(run_id)
        sent = {f"{run_id}{i}": 1_000 + i for i in range(3)}
        return sent, {o: t + 50 for o, t in sent.items()}, {"events_per_s": rate}

    monkeypatch.setattr(flow, "_offer", offer)
    monkeypatch.setattr(flow, "wait_settled", lambda *a, **k: True)
    terminals = type("T", (), {"produced": {}, "outcome": {}})()
    unused = cast(Any, None)  # settings, app and the topic: only the stubbed calls above take them
    result = flow._fixed_rates("b", unused, unused, unused, terminals, [130.0, 130.0], 1.0, "app", lambda _: None)
    points = run_ids[1:]  # the first is the warm-up
    assert len(points) == 2 and len(set(points)) == 2, run_ids
    assert [p["rate"] for p in result["points"]] == [130.0, 130.0]
    assert all(p["p50_ms"] == 50 for p in result["points"])


def test_the_tail_breakdown_places_the_slowest_orders_in_their_quarter_and_outcome():
    sent = {f"o{i}": i * 100 for i in range(40)}  # published over 3.9 s
    done = {o: t + 50 for o, t in sent.items()}
    done["o1"] += 5_000  # one slow order in the first quarter, one in the last
    done["o38"] += 3_000
    outcome = {o: "order.confirmed" for o in sent} | {"o38": "order.cancelled"}
    tail = flow.tail_breakdown(sent, done, outcome)
    assert tail["over_ms"] == 50
    assert tail["by_quarter"] == [1, 0, 0, 1]
    assert tail["by_outcome"] == {"order.confirmed": 1, "order.cancelled": 1}
    assert "by quarter [1, 0, 0, 1]" in flow.describe_tail(tail)
    assert flow.tail_breakdown({}, {}, {})["by_quarter"] == [0, 0, 0, 0]


class _Meter:
    """Hands out the broker's JIT cores of each warm-up round in turn."""

    def __init__(self, jit: list[float | None]) -> None:
        self.jit = iter(jit)

    def snapshot(self) -> None:
        return None

    def between(self, start: Any, end: Any, orders: int) -> dict[str, Any]:
        return {"broker_jit_cores": next(self.jit)}


def _warm(monkeypatch, jit: list[float | None], orders: int = 10) -> dict[str, Any]:
    def burst(bootstrap: str, topic: str, partitions: int, n: int, run_id: str) -> dict[str, int]:
        return {f"{run_id}{i}": i for i in range(n)}

    def offer(
        bootstrap: str, created: Any, terminals: Any, rate: float, seconds: float, run_id: str, cpu=None, requests=None
    ):
        sent = {f"{run_id}{i}": i for i in range(4)}
        return sent, sent, {"events_per_s": rate}

    monkeypatch.setattr(flow, "_publish_burst", burst)
    monkeypatch.setattr(flow, "_offer", offer)
    monkeypatch.setattr(flow, "wait_settled", lambda *a, **k: True)
    terminals = cast(Any, type("T", (), {"wait": lambda self, ids, timeout: dict.fromkeys(ids, 1)})())
    created = cast(Any, type("C", (), {"topic": "t", "partitions": 3})())
    unused = cast(Any, None)
    meter = cast(Any, _Meter(jit))
    return flow.warm_broker("b", unused, unused, created, terminals, meter, "app", lambda _: None, orders)


def test_the_broker_warm_up_runs_until_its_compiler_threads_go_quiet(monkeypatch):
    result = _warm(monkeypatch, [0.45, 0.2, 0.09, 0.0])
    assert result["warm"] is True
    assert [r["cpu"]["broker_jit_cores"] for r in result["rounds"]] == [0.45, 0.2, 0.09]
    assert all(r["orders"] == r["completed"] == 10 + 4 for r in result["rounds"])  # the burst, then paced


def test_the_broker_warm_up_is_bounded_and_says_when_it_could_not_tell(monkeypatch):
    busy = _warm(monkeypatch, [0.3] * (flow.WARM_ROUNDS + 5))
    assert busy["warm"] is False and len(busy["rounds"]) == flow.WARM_ROUNDS
    unreadable = _warm(monkeypatch, [None, None])  # the broker's threads not readable: one round
    assert unreadable["warm"] is False and len(unreadable["rounds"]) == 1
    assert _warm(monkeypatch, [], orders=0) == {"warm": False, "jit_cores_threshold": flow.WARM_JIT_CORES, "rounds": []}


def _search(capacity: float) -> tuple[float | None, list[float]]:
    probed: list[float] = []

    def holds(share: float) -> bool:
        probed.append(share)
        return share <= capacity

    return flow.search_shares(holds), probed


def test_the_sustained_search_bisects_below_a_start_that_grows():
    assert _search(0.43) == (0.4, [0.9, 0.4, 0.6, 0.5])  # stepping down took six probes
    assert _search(0.85) == (0.8, [0.9, 0.4, 0.6, 0.7, 0.8])
    assert _search(0.05) == (None, [0.9, 0.4, 0.2, 0.1])


def test_the_sustained_search_climbs_from_a_start_that_holds_up_to_its_top():
    assert _search(1.0) == (1.0, [0.9, 1.0, 1.1])
    assert _search(5.0) == (1.1, [0.9, 1.0, 1.1])
