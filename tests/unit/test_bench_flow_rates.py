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

    def offer(bootstrap: str, created: Any, terminals: Any, rate: float, seconds: float, run_id: str, cpu=None):
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
