"""`choreo init`: write a small runnable project (one agent, its contracts and schemas, a
pure-driver test, a real-broker test, settings and a README) from the templates shipped as
package data, so a new user's first agent runs minutes after `pip install choreo-streams`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from processors.tooling.kafka_io import ToolingError

TEMPLATE_SUFFIX = ".tmpl"
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# Template paths that are renamed on the way out: the package directory gets the module name,
# and a dotfile cannot be package data on every build backend.
_RENAMES = {"app": "{module}", "gitignore": ".gitignore"}


@dataclass(frozen=True)
class Scaffold:
    """What `choreo init` wrote."""

    root: Path
    name: str
    module: str
    files: list[Path]

    @property
    def app_spec(self) -> str:
        return f"{self.module}.app:app"


def project_name(directory: Path, name: str | None) -> str:
    """The project name (app id and topic prefix): ``--name``, else the directory's name, lowered;
    letters, digits and '-' only, starting with a letter, since it names topics and a module."""
    candidate = name if name is not None else re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")
    if not _NAME.match(candidate):
        raise ToolingError(
            f"project name {candidate!r}: use lower-case letters, digits and '-', starting with a letter (--name)"
        )
    return candidate


def scaffold(directory: Path, name: str | None = None) -> Scaffold:
    """Write the project into ``directory`` (created if missing). Refuses to overwrite a file, so
    running it twice, or in a directory with a project, changes nothing."""
    project = project_name(directory, name)
    module = project.replace("-", "_")
    values = {"name": project, "module": module}
    planned = [(_target(directory, rel, module), source) for rel, source in _templates()]
    clashes = [str(target) for target, _ in planned if target.exists()]
    if clashes:
        raise ToolingError(f"{directory}: would overwrite {', '.join(clashes)}; choose an empty directory")
    written = []
    for target, source in planned:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(source.read_text(encoding="utf-8")).substitute(values), encoding="utf-8")
        written.append(target)
    return Scaffold(directory, project, module, written)


def _templates() -> list[tuple[tuple[str, ...], Traversable]]:
    root = resources.files("processors.tooling") / "scaffold_templates"
    found: list[tuple[tuple[str, ...], Traversable]] = []

    def walk(node: Traversable, parts: tuple[str, ...]) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                walk(child, (*parts, child.name))
            elif child.name.endswith(TEMPLATE_SUFFIX):
                found.append(((*parts, child.name[: -len(TEMPLATE_SUFFIX)]), child))

    walk(root, ())
    if not found:
        raise ToolingError("the scaffold templates are missing from this installation (processors/tooling)")
    return found


def _target(directory: Path, rel: tuple[str, ...], module: str) -> Path:
    parts = [_RENAMES.get(part, part).format(module=module) if i == 0 else part for i, part in enumerate(rel)]
    return directory.joinpath(*parts)
