"""Create (once) and reuse the peer frameworks' virtualenvs.

    .venv/bin/python benchmarks/peers/setup.py [quix] [faust] [--force]

Quix Streams pins confluent-kafka < 2.13 and faust-streaming brings aiokafka and its own
dependency tree, so neither can share the project's venv. Each venv is built under a cache
(`$CHOREO_BENCH_VENVS`, default `~/.cache/choreo-streams/bench-venvs/<peer>-<hash>`) keyed by
the Python version and the exact requirement list, so a fresh clone reuses it and a change of
pins builds a new one. `benchmarks/.venv-<peer>` is a symlink to the one in use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent

# Pinned so that a figure is always "this version of the peer".
REQUIREMENTS: dict[str, list[str]] = {
    # Quix Streams' own Avro support is fastavro; it pins confluent-kafka itself.
    "quix": ["quixstreams==3.28.1", "fastavro>=1.10,<2"],
    # faust's documented RocksDB store (`store="rocksdb://"`) through its rocksdict driver:
    # python-rocksdb / faust-streaming-rocksdb have no wheels for current Pythons.
    "faust": ["faust-streaming[rocksdict]==0.15.3", "fastavro>=1.10,<2"],
}
_READY = ".choreo-bench-ready"


def cache_root() -> Path:
    return Path(os.environ.get("CHOREO_BENCH_VENVS", Path.home() / ".cache" / "choreo-streams" / "bench-venvs"))


def venv_key(peer: str, python: str = sys.executable) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256("\n".join([version, *REQUIREMENTS[peer]]).encode()).hexdigest()[:10]
    return f"{peer}-py{version}-{digest}"


def venv_python(peer: str, force: bool = False, quiet: bool = True) -> Path:
    """The interpreter of `peer`'s venv, building the venv first if needed."""
    if peer not in REQUIREMENTS:
        raise SystemExit(f"unknown peer {peer!r}: expected one of {', '.join(REQUIREMENTS)}")
    target = cache_root() / venv_key(peer)
    python = target / "bin" / "python"
    if force or not (target / _READY).is_file():
        _build(peer, target, quiet)
    link = BENCH_DIR / f".venv-{peer}"
    if link.is_symlink() or not link.exists():
        if link.is_symlink() and os.readlink(link) == str(target):
            return python
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return python


def _build(peer: str, target: Path, quiet: bool) -> None:
    started = time.monotonic()
    print(
        f"[bench] creating the {peer} venv in {target} ({', '.join(REQUIREMENTS[peer])})", file=sys.stderr, flush=True
    )
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    subprocess.run(pip + REQUIREMENTS[peer], check=True)
    (target / _READY).write_text("\n".join(REQUIREMENTS[peer]) + "\n")
    print(f"[bench] {peer} venv ready in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", default=list(REQUIREMENTS))
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached venv exists")
    args = parser.parse_args()
    for peer in args.peers:
        print(venv_python(peer, force=args.force, quiet=False))


if __name__ == "__main__":
    main()
