"""What the tooling commands share: settings from `--bootstrap`/`--config`, exit codes, errors
that name what is wrong, JSON output and graceful interruption."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.text import Text

from processors.contracts import ContractError
from processors.kafka_diagnosis import failure_of
from processors.settings import Settings, SettingsError
from processors.signals import StopSignals
from processors.tooling.jsonavro import to_json_text
from processors.tooling.kafka_io import ToolingError
from processors.tooling.timeparse import TimeArgError, parse_time_ms

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

err = Console(stderr=True, highlight=False, soft_wrap=True)  # error lines stay whole for grep
out = Console(highlight=False, soft_wrap=True)

BOOTSTRAP_HELP = (
    "Kafka bootstrap servers HOST:PORT [default: bootstrap_servers of the settings: $CHOREO_BOOTSTRAP_SERVERS, "
    "$KAFKA_BOOTSTRAP_SERVERS, the config file, else 127.0.0.1:9092]."
)
BootstrapOption = typer.Option(None, "--bootstrap", help=BOOTSTRAP_HELP)
LOCAL_BROKER_BOOTSTRAP_HELP = (
    "Kafka bootstrap servers HOST:PORT [default: bootstrap_servers of the settings: $CHOREO_BOOTSTRAP_SERVERS, "
    "$KAFKA_BOOTSTRAP_SERVERS, the config file; when none is set, the local broker in .choreo/broker, started "
    "if it is not running]."
)
LocalBrokerBootstrapOption = typer.Option(None, "--bootstrap", help=LOCAL_BROKER_BOOTSTRAP_HELP)
ConfigOption = typer.Option(
    None,
    "--config",
    help="choreo.toml with settings and [kafka] client properties [default: $CHOREO_CONFIG, else ./choreo.toml "
    "when present].",
)
ContractsDirOption = typer.Option(
    None,
    "--contracts-dir",
    help="Contracts directory [default: $CHOREO_CONTRACTS_DIR, contracts_dir of the config file, else the "
    "commerce contracts shipped with choreo-streams].",
)
SchemasDirOption = typer.Option(
    None,
    "--schemas-dir",
    help="Avro schemas directory [default: $CHOREO_SCHEMAS_DIR, schemas_dir of the config file, else the "
    "commerce schemas shipped with choreo-streams].",
)
JsonOption = typer.Option(False, "--json", help="Machine-readable JSON on stdout instead of tables.")


def load_settings(
    bootstrap: str | None,
    config: Path | None,
    *,
    contracts_dir: Path | None = None,
    schemas_dir: Path | None = None,
) -> Settings:
    """The settings every command uses, by the one rule: options, then the environment, then the
    config file, then the defaults (see processors/settings.py)."""
    try:
        return Settings.load(
            config_file=config, bootstrap_servers=bootstrap, contracts_dir=contracts_dir, schemas_dir=schemas_dir
        )
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def settings_or_local_broker(
    bootstrap: str | None,
    config: Path | None,
    *,
    contracts_dir: Path | None = None,
    schemas_dir: Path | None = None,
) -> Settings:
    """For the commands that can bring their own broker (demo, verify, roundtrip): the configured
    cluster when anyone named one, else the local broker (started when it is not running). Which
    one, and why, is said on stderr, so a check never runs against the wrong cluster unnoticed."""
    settings = load_settings(bootstrap, config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
    if settings.bootstrap_configured:
        err.print(f"broker {settings.bootstrap_servers} (from {settings.bootstrap_source})", markup=False)
        return settings
    from processors.localbroker import BrokerError, ToolchainError
    from processors.localbroker.embedded import ensure_broker

    err.print(
        "no bootstrap_servers configured (--bootstrap, --config/choreo.toml, CHOREO_BOOTSTRAP_SERVERS, "
        "KAFKA_BOOTSTRAP_SERVERS): using the local broker in .choreo/broker, started if it is not running",
        markup=False,
    )
    try:
        address = ensure_broker(None)
    except (BrokerError, ToolchainError) as exc:
        fail(str(exc), EXIT_FAILED)
    err.print(f"broker {address} (local broker)", markup=False)
    return replace(settings, bootstrap_servers=address, bootstrap_source="local broker")


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
    Ctrl-C aborts at once. The notice is printed by the signal relay, not the handler: a print
    from a handler that interrupted a print raises "reentrant call" (see processors.signals)."""

    def __init__(
        self, notice: str | None = "stopping after the records in flight are confirmed (Ctrl-C again to abort)"
    ) -> None:
        self.notice = notice
        self._signals = StopSignals(interrupt_aborts=True)
        self._noticed = False

    def __call__(self) -> bool:
        return self._signals.requested

    @property
    def requested(self) -> bool:
        return self._signals.requested

    def _announce(self, signum: int) -> None:
        if self.notice and not self._noticed:
            self._noticed = True
            err.print(f"\n{signal.Signals(signum).name}: {self.notice}")

    def __enter__(self) -> StopFlag:
        self._signals.install()
        self._signals.on_signal(self._announce)
        return self

    def __exit__(self, *exc: object) -> None:
        self._signals.uninstall()


def print_json(value: Any) -> None:
    sys.stdout.write(to_json_text(value) + "\n")
    sys.stdout.flush()
