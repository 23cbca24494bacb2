"""`choreo broker start|status|stop|jars`: the local single-node KRaft broker."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from processors.localbroker import BrokerError, BrokerStatus, KafkaJars, LocalBroker, ToolchainError
from processors.localbroker.broker import DEFAULT_PORT, default_data_dir

app = typer.Typer(
    help="Run a real Apache Kafka (KRaft, single node) broker on 127.0.0.1.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
err = Console(stderr=True)

DataDirOption = typer.Option(None, "--data-dir", help="Broker data dir [default: $CHOREO_BROKER_DIR or .choreo/broker]")


def _broker(data_dir: Path | None, port: int = DEFAULT_PORT, secured: bool = False) -> LocalBroker:
    return LocalBroker(data_dir=data_dir or default_data_dir(), port=port, secured=secured)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    raise typer.Exit(1)


@app.command()
def start(
    port: int = typer.Option(
        DEFAULT_PORT, "--port", min=1, max=65534, help="Client port (the controller uses port+1 when free)."
    ),
    data_dir: Path | None = DataDirOption,
    timeout: float = typer.Option(90.0, "--timeout", help="Seconds to wait for the broker to answer."),
    secured: bool = typer.Option(
        False,
        "--secured",
        help="SASL_SSL listener with SCRAM-SHA-512 users, a CA made for this data dir, ACLs enforced "
        "(nothing allowed without one). Use a data dir of its own.",
    ),
) -> None:
    """Format the KRaft log dir on first use, start the broker in the background, wait until it answers."""
    broker = _broker(data_dir, port, secured)
    try:
        started = broker.start(timeout=timeout)
    except (BrokerError, ToolchainError) as exc:
        _fail(exc)
    if not started:
        err.print(f"broker already running on {broker.data_dir} (pid {broker.running_pid()})")
    else:
        err.print(f"broker started on {broker.data_dir}, log: {broker.log_file}")
    if secured:  # where the secrets are, never the secrets
        err.print(
            f"SASL_SSL, SCRAM-SHA-512; CA certificate: {broker.ca_location}; users and passwords: "
            f"{broker.users_file} (super users: admin, broker)",
            highlight=False,
        )
    typer.echo(broker.bootstrap)


@app.command()
def status(data_dir: Path | None = DataDirOption) -> None:
    """Exit 0 when the broker on this data dir is up and answering, 1 when it is down."""
    broker = _broker(data_dir)
    if broker.status() is BrokerStatus.RUNNING:
        typer.echo(f"running pid={broker.running_pid()} bootstrap=127.0.0.1:{broker.recorded_port()}")
        return
    typer.echo("stopped")
    raise typer.Exit(1)


@app.command()
def stop(
    data_dir: Path | None = DataDirOption,
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait after SIGTERM before SIGKILL."),
) -> None:
    """Stop the broker gracefully (SIGTERM), forcibly (SIGKILL) after the timeout."""
    if _broker(data_dir).stop(timeout=timeout):
        typer.echo("stopped")
    else:
        typer.echo("not running")


@app.command()
def jars() -> None:
    """Resolve the Kafka server jars with Maven into the cache (done on first start anyway)."""
    kafka = KafkaJars()
    try:
        path = kafka.resolve(quiet=False)
    except ToolchainError as exc:
        _fail(exc)
    typer.echo(str(path))
