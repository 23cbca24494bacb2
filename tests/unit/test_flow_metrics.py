"""Flow-time metrics: the e2e histogram per agent and the flow-time histogram at terminal outputs,
on the metrics exposition, and the terminal declaration checked against what an agent produces."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from processors.runtime import App
from processors.runtime.agent import AgentSpec
from processors.runtime.app import AppError
from processors.runtime.metrics import AgentMetrics


def _sample(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not exposed")


def test_e2e_and_flow_time_are_exposed() -> None:
    metrics = AgentMetrics("flowmetrics-agent")
    metrics.record_e2e(0.03)
    metrics.record_e2e(-1.0)  # a producer clock ahead of ours counts as 0
    metrics.flow_time("order.confirmed", 0.4)
    text = generate_latest().decode()
    assert _sample(text, "choreo_record_e2e_seconds_count", 'agent="flowmetrics-agent"') == 0, "published per batch"
    metrics.flush()
    text = generate_latest().decode()
    assert _sample(text, "choreo_record_e2e_seconds_count", 'agent="flowmetrics-agent"') == 2
    assert _sample(text, "choreo_record_e2e_seconds_bucket", 'agent="flowmetrics-agent",le="0.005"') == 1
    assert _sample(text, "choreo_record_e2e_seconds_bucket", 'agent="flowmetrics-agent",le="0.05"') == 2
    labels = 'agent="flowmetrics-agent",event_type="order.confirmed",le="0.5"'
    assert _sample(text, "choreo_flow_seconds_bucket", labels) == 1


def test_terminal_outputs_must_be_produced() -> None:
    app = App("terminal-test")
    with pytest.raises(AppError, match="terminal"):
        app.add_agent(AgentSpec("a", ("x.y",), ("z.w",), handler=lambda e, c: None, terminal=frozenset({"q.r"})))

    @app.agent("b", consumes=["x.y"], produces=["z.w"], terminal=["z.w"])
    def b(event, ctx) -> None:
        return None

    assert app.agents["b"].terminal == frozenset({"z.w"})
