"""`choreo dlq list|show|redrive`: inspect dead-letter topics and send fixed events back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from processors.contracts import AvroCodec, ContractError, ContractRegistry
from processors.runtime.audit import Redactor
from processors.settings import Settings
from processors.tooling.cli_support import (
    EXIT_FAILED,
    EXIT_USAGE,
    BootstrapOption,
    ConfigOption,
    ContractsDirOption,
    JsonOption,
    SchemasDirOption,
    StopFlag,
    err,
    fail,
    load_settings,
    operator_errors,
    out,
    print_json,
    time_ms,
)
from processors.tooling.dlq import DeadLetter, DlqFilter, DlqInspector, RedriveResult, parse_offset, top_counts
from processors.tooling.jsonavro import to_json_text
from processors.tooling.kafka_io import MAX_SHOWN_ERROR, bounded
from processors.tooling.timeparse import format_ms

app = typer.Typer(
    help="Dead-letter topics: counts by error class, records with their error headers, redrive.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ReasonOption = typer.Option([], "--reason", help="Only this reason (repeatable), e.g. handler_error, undecodable.")
AgentOption = typer.Option([], "--agent", help="Only records dead-lettered by this agent (repeatable).")
ErrorClassOption = typer.Option([], "--error-class", help="Only this error class (repeatable), e.g. ValueError.")
SinceOption = typer.Option(None, "--since", help="Dead-lettered at or after (ISO-8601 or 10m, 2h, 1d ago).")
UntilOption = typer.Option(None, "--until", help="Dead-lettered before this time.")
OffsetOption = typer.Option([], "--offset", help="Only this DLQ offset, OFFSET or PARTITION:OFFSET (repeatable).")
PartitionOption = typer.Option(None, "--partition", min=0, help="Only this DLQ partition.")
MAX_RAW_PAYLOAD = 64 * 1024  # of an undecodable payload shown as base64


def _filter(
    reason: list[str],
    agent: list[str],
    error_class: list[str],
    since: str | None,
    until: str | None,
    offset: list[str],
    partition: int | None,
) -> DlqFilter:
    return DlqFilter(
        reasons=frozenset(reason),
        agents=frozenset(agent),
        error_classes=frozenset(error_class),
        offsets=frozenset(parse_offset(o) for o in offset),
        partition=partition,
        since_ms=time_ms("--since", since),
        until_ms=time_ms("--until", until),
    )


@app.command("list")
def list_(
    patterns: list[str] = typer.Argument(
        None,
        metavar="[TOPIC]...",
        help="Only these DLQ topics, or the topics they belong to; shell-style patterns (orders.*) allowed.",
        show_default=False,
    ),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    json_output: bool = JsonOption,
) -> None:
    """DLQ topics (`<topic>.dlq`) with their record counts by error class and reason."""
    settings = load_settings(bootstrap, config)
    with operator_errors(), DlqInspector(settings) as inspector:
        summaries = inspector.summarize(inspector.matching(patterns) if patterns else None)
    if json_output:
        print_json([s.to_json() for s in summaries])
        return
    table = Table(title="dead-letter topics")
    table.add_column("topic", no_wrap=True)  # a topic name cut or folded cannot be copied
    table.add_column("records", justify="right")
    for column in ("by error class", "by reason", "oldest", "newest"):
        table.add_column(column, overflow="fold")
    for s in summaries:
        table.add_row(
            s.topic, str(s.total), _counts(s.by_error_class), _counts(s.by_reason), _ms(s.oldest), _ms(s.newest)
        )
    out.print(table if summaries else "no DLQ topics")


@app.command()
def show(
    topic: str = typer.Argument(
        ..., help="DLQ topic, or the topic it belongs to (order.created means order.created.dlq)."
    ),
    reason: list[str] = ReasonOption,
    agent: list[str] = AgentOption,
    error_class: list[str] = ErrorClassOption,
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    offset: list[str] = OffsetOption,
    partition: int | None = PartitionOption,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Show at most N records."),
    show_pii: bool = typer.Option(False, "--show-pii", help="Print fields the contract marks as PII (*** by default)."),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """Dead letters with their error headers and decoded payload, filtered."""
    settings = load_settings(bootstrap, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    with operator_errors(), DlqInspector(settings) as inspector:
        filt = _filter(reason, agent, error_class, since, until, offset, partition)
        decoder = _Decoder(settings, show_pii)
        name = inspector.resolve(topic)
        rows = []
        for rec in inspector.records(name, filt):
            rows.append({**rec.summary(), "payload": decoder(rec)})
            if limit is not None and len(rows) >= limit:
                break
    if json_output:
        print_json(rows)
        return
    if not rows:
        out.print(f"no matching dead letters in {name}")
        return
    out.print(f"{name}: {len(rows)} record(s)")
    for row in rows:
        out.print(_record_grid(row))


def _record_grid(row: dict[str, Any]) -> Table:
    """One dead letter as a two-column grid: readable at any terminal width, unlike 8 columns."""
    original = row["original"]
    grid = Table(show_header=False, title=f"{row['topic']}[{row['partition']}]@{row['offset']}", title_justify="left")
    grid.add_column("field", style="bold", no_wrap=True)
    grid.add_column("value", overflow="fold")
    for label, value in (
        ("dead-lettered", row["last_failure"] or row["timestamp"]),
        ("key", row["key"] or "-"),
        ("reason", row["reason"]),
        ("error class", row["error_class"]),
        ("agent", row["agent"]),
        ("attempts", row["attempts"] or "-"),
        ("message", row["error_message"] or "-"),
        ("original", f"{original['topic']}[{original['partition']}]@{original['offset']}"),
        ("redrives", str(row["redrive_count"])),
        ("headers", "\n".join(f"{k}={v}" for k, v in row["headers"].items() if not k.startswith("choreo_dlq_"))),
        ("payload", to_json_text(row["payload"])),
    ):
        grid.add_row(label, Text(str(value)))
    return grid


@app.command()
def redrive(
    topic: str = typer.Argument(..., help="DLQ topic, or the topic it belongs to."),
    reason: list[str] = ReasonOption,
    agent: list[str] = AgentOption,
    error_class: list[str] = ErrorClassOption,
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    offset: list[str] = OffsetOption,
    partition: int | None = PartitionOption,
    all_records: bool = typer.Option(
        False, "--all", help="Redrive every record of the DLQ (needed when no filter is given)."
    ),
    rate: float | None = typer.Option(None, "--rate", help="At most N records per second."),
    max_redrives: int | None = typer.Option(
        5, "--max-redrives", min=1, help="Skip records already redriven N times (poison pills)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be redriven where; send nothing."),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """Send selected dead letters back to their original topic, with their original headers and
    choreo_redrive_count incremented. Exit 1 if a delivery failed."""
    settings = load_settings(bootstrap, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    with operator_errors(), DlqInspector(settings) as inspector, StopFlag() as stop:
        filt = _filter(reason, agent, error_class, since, until, offset, partition)
        if filt.selects_all and not all_records:
            fail(
                "select what to redrive (--reason, --agent, --error-class, --since/--until, --offset, --partition)"
                " or pass --all",
                EXIT_USAGE,
            )
        result = inspector.redrive(
            inspector.resolve(topic), filt, rate=rate, dry_run=dry_run, max_redrives=max_redrives, stop=stop
        )
    if json_output:
        print_json(result.to_json())
    else:
        _redrive_summary(result)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


def _redrive_summary(result: RedriveResult) -> None:
    title = f"redrive {result.topic}" + (" (dry run)" if result.dry_run else "")
    table = Table(title=title)
    for column in ("selected", "redriven", "failed", "same event (sent once)", "over --max-redrives"):
        table.add_column(column, justify="right")
    sent = len(result.items) if result.dry_run else result.redriven
    table.add_row(
        str(result.selected),
        f"{sent}{' (would be)' if result.dry_run else ''}",
        str(result.failed),
        str(result.skipped_duplicates),
        str(result.skipped_max_redrives),
    )
    out.print(table)
    for dest, count in sorted((result.by_destination or {}).items()):
        out.print(f"  -> {dest}: {count}")
    for error in result.errors:
        err.print(Text(error, style="red"))


class _Decoder:
    """Decodes a dead letter's payload when it can; a DLQ is exactly where undecodable bytes live, so
    those are shown as base64 with the reason instead — unless the contract of the topic they came
    from marks PII fields: raw bytes would carry those values, so they need --show-pii."""

    def __init__(self, settings: Settings, show_pii: bool) -> None:
        self.registry = ContractRegistry.load(settings.contracts_dir, settings.schemas_dir)
        self.codec = AvroCodec(self.registry, settings.schema_registry_url)
        self.show_pii = show_pii

    def __call__(self, rec: DeadLetter) -> dict[str, Any]:
        if rec.value is None:
            return {"error": "tombstone: null value"}
        try:
            event_type, value = self.codec.decode_any(rec.value)
        except ContractError as exc:
            return {"error": bounded(f"undecodable: {exc}", MAX_SHOWN_ERROR), **self._raw(rec, rec.value)}
        except Exception as exc:  # noqa: BLE001 - a DLQ holds what nothing could read: report, go on
            return {"error": f"undecodable: {type(exc).__name__}", **self._raw(rec, rec.value)}
        if not self.show_pii:
            value = Redactor(self.registry.get(event_type).pii_fields).redact(value)
        return {"event_type": event_type, "value": value}

    def _raw(self, rec: DeadLetter, data: bytes) -> dict[str, Any]:
        pii = sorted({f for c in self.registry.for_topic(rec.original_topic) for f in c.pii_fields})
        if pii and not self.show_pii:
            return {
                "bytes": len(data),
                "not_shown": f"raw bytes of {rec.original_topic}, whose contract marks PII "
                f"({', '.join(pii)}): --show-pii shows them",
            }
        shown = {"bytes": len(data), "base64": data[:MAX_RAW_PAYLOAD]}
        if len(data) > MAX_RAW_PAYLOAD:
            shown["truncated"] = f"first {MAX_RAW_PAYLOAD} bytes shown"
        return shown


def _counts(counter: Any) -> str:
    return "\n".join(f"{name}: {count}" for name, count in top_counts(counter).items()) or "-"


def _ms(value: int | None) -> str:
    return format_ms(value)
