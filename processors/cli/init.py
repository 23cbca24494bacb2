"""`choreo init DIR [--name NAME]`: a new project with one agent that runs and passes its tests."""

from __future__ import annotations

from pathlib import Path

import typer

from processors.tooling.cli_support import operator_errors, out
from processors.tooling.scaffold import scaffold


def init(
    directory: Path = typer.Argument(..., help="Where to write the project (created if missing; must not hold one)."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Project name: the app id and topic prefix [default: the directory's name, lower-cased].",
    ),
) -> None:
    """Scaffold a runnable project: one agent, its contracts and Avro schemas, a pure-driver test,
    a real-broker test, choreo.toml and a README with the commands to run it."""
    with operator_errors():
        project = scaffold(directory, name)
    for path in project.files:
        out.print(f"wrote {path}", highlight=False, markup=False)
    out.print(
        f"\nproject {project.name} in {directory}: next,\n"
        f"  cd {directory}\n"
        "  choreo broker start        # or set bootstrap_servers in choreo.toml\n"
        "  python -m pytest\n"
        f"  choreo worker --app {project.app_spec}",
        highlight=False,
        markup=False,
    )
