"""Build hook, nothing else (the metadata is in pyproject.toml).

A wheel has no repository around it, so the directories the package reads at run time that live
at the top of the source tree (the commerce ``contracts/`` and ``schemas/``, the broker's
``ops/kafka/`` Maven project) are copied into the built package as ``processors/_data/<name>``.
``processors.settings.packaged_dir`` finds them there, or in the checkout for editable installs.
The mapping is ``processors.settings.PACKAGED_DATA``; it is repeated here because the build must
not import the package it builds.

The per-record leaf modules (``NATIVE_MODULES``) are also compiled with Cython, as they are (plain
Python, no ``.pyx``), into extension modules of the same name beside their ``.py``. The build is
optional: without Cython, without a C compiler, with ``CHOREO_PURE_PYTHON=1`` at build time, or if
one module fails to compile, the install still succeeds and the pure-Python modules are used (a
warning says why). Each compiled module's source digest goes into ``processors/_native.json``, so
at run time ``processors._native`` uses a compiled module only while its ``.py`` is the one it was
built from (an edited source is never shadowed by a stale build). The list is
``processors._native.NATIVE_MODULES``; it is repeated here for the same reason as above, and a
unit test keeps the two equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGED_DATA = {"contracts": "contracts", "schemas": "schemas", "kafka": "ops/kafka"}
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
MANIFEST = "processors/_native.json"
# Cython directives: the modules stay plain Python in behaviour. Annotations are not C types
# (``x: str`` would refuse a str subclass such as a StrEnum), ``binding`` keeps functions
# introspectable (inspect.signature, __defaults__), and Python's own semantics for division,
# overflow and exceptions are kept as they are by default.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True, "embedsignature": False}


def _warn(message: str) -> None:
    print(f"choreo-streams build: {message}; the pure-Python modules will be used", file=sys.stderr)


def _source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    """What ``processors._native`` compares at import: the sha256 of the module's source."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def native_extensions() -> list[Any]:
    """The Cython extensions, or none (with a warning) when they cannot or must not be built."""
    if os.environ.get("CHOREO_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes", "on"):
        _warn("CHOREO_PURE_PYTHON is set, nothing compiled")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed, nothing compiled")
        return []
    extensions = [Extension(m, [str(_source(m).relative_to(ROOT))], optional=True) for m in NATIVE_MODULES]
    try:
        return list(
            cythonize(
                extensions,
                compiler_directives=DIRECTIVES,
                build_dir="build/cython",
                quiet=True,
                nthreads=os.cpu_count() or 0,
            )
        )
    except Exception as exc:  # noqa: BLE001 - any Cython failure leaves the pure modules in use
        _warn(f"Cython failed ({type(exc).__name__}: {exc})")
        return []


class OptionalBuildExt(build_ext):
    """``build_ext`` that never fails the install, and records what it built in the manifest."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1  # the modules compile independently

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler at all, a broken toolchain
            _warn(f"compiling failed ({type(exc).__name__}: {exc})")
        self._write_manifest()

    def build_extension(self, ext: Any) -> None:
        if self.compiler.compiler_type == "unix":
            # -O2 without debug info: ~40% less compile time than Python's own -O3 -g (codegen.c:
            # 7.6 -> 4.7 s of CPU), which every fresh install and the wheel test pay
            ext.extra_compile_args = [*ext.extra_compile_args, "-O2", "-g0"]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - one module that does not compile stays pure
            _warn(f"{ext.name} did not compile ({type(exc).__name__}: {exc})")

    def _write_manifest(self) -> None:
        built = {}
        for ext in self.extensions:
            path = Path(self.get_ext_fullpath(ext.name))
            if path.is_file():
                built[ext.name] = {"file": path.name, "sha256": digest(_source(ext.name))}
        target = ROOT / MANIFEST if self.inplace else Path(self.build_lib) / MANIFEST
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"modules": built}, indent=1, sort_keys=True) + "\n")


class BuildPyWithData(build_py):
    """``build_py`` that also copies the top-level data directories into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        for name, source in PACKAGED_DATA.items():
            dest = Path(self.build_lib) / "processors" / "_data" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(ROOT / source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData, "build_ext": OptionalBuildExt}, ext_modules=native_extensions())
