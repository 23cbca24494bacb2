"""`choreo topology`: drawings of the commerce graph, and `--check` catching what would misbehave."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from processors.cli.main import app as cli

runner = CliRunner()


def test_commerce_topology_passes_the_check_with_its_bounded_loops():
    result = runner.invoke(cli, ["topology", "--check", "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert report["problems"] == [] and report["unbounded_cycles"] == []
    assert report["cycles"], "the compensation loops should be listed as bounded cycles"
    assert report["external_producers"] == {"order.created": ["storefront"]}
    assert "stock.reserve.requested" in report["agents"]["inventory"]["produces"]


def test_mermaid_and_dot_drawings_name_agents_and_event_types():
    mermaid = runner.invoke(cli, ["topology", "--format", "mermaid"]).stdout
    assert mermaid.startswith("flowchart LR")
    assert 'n_agent_payments["payments"]' in mermaid and "n_order_created --> n_agent_payments" in mermaid
    dot = runner.invoke(cli, ["topology", "--format", "dot"]).stdout
    assert dot.startswith("digraph choreography {") and '"agent:orders" -> "order.confirmed";' in dot


def test_check_fails_on_an_unbounded_cycle_and_dangling_types():
    result = runner.invoke(cli, ["topology", "--check", "--app", "tests.unit.topology_apps:looping"])
    assert result.exit_code == 1
    assert "cycle with no declared bound: ping -> pong -> ping" in result.stderr
    assert "order.confirmed: produced by pong but consumed by no agent" in result.stderr
    assert "payment.declined: consumed by ping but produced by no agent" in result.stderr


def test_unknown_format_is_a_usage_error():
    result = runner.invoke(cli, ["topology", "--format", "svg"])
    assert result.exit_code == 2
