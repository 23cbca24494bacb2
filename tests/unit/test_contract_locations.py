"""One rule for where contracts come from, the same for App, the test driver, the worker's
settings and the commands: the argument, then CHOREO_CONTRACTS_DIR or the config file (paths
relative to the file), then the commerce contracts shipped with the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processors.cli.main import app as cli
from processors.contracts import ContractRegistry
from processors.runtime import App
from processors.runtime.testing import AgentDriver
from processors.settings import REPO_ROOT, Settings, contract_dirs, packaged_dir

EXAMPLE = REPO_ROOT / "examples" / "counter"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("CHOREO_CONTRACTS_DIR", "CHOREO_SCHEMAS_DIR", "CHOREO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _counter_app() -> App:
    app = App("rule-test")

    @app.agent("counter", consumes=["counter.incremented"], produces=["counter.total"])
    def count(event, ctx):
        ctx.emit("counter.total", event.key, {"name": event.key, "total": event.value["by"], "seq": 1})

    return app


def test_the_default_is_the_packaged_commerce_contracts(clean_env: Path):
    assert contract_dirs() == (packaged_dir("contracts"), packaged_dir("schemas"))
    assert "order.created" in ContractRegistry.load().event_types()
    assert Settings.load(env={}).contracts_dir == packaged_dir("contracts")


def test_the_environment_then_the_argument(clean_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CHOREO_CONTRACTS_DIR", str(EXAMPLE / "contracts"))
    monkeypatch.setenv("CHOREO_SCHEMAS_DIR", str(EXAMPLE / "schemas"))
    app = _counter_app()  # no dirs given: the settings decide, outside a worker too
    assert app.registry.event_types() == ["counter.incremented", "counter.total"]
    result = AgentDriver(app, "counter").send("counter.incremented", {"name": "a", "by": 2})
    assert result.outcome == "PROCESSED"
    given = App("given", contracts_dir=REPO_ROOT / "contracts", schemas_dir=REPO_ROOT / "schemas")
    assert "order.created" in given.registry.event_types()  # the argument wins over the environment


def test_a_project_choreo_toml_with_paths_relative_to_itself(clean_env: Path, tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE / "contracts", project / "contracts")
    shutil.copytree(EXAMPLE / "schemas", project / "schemas")
    (project / "choreo.toml").write_text('contracts_dir = "contracts"\nschemas_dir = "schemas"\n')
    settings = Settings.load(project / "choreo.toml", env={})
    assert settings.contracts_dir == project / "contracts" and settings.config_file == project / "choreo.toml"
    settings_from_cwd = Settings.load(env={"CHOREO_CONFIG": str(project / "choreo.toml")})
    assert settings_from_cwd.schemas_dir == project / "schemas"
    app = _counter_app()
    app.configure(settings)  # what the worker does with its settings
    assert app.registry.event_types() == ["counter.incremented", "counter.total"]


def test_commands_take_the_same_rule(clean_env: Path, monkeypatch: pytest.MonkeyPatch):
    runner = CliRunner()
    assert runner.invoke(cli, ["contracts", "check"]).exit_code == 0  # the packaged commerce contracts
    env = {"CHOREO_CONTRACTS_DIR": str(EXAMPLE / "contracts"), "CHOREO_SCHEMAS_DIR": str(EXAMPLE / "schemas")}
    checked = runner.invoke(cli, ["contracts", "check", "--json"], env=env)
    assert checked.exit_code == 0 and "counter.incremented" in checked.output and "order.created" not in checked.output
    drawn = runner.invoke(cli, ["topology", "--app", "examples.counter.app:app"], env=env)
    assert drawn.exit_code == 0 and "counter" in drawn.output
    missing = runner.invoke(cli, ["contracts", "check", "--contracts-dir", "nowhere"])
    assert missing.exit_code == 2 and "CHOREO_CONTRACTS_DIR" in missing.output


def test_a_missing_directory_says_how_to_point_at_one(clean_env: Path):
    with pytest.raises(Exception, match="CHOREO_CONTRACTS_DIR or contracts_dir in choreo.toml"):
        ContractRegistry.load(clean_env / "none", clean_env / "none")


def test_an_app_configured_again_follows_the_latest_settings(clean_env: Path):
    """One process, several commands or tests: the settings of each decide, not the first ones."""
    app = _counter_app()
    app.configure(Settings.load(env={}))
    assert "order.created" in app.registry.event_types()
    example = {"CHOREO_CONTRACTS_DIR": str(EXAMPLE / "contracts"), "CHOREO_SCHEMAS_DIR": str(EXAMPLE / "schemas")}
    app.configure(Settings.load(env=example))
    assert app.registry.event_types() == ["counter.incremented", "counter.total"]
    assert app.codec.registry is app.registry
    given = App("given", contracts_dir=EXAMPLE / "contracts", schemas_dir=EXAMPLE / "schemas")
    given.configure(Settings.load(env={}))
    assert given.registry.event_types() == ["counter.incremented", "counter.total"]  # the argument stays
