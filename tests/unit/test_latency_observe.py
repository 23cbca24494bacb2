"""Flow time at terminal outputs for records and fired timers alike (processors/runtime/_latency.py):
a flow that ends by a timer (an order cancelled by its timeout) must reach choreo_flow_seconds too."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from processors.kafka_types import ConsumedRecord
from processors.runtime import App
from processors.runtime._latency import observe_record, observe_terminal
from processors.runtime.metrics import AgentMetrics
from processors.runtime.testing import AgentDriver
from tests.engine.app import CONTRACTS, SCHEMAS


def _app(name: str) -> App:
    app = App(name, contracts_dir=CONTRACTS, schemas_dir=SCHEMAS)

    def on_timer(timer: Any, ctx: Any) -> None:  # the flow's end by timeout
        ctx.emit("counter.total", timer.key, {"name": timer.key, "total": -1, "seq": 0})

    @app.agent(
        "counter",
        consumes=["counter.incremented"],
        produces=["counter.total"],
        terminal=["counter.total"],
        on_timer=on_timer,
    )
    def counter(event: Any, ctx: Any) -> None:
        if event.value["by"] == 1000:  # wait for an answer that never comes
            ctx.schedule_timer("timeout", delay_s=8.0)
            return
        ctx.emit("counter.total", event.key, {"name": event.key, "total": event.value["by"], "seq": 1})

    return app


def _flow(agent: str) -> tuple[float, float]:
    """(count, sum) of choreo_flow_seconds for this agent's counter.total."""
    labels = {"agent": agent, "event_type": "counter.total"}
    count = REGISTRY.get_sample_value("choreo_flow_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("choreo_flow_seconds_sum", labels) or 0.0
    return count, total


class _Record:
    """The part of a consumed record observe_record reads."""

    def __init__(self, ts_ms: int) -> None:
        self._ts = ts_ms

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts  # TIMESTAMP_CREATE_TIME


def test_a_handled_records_terminal_output_is_observed_from_the_root_time() -> None:
    app = _app("latency-record")
    driver = AgentDriver(app, "counter")
    root = driver.envelope("counter.incremented")
    res = driver.send("counter.incremented", {"name": "k", "by": 2}, envelope=root)
    metrics = AgentMetrics("latency-record-agent")
    now = root.flow_root_ms / 1000 + 0.25
    record = cast(ConsumedRecord, _Record(root.flow_root_ms))
    observe_record(metrics, app.agents["counter"].terminal, record, res.raw, now)
    metrics.flush()
    count, total = _flow("latency-record-agent")
    assert count == 1
    assert total == pytest.approx(0.25, abs=0.002)
    e2e = REGISTRY.get_sample_value("choreo_record_e2e_seconds_sum", {"agent": "latency-record-agent"})
    assert e2e == pytest.approx(0.25, abs=0.002)


def test_only_declared_terminal_types_count() -> None:
    app = _app("latency-none")
    driver = AgentDriver(app, "counter")
    res = driver.send("counter.incremented", {"name": "k", "by": 2})
    metrics = AgentMetrics("latency-none-agent")
    assert observe_terminal(metrics, frozenset(), res.raw, time.time()) == 0
    assert observe_terminal(metrics, frozenset({"counter.reset"}), res.raw, time.time()) == 0
    assert _flow("latency-none-agent") == (0.0, 0.0)


def test_a_timer_ended_flow_is_observed() -> None:
    """The timer's HandleResult goes through the same function as a record's: the flow that ended by
    its timeout is counted (before, the worker observed handled records only)."""
    app = _app("latency-timer")
    driver = AgentDriver(app, "counter")
    assert driver.send("counter.incremented", {"name": "k", "by": 1000}).emitted == []
    fired = driver.advance(9.0)
    assert len(fired) == 1
    metrics = AgentMetrics("latency-timer-agent")
    assert observe_terminal(metrics, app.agents["counter"].terminal, fired[0].raw, time.time()) == 1
    assert _flow("latency-timer-agent")[0] == 1


def test_a_timer_ended_flow_is_timed_from_the_flows_root() -> None:
    app = _app("latency-timer-root")
    driver = AgentDriver(app, "counter")
    root = driver.envelope("counter.incremented")
    driver.send("counter.incremented", {"name": "k", "by": 1000}, envelope=root)
    fired = driver.advance(9.0)
    emitted = fired[0].emitted[0]
    assert emitted.envelope.flow_root_ms == root.flow_root_ms
