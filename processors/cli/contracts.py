"""`choreo contracts`: catch breaking schema changes before they ship.

Exit codes scripts can trust: 0 compatible, 1 a check failed (each violation is listed), 2 the input
could not be read (bad contract, invalid schema, unknown git revision, wrong usage).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from processors.contracts.compat import MODES, SchemaParseError, check_compatibility
from processors.contracts.errors import ContractError
from processors.contracts.registry import Contract, ContractRegistry, display_path
from processors.errors import ChoreoError
from processors.settings import Settings, SettingsError
from processors.tooling.cli_support import ConfigOption, ContractsDirOption, SchemasDirOption

app = typer.Typer(help="Data contracts: schema compatibility checks.", no_args_is_help=True, rich_markup_mode=None)
_out = Console()
_err = Console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


@dataclass(frozen=True)
class Violation:
    event_type: str
    version: str
    against: str
    direction: str
    path: str
    reason: str


class InputError(ChoreoError):
    """Input the check cannot read: reported on stderr with exit code 2."""


@app.command()
def check(
    base: str | None = typer.Option(
        None, "--base", help="Also refuse changes to schema versions that exist at this git revision."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    config: Path | None = ConfigOption,
) -> None:
    """Every schema version obeys its contract's compatibility mode (and, with --base, published
    versions are unchanged)."""
    try:
        settings = Settings.load(config, contracts_dir=contracts_dir, schemas_dir=schemas_dir)
        contracts_dir = settings.contracts_dir
        schemas_dir = settings.schemas_dir
        registry = ContractRegistry.load(contracts_dir, schemas_dir)
        violations = [v for c in registry.all() for v in _evolution_violations(c)]
        if base is not None:
            violations += _base_violations(registry, schemas_dir, base)
    except (ContractError, InputError, SchemaParseError, SettingsError) as exc:
        _fail_input(str(exc), as_json)
    _report_check(registry, violations, base, as_json)
    raise typer.Exit(EXIT_FAILED if violations else EXIT_OK)


@app.command()
def compat(
    new: Path = typer.Argument(..., help="The new schema (.avsc)."),
    previous: list[Path] = typer.Argument(..., help="Previous versions, newest first."),
    mode: str = typer.Option(..., "--mode", help=f"One of {', '.join(MODES)}."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check one new schema against previous versions with Schema Registry semantics."""
    mode = mode.upper()
    if mode not in MODES:
        _fail_input(f"--mode: {mode!r} is not one of {', '.join(MODES)}", as_json)
    try:
        result = check_compatibility(_read_json(new), [_read_json(p) for p in previous], mode)
    except (InputError, SchemaParseError) as exc:
        _fail_input(str(exc), as_json)
    names = [str(p) for p in previous]
    if as_json:
        _print_json(
            {
                "compatible": result.compatible,
                "mode": mode,
                "new": str(new),
                "problems": [
                    {
                        "against": names[p.against_version_index],
                        "against_index": p.against_version_index,
                        "direction": p.direction,
                        "path": p.path,
                        "reason": p.reason,
                        "kind": p.kind,
                    }
                    for p in result.problems
                ],
            }
        )
    elif result.compatible:
        against = ", ".join(names) if mode != "NONE" else "nothing (mode NONE)"
        _out.print(
            f"[green]compatible[/green]: {escape(str(new))} under {mode} against {escape(against)}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        table = _table("Against", "Direction", "Field path", "Reason")
        for p in result.problems:
            _row(table, names[p.against_version_index], p.direction, p.path, p.reason)
        _out.print(table)
        _out.print(
            f"[red]incompatible[/red]: {escape(str(new))} under {mode}: {len(result.problems)} problem(s)",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_OK if result.compatible else EXIT_FAILED)


# ---------------------------------------------------------------------- checks
def _evolution_violations(contract: Contract) -> list[Violation]:
    """Each version against its predecessors (newest first), per the contract's mode."""
    out = []
    for i, version in enumerate(contract.versions[1:], start=1):
        older = list(reversed(contract.versions[:i]))
        result = check_compatibility(
            contract.raw_schema(version), [contract.raw_schema(v) for v in older], contract.compatibility
        )
        out += [
            Violation(
                contract.event_type, f"v{version}", f"v{older[p.against_version_index]}", p.direction, p.path, p.reason
            )
            for p in result.problems
        ]
    return out


def _base_violations(registry: ContractRegistry, schemas_dir: Path, base: str) -> list[Violation]:
    """Published versions are immutable: a version present at ``base`` must be unchanged now."""
    out = []
    for event_type, version, old in _schemas_at(schemas_dir, base):
        label = f"v{version}"
        try:
            current = registry.get(event_type).raw_schema(version)
        except ContractError:
            out.append(Violation(event_type, label, base, "-", "<root>", f"schema version removed since {base}"))
            continue
        if _without_docs(current) != _without_docs(old):
            out.append(
                Violation(
                    event_type,
                    label,
                    base,
                    "-",
                    "<root>",
                    f"schema version changed since {base}; publish a new version instead",
                )
            )
    return out


def _schemas_at(schemas_dir: Path, rev: str) -> list[tuple[str, int, Any]]:
    listing = _git(schemas_dir, "ls-tree", "-r", "--full-name", "--name-only", rev, "--", ".")
    found = []
    for full_name in listing.splitlines():
        parts = Path(full_name).parts
        if (
            len(parts) < 2
            or not parts[-1].startswith("v")
            or not parts[-1].endswith(".avsc")
            or not parts[-1][1:-5].isdigit()
        ):
            continue
        text = _git(schemas_dir, "show", f"{rev}:{full_name}")
        try:
            found.append((parts[-2], int(parts[-1][1:-5]), json.loads(text)))
        except ValueError as exc:
            raise InputError(f"{rev}:{full_name}: not valid JSON: {exc}") from exc
    return found


def _git(cwd: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise InputError(f"cannot run git in {display_path(cwd)}: {exc}") from exc
    if proc.returncode != 0:
        raise InputError(f"git {' '.join(args)}: {proc.stderr.strip() or f'exit code {proc.returncode}'}")
    return proc.stdout


def _without_docs(schema: Any) -> Any:
    """Docs may be reworded after publication; everything else about a version is part of it."""
    if isinstance(schema, dict):
        return {k: _without_docs(v) for k, v in schema.items() if k != "doc"}
    if isinstance(schema, list):
        return [_without_docs(v) for v in schema]
    return schema


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------- output
def _report_check(registry: ContractRegistry, violations: list[Violation], base: str | None, as_json: bool) -> None:
    if as_json:
        _print_json(
            {
                "ok": not violations,
                "base": base,
                "contracts": [
                    {"event_type": c.event_type, "versions": list(c.versions), "compatibility": c.compatibility}
                    for c in registry.all()
                ],
                "violations": [v.__dict__ for v in violations],
            }
        )
        return
    if violations:
        table = _table("Event type", "Version", "Against", "Direction", "Field path", "Reason")
        for v in violations:
            _row(table, v.event_type, v.version, v.against, v.direction, v.path, v.reason)
        _out.print(table)
        _out.print(f"[red]{len(violations)} violation(s)[/red]")
        return
    table = _table("Event type", "Versions", "Compatibility")
    for c in registry.all():
        _row(table, c.event_type, ", ".join(f"v{v}" for v in c.versions), c.compatibility)
    _out.print(table)
    _out.print(
        f"[green]ok[/green]: {len(registry.all())} contracts"
        + (f", no published version changed since {base}" if base else "")
    )


def _table(*columns: str) -> Table:
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _row(table: Table, *cells: str) -> None:
    """Cells are data, not markup: ``items[2]`` must print as written."""
    table.add_row(*(escape(c) for c in cells))


def _print_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, indent=2))


def _fail_input(message: str, as_json: bool) -> NoReturn:
    if as_json:
        _print_json({"error": message})
    _err.print(f"[red]error[/red]: {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)
