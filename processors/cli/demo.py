"""`choreo demo` and `choreo verify`: the commerce choreography end to end, and its invariants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from processors.settings import Settings
from processors.tooling.cli_support import (
    ConfigOption,
    LocalBrokerBootstrapOption,
    operator_errors,
    settings_or_local_broker,
)

err = Console(stderr=True)


def _commerce_app(settings: Settings):
    from processors.agents.app import app
    from processors.cli.worker import require_contracts

    app.configure(settings)
    require_contracts(
        app,
        settings,
        "demo and verify run the commerce app, so run them outside this project (where no choreo.toml "
        "names other contracts) or with --config naming another file",
    )
    return app


def demo(
    orders: int = typer.Option(300, "--orders", min=1, help="How many orders to place."),
    bad_ratio: float = typer.Option(0.03, "--bad-ratio", min=0.0, max=1.0, help="Share of extra undecodable payloads."),
    duplicate_ratio: float = typer.Option(
        0.05, "--duplicate-ratio", min=0.0, max=1.0, help="Share of orders published twice."
    ),
    workers: int = typer.Option(2, "--workers", min=1, max=8, help="Worker processes sharing the partitions."),
    timeout_s: float = typer.Option(8.0, "--timeout", min=1.0, help="Seconds before an unanswered order is cancelled."),
    seed: int | None = typer.Option(None, "--seed", help="Make the generated orders repeatable."),
    in_flight: int = typer.Option(
        8, "--in-flight", min=1, help="Orders open at once at most: publishing is paced to what the flow completes."
    ),
    bootstrap: str | None = LocalBrokerBootstrapOption,
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on the last line."),
) -> None:
    """Run the commerce flow: start workers, publish orders, wait until every order is terminal, check invariants."""
    from processors.agents.demo import DemoOptions, run_demo

    settings = settings_or_local_broker(bootstrap, config)
    the_app = _commerce_app(settings)  # refused before anything starts
    options = DemoOptions(
        orders=orders,
        bad_ratio=bad_ratio,
        duplicate_ratio=duplicate_ratio,
        workers=workers,
        timeout_s=timeout_s,
        seed=seed,
        in_flight=in_flight,
    )
    err.print(f"starting {workers} workers, then publishing {orders} orders, at most {in_flight} open at once")
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        with operator_errors():  # e.g. settings that name other contracts than the commerce ones
            summary = run_demo(the_app, settings, options, report)
    _print_summary(summary, as_json, title="commerce demo")
    if summary["non_terminal"] or summary["invariant_violations"]:
        raise typer.Exit(1)


def verify(
    bootstrap: str | None = LocalBrokerBootstrapOption,
    config: Path | None = ConfigOption,
    order_prefix: str = typer.Option(
        "", "--order-prefix", help="Only orders whose id starts with this (one run among others)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Read the outcome and audit topics from the start and check the business invariants (exit 1 on a violation)."""
    from processors.agents.verify import check_receivers, collect

    settings = settings_or_local_broker(bootstrap, config)
    with operator_errors():  # e.g. settings that name other contracts than the commerce ones
        ledger = collect(settings, _commerce_app(settings), order_prefix=order_prefix)
    summary = ledger.summary()
    # the PSP's and the sink's own ledgers, where CHOREO_PSP_URL / CHOREO_SINK_URL name them
    try:
        receivers = check_receivers(ledger, order_prefix)
    except httpx.HTTPError as exc:
        err.print(f"error: reading the PSP or sink ledger: {type(exc).__name__}: {str(exc)[:200]}")
        raise typer.Exit(2) from exc
    summary["invariant_violations"] += receivers["violations"]
    summary["receivers"] = {"psp": receivers["psp"], "sink": receivers["sink"]}
    summary["bootstrap"] = settings.bootstrap_servers
    _print_summary(summary, as_json, title="verify")
    if summary["invariant_violations"]:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )


def _print_summary(summary: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(orjson.dumps(summary).decode())
        return
    console = Console()
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("orders", str(summary["orders"]))
    for state, count in summary["terminal"].items():
        table.add_row(f"  {state.replace('_', ' ')}", str(count))
    table.add_row("  shipped", str(summary.get("shipped", 0)))
    table.add_row("not terminal", str(summary["non_terminal"]))
    for reason, count in summary["dead_lettered"].items():
        table.add_row(f"dead-lettered: {reason}", str(count))
    table.add_row("duplicates dropped", str(summary["duplicates_dropped"]))
    if summary.get("unreadable"):
        table.add_row("unreadable records", str(summary["unreadable"]))
    table.add_row("audit completeness", f"{summary['audit_completeness']:.2%} of {summary['handled_inputs']} inputs")
    flow = summary["flow_time_ms"]
    if flow["p50"] is not None:
        table.add_row("flow time p50 / p95 / p99", f"{flow['p50']:.0f} / {flow['p95']:.0f} / {flow['p99']:.0f} ms")
    if "orders_per_s" in summary:
        table.add_row("throughput", f"{summary['orders_per_s']} orders/s")
    if summary.get("workers_ready_s") is not None:
        table.add_row("workers ready (groups joined)", f"{summary['workers_ready_s']} s")
    receivers = summary.get("receivers") or {}
    if receivers.get("psp"):
        psp = receivers["psp"]
        table.add_row(
            "PSP ledger",
            f"{psp['orders_charged']} orders charged, {len(psp['double_charges'])} twice; {psp['refunds']} refunds, "
            f"{len(psp['refunds_without_charge'])} without a charge, {len(psp['double_refunds'])} twice",
        )
    if receivers.get("sink"):
        sink = receivers["sink"]
        table.add_row(
            "delivery sink",
            f"{sink['deliveries']} notifications, {len(sink['duplicate_notifications'])} delivered twice",
        )
    table.add_row(
        "invariants",
        "all hold"
        if not summary["invariant_violations"]
        else f"[red]{len(summary['invariant_violations'])} violated[/red]",
    )
    console.print(table)
    for line in summary["invariant_violations"][:20]:
        console.print(Text.assemble(("violation: ", "red"), line))
    for line in summary.get("unreadable_examples", []):
        console.print(Text.assemble(("unreadable: ", "yellow"), line))  # data, never markup
