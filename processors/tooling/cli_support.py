"""What the tooling commands share: settings from `--bootstrap`/`--config`, exit codes, errors
that name what is wrong, JSON output and graceful interruption."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.text import Text

from processors.contracts import ContractError
from processors.kafka_diagnosis import failure_of
from processors.settings import Settings, SettingsError
from processors.tooling.jsonavro import to_json_text
from processors.tooling.kafka_io import ToolingError
from processors.tooling.timeparse import TimeArgError, parse_time_ms

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

err = Console(stderr=True, highlight=False, soft_wrap=True)  # error lines stay whole for grep
out = Console(highlight=False, soft_wrap=True)

BootstrapOption = typer.Option(
    None,
    "--bootstrap",
    help="Kafka bootstrap servers HOST:PORT [default: $KAFKA_BOOTSTRAP_SERVERS or the config file].",
)
ConfigOption = typer.Option(None, "--config", help="choreo.toml with settings and [kafka] client properties.")
JsonOption = typer.Option(False, "--json", help="Machine-readable JSON on stdout instead of tables.")


def load_settings(bootstrap: str | None, config: Path | None) -> Settings:
    try:
        return Settings.load(config_file=config, bootstrap_servers=bootstrap)
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(Text.assemble(("error: ", "red"), message))  # a message is data: never parsed as markup
    raise typer.Exit(code)


def time_ms(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_time_ms(text)
    except TimeArgError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


@contextmanager
def operator_errors() -> Iterator[None]:
    """Input and usage problems exit 2 with their message; a Kafka failure exits 1. No tracebacks
    for conditions an operator can fix."""
    try:
        yield
    except (ToolingError, ContractError, SettingsError, TimeArgError) as exc:
        fail(str(exc), EXIT_USAGE)
    except KafkaException as exc:
        failure = failure_of(exc)  # names the SASL/TLS/ACL cause behind a metadata timeout
        fail(str(failure) if failure is not None else f"Kafka: {exc}", EXIT_FAILED)


class StopFlag:
    """Ctrl-C (or SIGTERM) asks a long run to stop at the next record and checkpoint; a second
    Ctrl-C aborts at once."""

    def __init__(
        self, notice: str | None = "stopping after the records in flight are confirmed (Ctrl-C again to abort)"
    ) -> None:
        self.requested = False
        self.notice = notice
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, _frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.notice:
            err.print(f"\n{signal.Signals(signum).name}: {self.notice}")

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def print_json(value: Any) -> None:
    sys.stdout.write(to_json_text(value) + "\n")
    sys.stdout.flush()
