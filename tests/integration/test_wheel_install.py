"""What a user gets from `pip install choreo-streams`: a wheel built from the source tree,
installed in a fresh venv, with no repository, PYTHONPATH or choreo settings around it.

* the commerce commands (`topology`, `contracts check`, `topics create --dry-run`, a short
  `demo`) find the contracts and schemas the wheel ships;
* `choreo init` scaffolds a project whose own tests pass and whose agent, run by `choreo worker`,
  turns a published event into an output.

The default suite runs both on this interpreter from a wheel built with ``CHOREO_PURE_PYTHON=1``
(the Cython compile was most of the test's time; the compiled modules' parity with their sources is
tests/unit/test_native_parity.py's, on the install the suite runs in). The compiled wheel, on this
interpreter and on the other supported interpreters found on the machine, runs under the soak
marker (each is another build, venv and install).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.wheel_support import build_wheel, clean_env, compiler_available, interpreter, make_venv

pytestmark = pytest.mark.kafka

SUPPORTED = ("3.11", "3.12", "3.13")
COMMAND_TIMEOUT_S = 240


@pytest.fixture(scope="session")
def pure_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this interpreter without its compiled hot path (the default suite's)."""
    return build_wheel(tmp_path_factory.mktemp("wheel"), pure=True)


def _run(bin_dir: Path, args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=clean_env(bin_dir),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        **kwargs,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def check_commerce_commands(bin_dir: Path, cwd: Path, bootstrap: str, *, compiled: bool) -> None:
    """``compiled``: the wheel was built with its Cython modules (so they must be what runs),
    else with ``CHOREO_PURE_PYTHON=1`` (so nothing compiled may run)."""
    version = _ok(_run(bin_dir, ["choreo", "--version"], cwd))
    assert version.startswith("choreo-streams ")
    if compiled and compiler_available():
        assert "hot path: compiled (Cython)" in version, version
    elif not compiled:
        assert "hot path: pure Python" in version, version
    location = _ok(_run(bin_dir, ["python", "-c", "import processors; print(processors.__file__)"], cwd))
    assert Path(location.strip()).is_relative_to(bin_dir.parent), f"imported {location}, not the installed wheel"
    probe = "from processors.localbroker.jars import POM_PATH; print(POM_PATH, POM_PATH.is_file())"
    pom = _ok(_run(bin_dir, ["python", "-c", probe], cwd)).split()
    assert pom[1] == "True" and Path(pom[0]).is_relative_to(bin_dir.parent), pom  # `choreo broker start` can run
    assert "order.created" in _ok(_run(bin_dir, ["choreo", "topology", "--check"], cwd))
    _ok(_run(bin_dir, ["choreo", "contracts", "check"], cwd))
    topics = _ok(_run(bin_dir, ["choreo", "topics", "create", "--dry-run", "--bootstrap", bootstrap], cwd))
    assert "already existed" in topics
    demo = _ok(
        _run(
            bin_dir,
            [
                "choreo",
                "demo",
                "--orders",
                "12",
                "--workers",
                "1",
                "--timeout",
                "15",  # the payment timer must not race a loaded machine
                "--bootstrap",
                bootstrap,
                "--json",
            ],
            cwd,
        )
    )
    summary = json.loads(demo.strip().splitlines()[-1])
    assert summary["orders"] == 12 and summary["non_terminal"] == 0 and not summary["invariant_violations"]
    psp, sink = summary["receivers"]["psp"], summary["receivers"]["sink"]  # the demo started both services
    assert psp["orders_charged"] > 0 and psp["double_charges"] == {}, psp
    assert sink["deliveries"] > 0 and sink["duplicate_notifications"] == [], sink


def check_scaffold(bin_dir: Path, cwd: Path, bootstrap: str) -> None:
    name = f"ff{uuid.uuid4().hex[:6]}"
    project = cwd / "first-project"
    _ok(_run(bin_dir, ["choreo", "init", str(project), "--name", name], cwd))
    # Each test file in a session of its own too: the real-broker test must find the project's
    # contracts by itself, not through an app whose contracts another test already loaded.
    for selection, passed in ((["tests/test_visits_kafka.py"], "1 passed"), ([], "4 passed")):
        tests = subprocess.run(
            [str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
            cwd=project,
            env=clean_env(bin_dir, KAFKA_BOOTSTRAP_SERVERS=bootstrap),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        assert tests.returncode == 0 and passed in tests.stdout, tests.stdout + tests.stderr
    module = name  # no '-' in the name, so the module has the same name
    log = (cwd / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(bin_dir / "choreo"), "worker", "--app", f"{module}.app:app", "--bootstrap", bootstrap],
        cwd=project,
        env=clean_env(bin_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        visitor = f"ada-{uuid.uuid4().hex[:6]}"
        _ok(
            _run(
                bin_dir,
                ["choreo", "publish", "page.viewed", "--bootstrap", bootstrap],
                project,
                input=json.dumps({"visitor": visitor, "page": "/welcome"}),
            )
        )
        deadline = time.monotonic() + 120
        counted: list[dict] = []
        while not counted and time.monotonic() < deadline and worker.poll() is None:
            shown = _run(
                bin_dir,
                [
                    "choreo",
                    "tail",
                    f"{name}.visit.counted",
                    "--from-beginning",
                    "--format",
                    "json",
                    "--bootstrap",
                    bootstrap,
                ],
                project,
            )
            counted = [json.loads(line) for line in shown.stdout.splitlines() if f'"{visitor}"' in line]
        assert counted, f"no visit.counted for {visitor}; worker log:\n{(cwd / 'worker.log').read_text()[-3000:]}"
        assert counted[0]["value"] == {"visitor": visitor, "views": 1, "last_page": "/welcome"}
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(90)
        log.close()
    assert code == 0, (cwd / "worker.log").read_text()[-3000:]


def test_the_wheel_runs_the_commerce_commands_and_a_scaffolded_project(pure_wheel, kafka_bootstrap, tmp_path):
    bin_dir = make_venv(sys.executable, tmp_path / "venv", pure_wheel, "pytest")
    check_commerce_commands(bin_dir, tmp_path, kafka_bootstrap, compiled=False)
    check_scaffold(bin_dir, tmp_path, kafka_bootstrap)


@pytest.mark.soak
@pytest.mark.parametrize("version", SUPPORTED)
def test_the_wheel_on_every_supported_interpreter(version, kafka_bootstrap, tmp_path):
    python = interpreter(version)
    if python is None:
        pytest.skip(f"python{version} is not installed on this machine")
    own_wheel = build_wheel(tmp_path / "wheel", python)  # the compiled modules are per interpreter
    bin_dir = make_venv(python, tmp_path / "venv", own_wheel, "pytest")
    check_commerce_commands(bin_dir, tmp_path, kafka_bootstrap, compiled=True)
    check_scaffold(bin_dir, tmp_path, kafka_bootstrap)
