"""The `choreo` console command: one Typer app, one sub-module per command group."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import typer

from processors.cli import broker as broker_cli
from processors.cli import contracts as contracts_cli
from processors.cli import dlq as dlq_cli
from processors.cli import topics as topics_cli
from processors.cli.demo import demo, verify
from processors.cli.init import init
from processors.cli.publish import publish
from processors.cli.replay import replay
from processors.cli.roundtrip import roundtrip
from processors.cli.tail import tail
from processors.cli.topology import topology
from processors.cli.worker import worker

DISTRIBUTION = "choreo-streams"

# Help is plain text: rich markup would read every "[default: ...]" and "[...]" in a help text as
# a style tag and drop it. Every sub-app sets rich_markup_mode=None for the same reason.
app = typer.Typer(
    name="choreo",
    help="choreo-streams: choreographed Kafka stream agents, contracts, tooling and a local broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def installed_version() -> str:
    try:
        return package_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {installed_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
    ),
) -> None:
    """choreo-streams: choreographed Kafka stream agents, contracts, tooling and a local broker."""


app.command(name="init")(init)
app.add_typer(topics_cli.app, name="topics")
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
