"""`choreo tail TOPIC...`: print the events of topics decoded by their contracts, with headers."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from processors.tooling.cli_support import (
    BootstrapOption,
    ConfigOption,
    ContractsDirOption,
    SchemasDirOption,
    StopFlag,
    load_settings,
    operator_errors,
    out,
    print_json,
    time_ms,
)
from processors.tooling.jsonavro import to_json_text
from processors.tooling.kafka_io import MAX_SHOWN_ERROR, bounded, shown_bytes
from processors.tooling.subscriber import FieldFilter, ReceivedEvent, Subscriber
from processors.tooling.timeparse import format_ms

TABLE_CHUNK = 50
TABLE_FLUSH_S = 1.0
HIDDEN_HEADERS = ("ce_specversion", "content-type")  # constant for our events; --format json has them all


class Format(StrEnum):
    json = "json"
    table = "table"


def tail(
    topics: list[str] = typer.Argument(..., help="Topics to read, e.g. order.confirmed payment.declined."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the earliest retained record."),
    since: str | None = typer.Option(
        None, "--since", help="Start at this time: ISO-8601 or a duration ago (10m, 2h, 1d)."
    ),
    last: int | None = typer.Option(
        None,
        "--last",
        "-n",
        min=0,
        help="Start N records before the end of each partition [default: 10 unless --from-beginning/--since].",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep waiting for new events (Ctrl-C to stop)."),
    filters: list[str] = typer.Option(
        [],
        "--filter",
        help="FIELD=VALUE (repeatable): a value path like customer_id or items[0].sku, headers.NAME, @key or @type.",
    ),
    fmt: Format = typer.Option(
        Format.table, "--format", help="table for people, json for NDJSON (one event per line)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Same as --format json."),
    show_pii: bool = typer.Option(
        False, "--show-pii", help="Print fields the contract marks as PII (redacted as *** by default)."
    ),
    max_events: int | None = typer.Option(None, "--max", min=1, help="Stop after N events."),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
) -> None:
    """Decode and print events (any schema version); undecodable records are shown as such."""
    settings = load_settings(bootstrap, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    since_ms = time_ms("--since", since)
    if last is None and not from_beginning and since_ms is None:
        last = 10
    as_json = json_output or fmt is Format.json
    with operator_errors(), StopFlag(notice=None) as stop:  # Ctrl-C ends a --follow quietly
        parsed = [FieldFilter.parse(f) for f in filters]
        with Subscriber(
            topics,
            settings,
            from_beginning=from_beginning,
            since_ms=since_ms,
            last=last,
            follow=follow,
            filters=parsed,
            stop=stop,
        ) as subscriber:
            printer = _JsonPrinter(subscriber, show_pii) if as_json else _TablePrinter(subscriber, show_pii)
            for shown, event in enumerate(subscriber, start=1):
                printer.add(event)
                if max_events is not None and shown >= max_events:
                    break
            printer.flush()


class _JsonPrinter:
    def __init__(self, subscriber: Subscriber, show_pii: bool) -> None:
        self.subscriber, self.show_pii = subscriber, show_pii

    def add(self, event: ReceivedEvent) -> None:
        print_json(event.to_json(None if self.show_pii else self.subscriber.redactor_for(event)))

    def flush(self) -> None:
        pass


class _TablePrinter:
    """Rows are printed in small tables, flushed by count or after a quiet second, so `--follow`
    shows events as they come without a table per event."""

    def __init__(self, subscriber: Subscriber, show_pii: bool) -> None:
        self.subscriber, self.show_pii = subscriber, show_pii
        self.rows: list[ReceivedEvent] = []
        self.last_flush = time.monotonic()

    def add(self, event: ReceivedEvent) -> None:
        self.rows.append(event)
        if len(self.rows) >= TABLE_CHUNK or time.monotonic() - self.last_flush >= TABLE_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        table = Table(show_lines=True, expand=True)
        table.add_column("event", overflow="fold", ratio=2)
        table.add_column("headers", overflow="fold", ratio=2)
        table.add_column("value", overflow="fold", ratio=4)
        for event in self.rows:
            table.add_row(*(Text(cell) for cell in self._cells(event)))  # data, never markup
        self.rows = []
        out.print(table)

    def _cells(self, event: ReceivedEvent) -> tuple[str, ...]:
        headers, _ = event.shown_headers()
        shown = "\n".join(f"{name}={value}" for name, value in headers.items() if name not in HIDDEN_HEADERS)
        if event.envelope_error:
            shown += f"\n[envelope: {bounded(event.envelope_error, MAX_SHOWN_ERROR)}]"
        if event.decoded:
            redactor = None if self.show_pii else self.subscriber.redactor_for(event)
            value = to_json_text(redactor.redact(event.value) if redactor else event.value)
        else:
            value = f"[{bounded(event.error, MAX_SHOWN_ERROR)}]"
        key = shown_bytes(event.key)[0] or "-"
        where = (
            f"{event.topic}[{event.partition}]@{event.offset}\n{format_ms(event.timestamp)}\nkey={key}\n"
            f"{event.event_type or 'UNDECODABLE'}"
        )
        return (where, shown, value)
