"""Which build of the per-record leaf modules is imported: compiled (Cython) or pure Python.

``setup.py`` compiles the modules of :data:`NATIVE_MODULES`, as they are, into extension modules
beside their ``.py`` files, and records each one's source digest in ``processors/_native.json``.
CPython's import prefers an extension module over a ``.py`` of the same name; :func:`install`
(run by ``processors/__init__.py``, before any of these modules is imported) puts a finder in front
that imports the ``.py`` instead whenever the compiled module must not be used:

* ``CHOREO_PURE_PYTHON=1`` in the environment (read once, at import: it cannot come from the
  settings file, which is read after the modules are imported);
* the module is not in the manifest (never built, or its build failed);
* its ``.py`` is not the source it was compiled from (edited since the last ``pip install -e .``):
  an edit is never shadowed by a stale build; ``choreo --version`` says so and a rebuild fixes it.

There is one module object per name either way (never both builds at once), so classes and
``isinstance`` checks are unaffected. The pure-Python sources are the reference: the compiled
build is the same code, and ``tests/unit/test_native_parity.py`` compares the two.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Repeated in setup.py (the build must not import the package it builds); a unit test keeps them equal.
NATIVE_MODULES = (
    "processors.contracts.codegen",
    "processors.contracts.envelope",
    "processors.contracts.ids",
    "processors.contracts.slotted",
    "processors.kafka_types",
    "processors.runtime._processor",
    "processors.runtime.audit",
    "processors.runtime.context",
    "processors.runtime.emitter",
    "processors.runtime.state.store",
)
PURE_ENV = "CHOREO_PURE_PYTHON"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_native.json"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Choice:
    """The build chosen for one module, and why the pure one when it is."""

    module: str
    compiled: bool
    reason: str  # "" when compiled


def forced_pure(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment forces the pure-Python modules (``CHOREO_PURE_PYTHON=1``)."""
    value = (os.environ if env is None else env).get(PURE_ENV, "")
    return value.strip().lower() in _TRUE


def source_path(module: str, root: Path = PACKAGE_DIR) -> Path:
    """The ``.py`` of one of the package's modules."""
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def read_manifest(path: Path = MANIFEST) -> dict[str, dict[str, str]]:
    """The build's record of the compiled modules: name -> {"file", "sha256"}; empty when none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    modules = data.get("modules") if isinstance(data, dict) else None
    return modules if isinstance(modules, dict) else {}


def choose(
    modules: Sequence[str] = NATIVE_MODULES,
    env: Mapping[str, str] | None = None,
    root: Path = PACKAGE_DIR,
    manifest: Path | None = None,
) -> list[Choice]:
    """Which build each module is to be imported from (decided without importing any)."""
    if forced_pure(env):
        return [Choice(m, False, f"{PURE_ENV}=1") for m in modules]
    built = read_manifest(root / MANIFEST.name if manifest is None else manifest)
    choices = []
    for module in modules:
        entry = built.get(module)
        source = source_path(module, root)
        if not isinstance(entry, dict):
            choices.append(Choice(module, False, "not compiled"))
        elif entry.get("file") not in _extension_names(module):  # e.g. built by another Python version
            choices.append(Choice(module, False, "compiled for another interpreter"))
        elif not (source.parent / str(entry.get("file", ""))).is_file():
            choices.append(Choice(module, False, "compiled file missing"))
        elif _digest(source) != entry.get("sha256"):
            choices.append(Choice(module, False, "source changed since it was compiled: reinstall to rebuild"))
        else:
            choices.append(Choice(module, True, ""))
    return choices


def _extension_names(module: str) -> set[str]:
    """The file names this interpreter would import ``module``'s compiled build from."""
    leaf = module.rpartition(".")[2]
    return {leaf + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES}


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Imports the named modules from their ``.py`` files, whatever else lies beside them."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path or ():
            candidate = Path(entry) / leaf
            if candidate.is_file():
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


_choices: list[Choice] = []


def install() -> None:
    """Decide once per process and put the finder for the pure-Python modules in place."""
    if _choices:
        return
    _choices.extend(choose())
    pure = frozenset(c.module for c in _choices if not c.compiled)
    if pure:
        sys.meta_path.insert(0, _SourceFinder(pure))


def is_compiled(module: ModuleType) -> bool:
    """Whether an imported module is an extension module (not loaded from a ``.py``)."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def in_use() -> dict[str, bool]:
    """Module -> whether its compiled build is the one imported (imports them to tell)."""
    import importlib

    return {m: is_compiled(importlib.import_module(m)) for m in NATIVE_MODULES}


def summary() -> str:
    """One line for ``choreo --version`` and the worker's start: which build runs, and why."""
    used = in_use()
    compiled = sum(used.values())
    if compiled == len(used):
        return f"hot path: compiled (Cython), {compiled} modules"
    why = {c.module: c.reason for c in _choices if not c.compiled}
    reasons = sorted({why.get(m, "the compiled build did not load") for m, used_c in used.items() if not used_c})
    if compiled == 0:
        return f"hot path: pure Python ({'; '.join(reasons)})"
    return f"hot path: {compiled} of {len(used)} modules compiled, the rest pure Python ({'; '.join(reasons)})"
