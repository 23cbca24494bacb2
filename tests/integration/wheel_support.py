"""Build the wheel from a clean copy of the source tree and install it into fresh venvs, so tests
see exactly what `pip install choreo-streams` gives a user: no repository around the package, no
PYTHONPATH, no choreo settings in the environment. Dependencies come from the package index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600


def source_copy(dest: Path) -> Path:
    """The files git knows (tracked, and untracked but not ignored), so a stale build/ or
    egg-info of the working tree cannot leak into the wheel."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def build_wheel(workdir: Path, python: str = sys.executable, *, pure: bool = False) -> Path:
    """The wheel ``python`` builds (with the hot path compiled for that interpreter when it can).
    ``pure`` builds it with ``CHOREO_PURE_PYTHON=1``: the Cython compile is most of a build's time,
    and a test of what the wheel ships (commands, data files, scaffold) does not need it."""
    tree = source_copy(workdir / "src")
    out = workdir / "dist"
    env = clean_env(CHOREO_PURE_PYTHON="1") if pure else clean_env()
    subprocess.run(
        [python, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(tree)],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
        env=env,
    )
    return next(out.glob("choreo_streams-*.whl"))


def compiler_available() -> bool:
    """Whether the C compiler this interpreter builds extensions with is on the machine (then a
    wheel built here must carry the compiled hot path; setup.py)."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    return bool(compiler) and shutil.which(compiler[0]) is not None


def clean_env(bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user who only installed the package: no settings of ours, no
    PYTHONPATH, the venv first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHOREO_", "PYTHON", "VIRTUAL_ENV", "PYTEST")) and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def make_venv(python: str, where: Path, wheel: Path, *extras: str) -> Path:
    """A fresh venv of ``python`` with the wheel (and ``extras``, e.g. pytest) installed; its bin dir."""
    subprocess.run([python, "-m", "venv", str(where)], check=True, timeout=120, env=clean_env())
    bin_dir = where / "bin"
    subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel),
            *extras,
        ],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
        env=clean_env(bin_dir),
    )
    return bin_dir


def interpreter(version: str) -> str | None:
    """A working ``python<version>`` on this machine (on PATH, or a pyenv version whose shim is
    not selected), or None when there is none."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        if probe.returncode == 0:  # a pyenv shim of a version that is not selected fails here
            return candidate
    return None
