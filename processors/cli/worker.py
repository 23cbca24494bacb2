"""`choreo worker --app MODULE:APP [--agents a,b] [--metrics-port N]`: run agents until SIGTERM/SIGINT.

On a signal the worker finishes its current batch, commits it, closes its stores and exits 0 (also
when the signal comes during start-up, while the broker is still awaited); an agent stuck in a
client call is left behind after a bounded time. It exits 1 when an agent stopped on a fatal error
(authorization, fenced by a newer instance, misconfiguration: one line naming the cause), 2 on a
usage error (bad --app, unknown agent, refused topology). Transient failures (broker away, stuck
calls) never end it: see the README's "Faults" section.

With ``--processes N`` (setting ``processes``) the command starts N such workers as child
processes and supervises them (:mod:`processors.runtime._processes`): same signals, same exit codes,
one metrics port for all.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from processors.contracts.registry import display_path
from processors.settings import Settings, SettingsError
from processors.signals import StopSignals
from processors.tooling.cli_support import BootstrapOption, ConfigOption, fail, operator_errors

MISSING_SHOWN = 3  # event types named in the refusal; the rest are counted

# A stop asked for before the worker command runs (the CLI is still importing): honoured too. The
# handlers are installed here, at import, only when the command line is the worker's; they take no
# lock (see processors.signals: a handler that set an event could hang the worker on SIGTERM).
_COMMAND_LINE_SIGNALS = StopSignals().install() if len(sys.argv) > 1 and sys.argv[1] == "worker" else None


@contextmanager
def _stop_signals() -> Iterator[StopSignals]:
    """The process's stop signals for this command: those installed at import, kept to the end
    (a SIGTERM while the interpreter exits must not kill a worker that has committed), or, run
    in-process (tests, a program embedding the CLI), handlers of its own, given back after."""
    if _COMMAND_LINE_SIGNALS is not None:
        yield _COMMAND_LINE_SIGNALS
        return
    with StopSignals() as signals:
        yield signals


def load_app(spec: str):  # -> processors.runtime.App
    """Import ``MODULE:ATTR`` (the current directory is importable, like ``python -m``)."""
    from processors.runtime import App

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(f"expected MODULE:APP, got {spec!r}", param_hint="--app")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="--app") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise typer.BadParameter(
            f"{spec!r} is not a processors.runtime.App (got {type(app).__name__})", param_hint="--app"
        )
    return app


def require_contracts(the_app: Any, settings: Settings, remedy: str) -> None:
    """Refuse, in one short line (exit 2), an app whose event types the configured contracts do not
    define — typically the commerce app (the default of `topics`/`topology`, what `demo`/`verify`
    run) in a project whose choreo.toml names its own contracts. Without this, each command fails
    its own way: an unknown event type deep in a plan, or one clause per agent and event type."""
    with operator_errors():  # a contracts dir that does not exist or does not load
        known = set(the_app.registry.event_types())
    needed = {et for spec in the_app.agents.values() for et in (*spec.consumes, *spec.produces)}
    missing = sorted(needed - known)
    if not missing:
        return
    shown = ", ".join(missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    where = display_path(Path(settings.contracts_dir))
    fail(f"app {the_app.app_id!r} needs event types with no contract in {where}/ ({shown}{more}): {remedy}")


def worker(
    app: str = typer.Option(..., "--app", help="The App to run, as MODULE:ATTR (e.g. processors.agents.app:app)."),
    agents: str | None = typer.Option(None, "--agents", help="Comma-separated agent names (default: all)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve /metrics, /healthz, /readyz here."),
    worker_id: str | None = typer.Option(
        None,
        "--worker-id",
        envvar="CHOREO_WORKER_ID",
        help="Stable id of this worker (pod name): names its transactional ids, so a restarted worker fences "
        "its predecessor at once (default: derived from the host and the state directory).",
    ),
    guarantee: str | None = typer.Option(
        None, "--guarantee", help="exactly_once or at_least_once (default: settings)."
    ),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Local state directory (default: settings)."),
    config: Path | None = ConfigOption,
    bootstrap: str | None = BootstrapOption,
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING ... (default: settings)."),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=1,
        help="Run as this many worker processes, each a member of every agent's group, so all cores are used "
        "(default: settings, 1).",
    ),
) -> None:
    """Run agents: one consumer group per agent; start more workers to share the partitions."""
    # First thing: a stop asked for while the app loads or the broker is awaited is honoured
    with _stop_signals() as signals:
        from processors.contracts import ContractError
        from processors.kafka_errors import KafkaFailure
        from processors.runtime import AppError, TopologyError, Worker, WorkerError
        from processors.runtime._recovery import fatal_line
        from processors.runtime.logs import configure_logging
        from processors.runtime.metrics import serve

        try:
            settings = Settings.load(
                config,
                bootstrap_servers=bootstrap,
                metrics_port=metrics_port,
                state_dir=state_dir,
                processing_guarantee=guarantee,
                log_level=log_level,
                processes=processes,
            )
        except SettingsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        configure_logging(settings.log_level)
        from processors._native import summary

        logging.getLogger("choreo.worker").info(summary())  # compiled or pure-Python hot path, and why
        the_app = load_app(app)
        the_app.configure(settings)
        require_contracts(the_app, settings, "check --app, and contracts_dir in choreo.toml or CHOREO_CONTRACTS_DIR")
        names = [a.strip() for a in agents.split(",") if a.strip()] if agents else None
        try:
            w = Worker(the_app, settings, agents=names, worker_id=worker_id)
        except (AppError, WorkerError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if settings.processes > 1:
            passed = {"--app": app, "--agents": agents, "--guarantee": guarantee, "--config": config}
            passed |= {"--bootstrap": bootstrap, "--log-level": log_level}
            raise typer.Exit(_run_processes(settings, w.worker_id, passed, signals))
        signals.on_signal(lambda _signum: w.stop())
        from processors.runtime._processes import watch_parent

        watch_parent(w.stop)  # a child of --processes whose parent was killed
        if signals.requested:
            raise typer.Exit(0)
        if settings.metrics_port:
            serve(settings.metrics_port).attach(w.health_state)
        try:
            code = w.run()
        except (AppError, TopologyError, ContractError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        except (WorkerError, KafkaFailure) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        for error in w.errors:
            typer.echo(f"error: agent stopped: {fatal_line(error)}", err=True)
        if w.left_behind:
            # a thread stuck inside the Kafka client would hold the interpreter's exit: end now
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise typer.Exit(code)


def _run_processes(settings: Settings, worker_id: str, passed: dict[str, Any], signals: StopSignals) -> int:
    """``--processes N``: N child workers, started, reported and stopped together; the exit code
    of the whole (0 when all stopped cleanly, 1 when one did not, a fatal child's own code)."""
    from processors.runtime._processes import ProcessGroup

    args = [str(item) for name, value in passed.items() if value is not None for item in (name, value)]
    group = ProcessGroup(
        args,
        settings.processes,
        worker_id,
        Path(settings.state_dir),
        metrics=bool(settings.metrics_port),
        state_memory_mb=settings.state_memory_mb,
    )
    signals.on_signal(lambda _signum: group.stop())  # forwards SIGTERM to the children
    if signals.requested:
        return 0
    endpoints = group.serve(settings.metrics_port) if settings.metrics_port else None
    try:
        return group.run()
    finally:
        if endpoints is not None:
            endpoints.close()
