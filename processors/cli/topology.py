"""`choreo topology [--app MODULE:APP] [--format text|mermaid|dot] [--check] [--json]`.

Draws the choreography: which agent consumes and produces which event type, with the systems
outside the graph that contracts declare (`external_producers`, `external_consumers`). With
`--check` it exits 1 when the graph would misbehave: a cycle no agent bounds with `max_hops`
(the engine refuses those at start), an event type produced that nobody consumes, or one consumed
that nobody produces. Cycles bounded by `max_hops` are listed, and allowed, since the engine's
hop counter stops them at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
import typer

from processors.cli.worker import load_app, require_contracts
from processors.tooling.cli_support import (
    ConfigOption,
    ContractsDirOption,
    SchemasDirOption,
    load_settings,
    operator_errors,
)

DEFAULT_APP = "processors.agents.app:app"
FORMATS = ("text", "mermaid", "dot")


@dataclass(frozen=True)
class TopologyReport:
    """The agent graph together with what the contracts say comes from and goes outside."""

    agents: dict[str, dict]
    external_producers: dict[str, tuple[str, ...]]
    external_consumers: dict[str, tuple[str, ...]]
    cycles: list[list[str]]
    unbounded_cycles: list[list[str]]
    produced_never_consumed: list[str]
    consumed_never_produced: list[str]

    @property
    def problems(self) -> list[str]:
        out = [f"cycle with no declared bound: {' -> '.join(c)}" for c in self.unbounded_cycles]
        out += [
            f"{et}: produced by {', '.join(self._producers(et))} but consumed by no agent and no declared "
            "external consumer"
            for et in self.produced_never_consumed
        ]
        out += [
            f"{et}: consumed by {', '.join(self._consumers(et))} but produced by no agent and no declared "
            "external producer"
            for et in self.consumed_never_produced
        ]
        return out

    def _producers(self, event_type: str) -> list[str]:
        return sorted(a for a, n in self.agents.items() if event_type in n["produces"])

    def _consumers(self, event_type: str) -> list[str]:
        return sorted(a for a, n in self.agents.items() if event_type in n["consumes"])

    def event_types(self) -> list[str]:
        types = {et for n in self.agents.values() for et in (*n["consumes"], *n["produces"])}
        return sorted(types)

    def to_dict(self) -> dict:
        return {
            "agents": self.agents,
            "external_producers": {k: list(v) for k, v in self.external_producers.items()},
            "external_consumers": {k: list(v) for k, v in self.external_consumers.items()},
            "cycles": self.cycles,
            "unbounded_cycles": self.unbounded_cycles,
            "produced_never_consumed": self.produced_never_consumed,
            "consumed_never_produced": self.consumed_never_produced,
            "problems": self.problems,
        }


def build_report(app) -> TopologyReport:  # app: processors.runtime.App
    topology = app.topology()
    registry = app.registry
    relevant = {et for spec in app.agents.values() for et in (*spec.consumes, *spec.produces)}
    ext_in = {et: registry.get(et).external_producers for et in sorted(relevant) if registry.get(et).external_producers}
    ext_out = {
        et: registry.get(et).external_consumers for et in sorted(relevant) if registry.get(et).external_consumers
    }
    return TopologyReport(
        agents={
            name: {"consumes": list(n.consumes), "produces": list(n.produces), "max_hops": n.max_hops}
            for name, n in sorted(topology.nodes.items())
        },
        external_producers=ext_in,
        external_consumers=ext_out,
        cycles=topology.cycles(),
        unbounded_cycles=topology.unbounded_cycles(),
        produced_never_consumed=[et for et in topology.produced_never_consumed() if et not in ext_out],
        consumed_never_produced=[et for et in topology.consumed_never_produced() if et not in ext_in],
    )


def render_text(report: TopologyReport) -> str:
    lines = []
    for name, node in report.agents.items():
        bound = f"  (max_hops {node['max_hops']})" if node["max_hops"] is not None else ""
        lines.append(f"{name}{bound}")
        lines += [f"  <- {et}" for et in node["consumes"]]
        lines += [f"  -> {et}" for et in node["produces"]]
    for et, systems in report.external_producers.items():
        lines.append(f"external {', '.join(systems)} -> {et}")
    for et, systems in report.external_consumers.items():
        lines.append(f"{et} -> external {', '.join(systems)}")
    for cycle in report.cycles:
        lines.append(f"cycle: {' -> '.join(cycle)}" + ("" if cycle in report.unbounded_cycles else " (bounded)"))
    return "\n".join(lines)


def _node_id(name: str) -> str:
    return "n_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def render_mermaid(report: TopologyReport) -> str:
    lines = ["flowchart LR"]
    for name in report.agents:
        lines.append(f'  {_node_id("agent " + name)}["{name}"]')
    for et in report.event_types():
        lines.append(f'  {_node_id(et)}(["{et}"])')
    for name, node in report.agents.items():
        lines += [f"  {_node_id(et)} --> {_node_id('agent ' + name)}" for et in node["consumes"]]
        lines += [f"  {_node_id('agent ' + name)} --> {_node_id(et)}" for et in node["produces"]]
    for et, systems in report.external_producers.items():
        for system in systems:
            lines.append(f'  {_node_id("ext " + system)}[/"{system}"/] --> {_node_id(et)}')
    for et, systems in report.external_consumers.items():
        for system in systems:
            lines.append(f'  {_node_id(et)} --> {_node_id("ext " + system)}[/"{system}"/]')
    return "\n".join(lines)


def render_dot(report: TopologyReport) -> str:
    lines = ["digraph choreography {", "  rankdir=LR;"]
    for name in report.agents:
        lines.append(f'  "agent:{name}" [label="{name}", shape=box];')
    for et in report.event_types():
        lines.append(f'  "{et}" [shape=ellipse];')
    for name, node in report.agents.items():
        lines += [f'  "{et}" -> "agent:{name}";' for et in node["consumes"]]
        lines += [f'  "agent:{name}" -> "{et}";' for et in node["produces"]]
    for et, systems in report.external_producers.items():
        lines += [f'  "ext:{s}" [label="{s}", shape=parallelogram];\n  "ext:{s}" -> "{et}";' for s in systems]
    for et, systems in report.external_consumers.items():
        lines += [f'  "ext:{s}" [label="{s}", shape=parallelogram];\n  "{et}" -> "ext:{s}";' for s in systems]
    lines.append("}")
    return "\n".join(lines)


RENDERERS = {"text": render_text, "mermaid": render_mermaid, "dot": render_dot}


def topology(
    app: str = typer.Option(DEFAULT_APP, "--app", help="The App, as MODULE:ATTR."),
    fmt: str = typer.Option("text", "--format", help="text, mermaid or dot."),
    check: bool = typer.Option(False, "--check", help="Exit 1 on an unbounded cycle or a dangling event type."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a drawing."),
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
) -> None:
    """The graph of agents and event types, from the agents and the contracts."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}, got {fmt!r}", param_hint="--format")
    settings = load_settings(None, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    the_app = load_app(app)
    the_app.configure(settings)
    require_contracts(the_app, settings, f"pass --app MODULE:APP for your own app (the default is {DEFAULT_APP})")
    with operator_errors():
        report = build_report(the_app)
    if as_json:
        typer.echo(orjson.dumps(report.to_dict()).decode())
    else:
        typer.echo(RENDERERS[fmt](report))
    if check and report.problems:
        for problem in report.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)
