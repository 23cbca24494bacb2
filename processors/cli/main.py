"""The `choreo` console command: one Typer app, one sub-module per command group."""

from __future__ import annotations

import typer

from processors.cli import broker as broker_cli
from processors.cli import contracts as contracts_cli
from processors.cli import dlq as dlq_cli
from processors.cli.demo import demo, verify
from processors.cli.publish import publish
from processors.cli.replay import replay
from processors.cli.roundtrip import roundtrip
from processors.cli.tail import tail
from processors.cli.topology import topology
from processors.cli.worker import worker

app = typer.Typer(
    name="choreo",
    help="choreo-streams: choreographed Kafka stream agents, contracts, tooling and a local broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(broker_cli.app, name="broker")
app.add_typer(contracts_cli.app, name="contracts")
app.command(name="publish")(publish)
app.command(name="tail")(tail)
app.command(name="replay")(replay)
app.add_typer(dlq_cli.app, name="dlq")
app.command(name="roundtrip")(roundtrip)
app.command(name="worker")(worker)
app.command(name="topology")(topology)
app.command(name="demo")(demo)
app.command(name="verify")(verify)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
