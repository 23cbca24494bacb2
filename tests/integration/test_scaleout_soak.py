"""The scale-out walk of benchmarks/scaleout.py as a soak test (``make test-soak``): under a paced
commerce load, 1 → 2 → 3 → 2 workers, one SIGKILLed and started again; exactly-once and no loss
must hold through it (`choreo verify`'s ledger: every order terminal exactly once, no duplicate
payment, reservation or notification, audit complete) and every SIGTERM must end a worker with 0.
The pause and flow-time figures are the benchmark's to report, not asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scaleout  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(1200)]


def test_the_scale_out_walk_keeps_exactly_once(kafka_bootstrap, tmp_path):
    plan = scaleout.WalkPlan(rate=15.0, phase_s=15.0, window_s=5.0)
    result = scaleout.run(kafka_bootstrap, plan, tmp_path)
    assert [c["change"] for c in result["changes"]] == ["start w2", "start w3", "stop w3", "kill w1", "restart w1"]
    assert result["orders_offered"] > 0.8 * plan.rate * plan.phase_s * len(plan.steps)
    assert result["orders"] == result["orders_offered"], "an order published in the walk is missing"
    assert result["settled"], "the groups did not catch up after the walk"
    assert result["non_terminal"] == 0
    assert result["violations"] == 0, result["invariant_violations"]
    assert result["audit_completeness"] == 1.0
    assert not result["unexpected_exits"]
    assert result["sigterm_exit_codes"] == [0, 0, 0]  # w3 in the walk, then w2 and w1 at the end
    assert result["exactly_once"]
    kill = result["changes"][3]
    assert kill["failover"]["partitions"] > 0, "the killed worker owned nothing: the walk proved nothing"
