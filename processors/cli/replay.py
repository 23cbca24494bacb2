"""`choreo replay`: throttled, checkpointed, checksummed copy of a topic range or an exported
file into a topic."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from processors.settings import Settings
from processors.tooling.checksums import ALGORITHM
from processors.tooling.cli_support import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
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
from processors.tooling.replay import Replayer, ReplayResult, ReplaySource, TopicSource


def replay(
    from_topic: str | None = typer.Option(None, "--from", help="Source topic."),
    file: Path | None = typer.Option(
        None,
        "--file",
        help=(
            "Source file instead: NDJSON (events, or `choreo tail --format json --show-pii` output) "
            "or an Avro container file."
        ),
    ),
    to: str = typer.Option(..., "--to", help="Destination topic (must exist)."),
    partition: int | None = typer.Option(None, "--partition", min=0, help="Only this source partition."),
    since: str | None = typer.Option(
        None, "--since", help="From the first record at or after this time (ISO-8601 or 10m, 2h, 1d ago)."
    ),
    until: str | None = typer.Option(
        None, "--until", help="Up to, not including, the first record at or after this time."
    ),
    from_offset: int | None = typer.Option(
        None, "--from-offset", min=0, help="First offset (inclusive); needs --partition on a multi-partition topic."
    ),
    to_offset: int | None = typer.Option(None, "--to-offset", min=0, help="Last offset (inclusive)."),
    event_type: str | None = typer.Option(
        None, "--type", help="Event type of a --file [default: the one contract of --to]."
    ),
    rate: float | None = typer.Option(None, "--rate", help="At most N records per second."),
    batch: int = typer.Option(
        500, "--batch", min=1, help="Records per batch; a checkpoint is written after each delivered batch."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Read and report counts and checksums; produce nothing, write no checkpoint."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the replay recorded in the checkpoint."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Checkpoint file [default: .choreo/replay/<source>--<destination>.json]."
    ),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """Replay a topic range or a file into a topic, keeping keys, values and headers.

    Original idempotency keys travel in the headers, so agents drop what they already handled.
    Exit 0 when complete and the checksum of what was written matches what was read, 1 on failed
    deliveries or a mismatch, 2 on bad arguments or input, 130 when interrupted (resume with
    --resume)."""
    settings = load_settings(bootstrap, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    if (from_topic is None) == (file is None):
        fail("give exactly one source: --from TOPIC or --file PATH")
    if file is not None and any(v is not None for v in (partition, since, until, from_offset, to_offset)):
        fail("--partition, --since, --until, --from-offset and --to-offset apply to --from TOPIC, not --file")
    since_ms, until_ms = time_ms("--since", since), time_ms("--until", until)
    with operator_errors(), StopFlag() as stop:
        source = _source(
            settings, from_topic, file, to, event_type, partition, since_ms, until_ms, from_offset, to_offset
        )
        result = Replayer(
            settings,
            source,
            to,
            rate=rate,
            batch=batch,
            dry_run=dry_run,
            resume=resume,
            checkpoint_path=checkpoint,
            stop=stop,
        ).run()
    if json_output:
        print_json(result.to_json())
    else:
        _summary(result)
    if result.read.count == 0 and not result.interrupted:
        chosen = [
            f"{flag} {value}"
            for flag, value in (
                ("--partition", partition),
                ("--since", since),
                ("--until", until),
                ("--from-offset", from_offset),
                ("--to-offset", to_offset),
            )
            if value is not None
        ]
        what = f"{from_topic}" + (f" with {' '.join(chosen)}" if chosen else "") if from_topic else str(file)
        err.print(Text(f"warning: {what} selects no records: nothing was replayed", style="yellow"))
    if result.failed or (result.completed and not result.dry_run and not result.match):
        raise typer.Exit(EXIT_FAILED)
    if result.interrupted:
        err.print(f"interrupted: resume with the same command plus --resume (checkpoint {result.checkpoint})")
        raise typer.Exit(EXIT_INTERRUPTED)


def _source(
    settings: Settings,
    from_topic: str | None,
    file: Path | None,
    to: str,
    event_type: str | None,
    partition: int | None,
    since_ms: int | None,
    until_ms: int | None,
    from_offset: int | None,
    to_offset: int | None,
) -> ReplaySource:
    if from_topic is not None:
        return TopicSource(settings, from_topic, partition, since_ms, until_ms, from_offset, to_offset)
    from processors.contracts import AvroCodec, ContractRegistry
    from processors.tooling.filesource import FileSource

    registry = ContractRegistry.load(settings.contracts_dir, settings.schemas_dir)
    assert file is not None
    return FileSource(file, to, registry, AvroCodec(registry, settings.schema_registry_url), event_type)


def _summary(result: ReplayResult) -> None:
    source = result.source.get("topic") or result.source.get("path")
    state = (
        "dry run"
        if result.dry_run
        else ("complete" if result.completed else "interrupted" if result.interrupted else "stopped")
    )
    table = Table(title=f"replay {source} -> {result.destination} ({state}{', resumed' if result.resumed else ''})")
    table.add_column("")
    table.add_column("records", justify="right")
    table.add_column("digest", overflow="fold")
    table.add_row("read", str(result.read.count), result.read.digest)
    if not result.dry_run:
        table.add_row("written", str(result.written.count), result.written.digest)
    out.print(table)
    if not result.dry_run:
        verdict = "[green]match[/green]" if result.match else "[red]MISMATCH[/red]"
        out.print(f"checksums: {verdict} ({ALGORITHM})")
    if result.checkpoint:
        out.print(f"checkpoint: {result.checkpoint}")
    for error in result.errors:
        err.print(Text(error, style="red"))
