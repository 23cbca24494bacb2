"""The `choreo` console command: one Typer app, one sub-module per command group."""

from __future__ import annotations

import typer

from processors.cli import broker as broker_cli
from processors.cli import contracts as contracts_cli
from processors.cli.roundtrip import roundtrip

app = typer.Typer(
    name="choreo",
    help="choreo-streams: choreographed Kafka stream agents, contracts, tooling and a local broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(broker_cli.app, name="broker")
app.add_typer(contracts_cli.app, name="contracts")
app.command(name="roundtrip")(roundtrip)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
