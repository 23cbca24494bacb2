"""`choreo init`: the project it writes, its refusals, and its pure-driver tests passing with the
code of this checkout (the wheel test runs the whole project, worker included, from a wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from processors.cli.main import app
from processors.settings import REPO_ROOT

runner = CliRunner()


def test_init_writes_a_project_named_after_its_directory(tmp_path: Path):
    result = runner.invoke(app, ["init", str(tmp_path / "Shop Front")])
    assert result.exit_code == 0, result.output
    root = tmp_path / "Shop Front"
    expected = {
        "README.md",
        "choreo.toml",
        "pyproject.toml",
        ".gitignore",
        "contracts/page.viewed.yaml",
        "contracts/visit.counted.yaml",
        "schemas/page.viewed/v1.avsc",
        "schemas/visit.counted/v1.avsc",
        "shop_front/__init__.py",
        "shop_front/app.py",
        "tests/conftest.py",
        "tests/test_visits.py",
        "tests/test_visits_kafka.py",
    }
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == expected
    assert "topic: shop-front.page.viewed" in (root / "contracts/page.viewed.yaml").read_text()
    readme = (root / "README.md").read_text()
    for command in ("choreo broker start", "python -m pytest", "choreo worker --app shop_front.app:app"):
        assert command in readme and command in result.output
    assert "$" not in (root / "shop_front/app.py").read_text()  # every placeholder filled


def test_init_refuses_to_overwrite_and_bad_names(tmp_path: Path):
    assert runner.invoke(app, ["init", str(tmp_path / "p"), "--name", "shop"]).exit_code == 0
    again = runner.invoke(app, ["init", str(tmp_path / "p"), "--name", "shop"])
    assert again.exit_code == 2 and "would overwrite" in again.output
    bad = runner.invoke(app, ["init", str(tmp_path / "q"), "--name", "Bad_Name"])
    assert bad.exit_code == 2 and "--name" in bad.output and not (tmp_path / "q").exists()


def test_the_scaffolds_driver_tests_pass(tmp_path: Path):
    assert runner.invoke(app, ["init", str(tmp_path / "visits"), "--name", "visits"]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_visits.py"],
        cwd=tmp_path / "visits",
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout + done.stderr


COMMERCE_COMMANDS = [
    ["topics", "list"],
    ["topics", "describe"],
    ["topics", "create", "--dry-run"],
    ["topology"],
    ["demo"],
    ["verify"],
    ["worker", "--app", "processors.agents.app:app"],
]


def test_commands_of_the_commerce_app_in_a_project_say_so_in_one_line(tmp_path: Path, monkeypatch):
    """In a scaffolded project, whose choreo.toml names its own contracts, a command that runs the
    commerce app (the default --app of topics/topology; demo and verify always) is refused before
    anything touches Kafka, in one bounded line naming the cause and the way out — not an unknown
    event type deep in a plan, nor one clause per agent and event type."""
    assert runner.invoke(app, ["init", str(tmp_path / "shop"), "--name", "shop"]).exit_code == 0
    for name in list(os.environ):
        if name.startswith("CHOREO_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path / "shop")
    for command in COMMERCE_COMMANDS:
        offline = [] if command == ["topology"] else ["--bootstrap", "127.0.0.1:1"]  # never reached
        result = runner.invoke(app, [*command, *offline])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2, (command, result.output)
        assert len(errors) == 1 and len(errors[0]) < 400, (command, result.output)
        assert "no contract in" in errors[0] and "more)" in errors[0], (command, errors)
        assert ("--app" if command[0] in ("topics", "topology", "worker") else "--config") in errors[0]
    own = runner.invoke(app, ["topology", "--app", "shop.app:app"])
    assert own.exit_code == 0 and "page.viewed" in own.output, own.output
