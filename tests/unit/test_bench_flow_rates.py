"""`benchmarks/flow.py --rates`: every point publishes orders of its own. A rate given twice once
reused the first point's order ids, so the second point read the first one's terminal events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import flow  # noqa: E402


def test_a_rate_given_twice_publishes_new_orders(monkeypatch):
    run_ids: list[str] = []

    def offer(bootstrap: str, created: Any, terminals: Any, rate: float, seconds: float, run_id: str):
        run_ids.append(run_id)
        sent = {f"{run_id}{i}": 1_000 + i for i in range(3)}
        return sent, {o: t + 50 for o, t in sent.items()}, {"events_per_s": rate}

    monkeypatch.setattr(flow, "_offer", offer)
    monkeypatch.setattr(flow, "wait_settled", lambda *a, **k: True)
    terminals = type("T", (), {"produced": {}})()
    unused = cast(Any, None)  # settings, app and the topic: only the stubbed calls above take them
    result = flow._fixed_rates("b", unused, unused, unused, terminals, [130.0, 130.0], 1.0, "app", lambda _: None)
    points = run_ids[1:]  # the first is the warm-up
    assert len(points) == 2 and len(set(points)) == 2, run_ids
    assert [p["rate"] for p in result["points"]] == [130.0, 130.0]
    assert all(p["p50_ms"] == 50 for p in result["points"])
