"""A worker's default id is the same for the same host and state directory, whatever the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processors.runtime.supervisor import default_worker_id


def _in_another_process(state_dir: Path) -> str:
    code = (
        "import sys; from processors.runtime.supervisor import default_worker_id; print(default_worker_id(sys.argv[1]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(state_dir)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_stable_across_processes_and_spellings_of_the_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    here = default_worker_id(state)
    assert _in_another_process(state) == here
    assert default_worker_id(tmp_path / "x" / ".." / "state") == here
    assert str(os.getpid()) not in here.split("-")


def test_another_state_directory_is_another_worker(tmp_path: Path) -> None:
    assert default_worker_id(tmp_path / "a") != default_worker_id(tmp_path / "b")
