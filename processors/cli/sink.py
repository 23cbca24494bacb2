"""``choreo sink serve``: the delivery sink that records every notification it receives
(:mod:`processors.services.sink`)."""

from __future__ import annotations

from pathlib import Path

import typer

from processors.cli._serve import faults_of, run

app = typer.Typer(
    help="The delivery sink the notifications agent sends to.", no_args_is_help=True, rich_markup_mode=None
)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8086, "--port", help="Port to listen on (0: any free port, printed at start)."),
    db: Path = typer.Option(Path(".choreo/sink.sqlite"), "--db", help="The SQLite ledger (kept across restarts)."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Latency added to every delivery."),
    failure_rate: float = typer.Option(0.0, "--failure-rate", help="Share of deliveries answered 503 (0..1)."),
    outage: list[str] = typer.Option(  # noqa: B008 - typer's idiom
        [], "--outage", help="START+DURATION seconds after start during which every request gets 503; repeatable."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the failure injection."),
) -> None:
    """Record deliveries keyed by their Idempotency-Key until SIGTERM."""
    from processors.services.sink import DeliverySink, SinkOptions, build_server

    faults = faults_of(latency_ms, failure_rate, outage, seed)
    options = SinkOptions(host, port, db)

    def close(service: object) -> None:
        assert isinstance(service, DeliverySink)
        service.db.close()

    run("sink", lambda: build_server(options, faults), close)
