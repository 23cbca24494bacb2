"""Build hook, nothing else (the metadata is in pyproject.toml).

A wheel has no repository around it, so the directories the package reads at run time that live
at the top of the source tree (the commerce ``contracts/`` and ``schemas/``, the broker's
``ops/kafka/`` Maven project) are copied into the built package as ``processors/_data/<name>``.
``processors.settings.packaged_dir`` finds them there, or in the checkout for editable installs.
The mapping is ``processors.settings.PACKAGED_DATA``; it is repeated here because the build must
not import the package it builds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGED_DATA = {"contracts": "contracts", "schemas": "schemas", "kafka": "ops/kafka"}


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


setup(cmdclass={"build_py": BuildPyWithData})
