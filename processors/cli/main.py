"""The `choreo` console command: one Typer app, one sub-module per command group.

Errors the project raises on purpose end the command here, as one line on stderr and no
traceback: a Kafka client failure (with its real cause, see :mod:`processors.kafka_diagnosis`)
exits 1, any other :class:`~processors.errors.ChoreoError` exits 2 when it is about the input or
the usage (a ``ValueError`` kind) and 1 otherwise. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import typer

from processors.cli import broker as broker_cli
from processors.cli import contracts as contracts_cli
from processors.cli import dlq as dlq_cli
from processors.cli import psp as psp_cli
from processors.cli import sink as sink_cli
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
        from processors._native import summary

        typer.echo(f"{DISTRIBUTION} {installed_version()}")
        typer.echo(summary())  # which build of the per-record modules runs: compiled or pure Python
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version and whether the hot path is compiled, and exit.",
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
app.add_typer(psp_cli.app, name="psp")
app.add_typer(sink_cli.app, name="sink")


EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def configure_cli_logging() -> None:
    """Warnings of our own code on stderr; the Kafka client's lines only from ERROR up, unless
    ``CHOREO_LOG_LEVEL`` asks for more. A command reports its failure once, as its error line; the
    client's view of the same failure is there for whoever asks (``CHOREO_LOG_LEVEL=INFO``).
    The worker configures logging of its own (JSON lines at the settings' level)."""
    from processors.client_logging import LOGGER_NAME

    level = os.environ.get("CHOREO_LOG_LEVEL", "").upper()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._choreo_cli = True  # type: ignore[attr-defined]  # replaced by the worker's JSON lines
    root.addHandler(handler)
    root.setLevel(level or "WARNING")
    if not level:
        logging.getLogger(LOGGER_NAME).setLevel(logging.ERROR)


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for an error raised on purpose; None for a bug."""
    from processors.errors import ChoreoError
    from processors.kafka_diagnosis import failure_of

    failure = failure_of(exc)
    if failure is not None:
        return str(failure), EXIT_FAILED
    if isinstance(exc, ChoreoError):
        return " ".join(str(exc).split()), EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    return None


def main() -> None:
    configure_cli_logging()
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        handled = error_line(exc)
        if handled is None:
            raise
        line, code = handled
        sys.stderr.write(f"error: {line}\n")
        sys.exit(code)


if __name__ == "__main__":
    main()
