"""Every command's --help renders: each option's default is shown, a "[default: ...]" written in
a help text survives rendering, and each MODULE:ATTR example named in help exists."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from processors.cli.main import app

ROOT = typer.main.get_command(app)
EXAMPLE = re.compile(r"\b([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+):([A-Za-z_]\w*)\b")


# typer carries its own click: commands and parameters are taken by what they have, not their class.
def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(ROOT))


def _flat(text: str) -> str:
    """Without whitespace: help is wrapped to the terminal, which splits words anywhere."""
    return "".join(text.split())


def _help(path: tuple[str, ...], *, flat: bool = True) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return _flat(result.output) if flat else " ".join(result.output.split())


def _shown_default(param: Any) -> str | None:
    default = param.default
    if default is None or default is False or default == [] or default == () or callable(default):
        return None
    if getattr(param, "show_default", None) is False or getattr(param, "hidden", False):
        return None
    if getattr(param, "is_flag", False):
        return None
    return str(getattr(default, "value", default))


def test_the_command_tree_is_complete():
    names = {" ".join(path) for path, _ in COMMANDS}
    for expected in ("init", "topics create", "topics list", "topics describe", "worker", "demo", "verify"):
        assert expected in names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "choreo")
def test_help_shows_every_default(path: tuple[str, ...]):
    command = dict(COMMANDS)[path]
    shown = _help(path)
    for param in command.params:
        if param.name == "help":
            continue
        default = _shown_default(param)
        if default is not None:
            assert _flat(f"[default: {default}") in shown, (
                f"{' '.join(path)} {param.name}: default {default!r} not shown"
            )
        written = getattr(param, "help", None) or ""
        for note in re.findall(r"\[default: [^\]]*\]", written):
            assert _flat(note) in shown, f"{' '.join(path)} {param.name}: {note!r} was lost in rendering"


def test_help_examples_name_modules_that_import():
    examples = set()
    for path, _ in COMMANDS:
        examples.update(EXAMPLE.findall(_help(path, flat=False)))
    assert ("processors.agents.app", "app") in examples  # the worker's and topology's example
    for module, attr in sorted(examples):
        assert hasattr(importlib.import_module(module), attr), f"help names {module}:{attr}, which does not exist"


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    first, hot_path = result.output.strip().splitlines()
    assert first == f"choreo-streams {version('choreo-streams')}"
    assert hot_path.startswith("hot path: ")  # compiled or pure Python, and why (test_native_parity.py)
