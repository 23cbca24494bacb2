"""``choreo psp serve``: the payment service provider as an HTTP service of its own
(:mod:`processors.services.psp`)."""

from __future__ import annotations

from pathlib import Path

import typer

from processors.agents.gateway import GatewayRules
from processors.cli._serve import faults_of, run

app = typer.Typer(
    help="The payment service provider (PSP) the payments agent calls.", no_args_is_help=True, rich_markup_mode=None
)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8085, "--port", help="Port to listen on (0: any free port, printed at start)."),
    db: Path = typer.Option(Path(".choreo/psp.sqlite"), "--db", help="The SQLite ledger (kept across restarts)."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Latency added to every charge and refund."),
    failure_rate: float = typer.Option(
        0.0, "--failure-rate", help="Share of charges and refunds answered 503 without effect (0..1)."
    ),
    outage: list[str] = typer.Option(  # noqa: B008 - typer's idiom
        [], "--outage", help="START+DURATION seconds after start during which every request gets 503; repeatable."
    ),
    decline_above_minor: int = typer.Option(
        GatewayRules.decline_above_minor, "--decline-above-minor", help="Amounts above this are declined."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the failure injection."),
) -> None:
    """Serve charges, refunds and the ledger with Idempotency-Key semantics until SIGTERM."""
    from processors.services.psp import PaymentService, PspOptions, build_server

    faults = faults_of(latency_ms, failure_rate, outage, seed)
    options = PspOptions(host, port, db, GatewayRules(decline_above_minor=decline_above_minor))

    def close(service: object) -> None:
        assert isinstance(service, PaymentService)
        service.db.close()

    run("psp", lambda: build_server(options, faults), close)
