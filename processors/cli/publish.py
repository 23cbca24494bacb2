"""`choreo publish EVENT_TYPE`: validate JSON/NDJSON events against their contract and produce them
with envelope headers and confirmed delivery."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from processors.runtime.audit import Redactor
from processors.tooling.cli_support import (
    EXIT_FAILED,
    EXIT_USAGE,
    BootstrapOption,
    ConfigOption,
    ContractsDirOption,
    JsonOption,
    SchemasDirOption,
    err,
    fail,
    load_settings,
    operator_errors,
    out,
    print_json,
)
from processors.tooling.jsoninput import read_json_records
from processors.tooling.publisher import DEFAULT_SOURCE, Publisher, PublishResult

MAX_SHOWN = 50


def publish(
    event_type: str = typer.Argument(..., help="Event type of the contract, e.g. order.created."),
    file: str = typer.Option("-", "--file", "-f", help="JSON array, NDJSON or concatenated JSON objects; - for stdin."),
    key: str | None = typer.Option(
        None,
        "--key",
        help="Field (dotted path) whose value is the idempotency key [default: derived from the event's content, "
        "so a rerun is deduplicated]. The Kafka key is always the contract's key field.",
    ),
    rate: float | None = typer.Option(None, "--rate", help="At most N events per second."),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Send the valid events and write the invalid ones to --rejects (default: send nothing if any is invalid).",
    ),
    rejects: Path | None = typer.Option(
        None,
        "--rejects",
        help=(
            "NDJSON file for refused records with their problems "
            "[default with --skip-invalid: <event_type>.rejects.ndjson]."
        ),
    ),
    correlation_id: str | None = typer.Option(
        None, "--correlation-id", help="Correlation id for every event [default: each event starts its own flow]."
    ),
    tenant: str | None = typer.Option(None, "--tenant", help="ce_tenant header for every event."),
    source: str = typer.Option(DEFAULT_SOURCE, "--source", help="CloudEvents source (ce_source)."),
    schema_version: int | None = typer.Option(
        None, "--schema-version", help="Write with this schema version [default: the current one]."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and report, send nothing."),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """Validate events against their contract, then produce them with envelope headers.

    Exit 0 when every event was delivered (or, with --skip-invalid, every valid one), 1 when a
    delivery failed, 2 when input was invalid (nothing sent) or the command was misused."""
    settings = load_settings(bootstrap, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    text = _read_input(file)
    with operator_errors(), Publisher(settings, source=source) as publisher:
        pii = Redactor(publisher.registry.get(event_type).pii_fields)
        result = publisher.publish_many(
            event_type,
            read_json_records(text),
            skip_invalid=skip_invalid,
            rate=rate,
            dry_run=dry_run,
            progress=True,
            idempotency_field=key,
            correlation_id=correlation_id,
            tenant=tenant,
            version=schema_version,
        )
    if result.rejects:
        _report_rejects(result, file)
    if skip_invalid and result.rejects:
        _write_rejects(result, rejects or Path(f"{event_type}.rejects.ndjson"))
    if json_output:
        print_json(_without_pii(result.to_json(), pii))
    else:
        _summary(result)
    if result.refused:
        err.print(
            f"refused: {result.rejected} invalid record(s), nothing sent (fix them, or --skip-invalid --rejects PATH)"
        )
        raise typer.Exit(EXIT_USAGE)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


def _without_pii(summary: dict[str, Any], pii: Redactor) -> dict[str, Any]:
    """The summary for stdout with the contract's PII fields of each refused record as ``***``:
    output goes to terminals and CI logs. The --rejects file keeps the records whole, since it is
    what the producer fixes and sends again."""
    summary["rejects"] = [{**r, "record": pii.redact(r["record"])} for r in summary["rejects"]]
    return summary


def _read_input(file: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        fail(f"--file {file}: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"--file {file}: not UTF-8 text (byte {exc.start})")
    if not text.strip():
        fail(f"--file {file}: no events in the input")
    return text


def _report_rejects(result: PublishResult, file: str) -> None:
    name = "stdin" if file == "-" else file
    shown = 0
    for reject in result.rejects:
        for problem in reject.problems:
            if shown < MAX_SHOWN:
                err.print(f"{name}:{reject.line}: {problem}", markup=False)
            shown += 1
    if shown > MAX_SHOWN:
        err.print(f"... {shown - MAX_SHOWN} more problem(s)")


def _write_rejects(result: PublishResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for reject in result.rejects:
            handle.write(orjson.dumps(reject.to_json()) + b"\n")
    err.print(f"{result.rejected} rejected record(s) written to {path}")


def _summary(result: PublishResult) -> None:
    table = Table(title=f"publish {result.event_type} -> {result.topic}" + (" (dry run)" if result.dry_run else ""))
    for column in ("records", "sent", "rejected", "failed"):
        table.add_column(column, justify="right")
    table.add_row(str(result.total), str(result.sent), str(result.rejected), str(result.failed))
    out.print(table)
    for error in result.errors:
        err.print(Text(error, style="red"))
