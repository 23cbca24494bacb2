"""One configuration, everywhere: every command that talks to Kafka resolves bootstrap_servers
by the same rule (--bootstrap, then CHOREO_BOOTSTRAP_SERVERS / KAFKA_BOOTSTRAP_SERVERS, then
--config or ./choreo.toml), and only demo, verify and roundtrip fall back to the local broker —
when nothing at all is configured, saying so."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from processors.cli.main import app
from processors.settings import Settings
from processors.tooling import cli_support

COMMANDS = [
    ["tail", "some.topic"],
    ["publish", "order.created"],
    ["replay", "--from", "a", "--to", "b"],
    ["dlq", "list"],
    ["dlq", "show", "some.topic"],
    ["dlq", "redrive", "some.topic", "--all"],
    ["topics", "list"],
    ["topics", "describe"],
    ["topics", "create", "--dry-run"],
    ["worker", "--app", "examples.counter.app:app"],
    ["roundtrip"],
    ["demo"],
    ["verify"],
]
IDS = [" ".join(c[:2]) for c in COMMANDS]


class Resolved(Exception):
    """Raised by the patched Settings.load with what it resolved, before anything touches Kafka."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in list(os.environ):
        if name.startswith("CHOREO_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    original = Settings.load.__func__  # type: ignore[attr-defined]

    def load(cls: type[Settings], *args: Any, **kwargs: Any) -> Settings:
        raise Resolved(original(cls, *args, **kwargs))

    monkeypatch.setattr(Settings, "load", classmethod(load))

    def run(args: list[str], env: dict[str, str] | None = None) -> Settings:
        result = CliRunner().invoke(app, args, env=env or {})
        assert isinstance(result.exception, Resolved), f"{args}: {result.exception!r}\n{result.output}"
        return result.exception.settings

    return run


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_every_command_resolves_the_bootstrap_servers_by_the_same_rule(resolved, command, tmp_path: Path):
    assert resolved(command, {"KAFKA_BOOTSTRAP_SERVERS": "env:1"}).bootstrap_servers == "env:1"
    both = {"KAFKA_BOOTSTRAP_SERVERS": "env:1", "CHOREO_BOOTSTRAP_SERVERS": "choreo:1"}
    assert resolved(command, both).bootstrap_servers == "choreo:1"
    (tmp_path / "choreo.toml").write_text('bootstrap_servers = "file:1"\n')
    found = resolved(command)
    assert (found.bootstrap_servers, found.bootstrap_source) == ("file:1", "config file choreo.toml")
    (tmp_path / "other.toml").write_text('bootstrap_servers = "other:1"\n')
    assert resolved([*command, "--config", "other.toml"]).bootstrap_servers == "other:1"
    assert resolved([*command, "--config", "other.toml"], {"KAFKA_BOOTSTRAP_SERVERS": "env:1"}).bootstrap_servers == (
        "env:1"
    )
    by_option = resolved([*command, "--bootstrap", "arg:1"], both)
    assert (by_option.bootstrap_servers, by_option.bootstrap_source) == ("arg:1", "argument")
    (tmp_path / "empty.toml").write_text("")
    assert not resolved([*command, "--config", "empty.toml"]).bootstrap_configured


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_every_command_takes_config_and_bootstrap(command):
    name = command[:2] if command[0] in ("dlq", "topics") else command[:1]
    result = CliRunner().invoke(app, [*name, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output and "--bootstrap" in result.output


def test_the_local_broker_is_started_only_when_nothing_is_configured(monkeypatch, capsys, tmp_path: Path):
    for name in list(os.environ):
        if name.startswith("CHOREO_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    started: list[None] = []

    def ensure_broker(bootstrap: str | None) -> str:
        started.append(None)
        return "127.0.0.1:19092"

    monkeypatch.setattr("processors.localbroker.embedded.ensure_broker", ensure_broker)
    settings = cli_support.settings_or_local_broker(None, None)
    assert settings.bootstrap_servers == "127.0.0.1:19092" and started == [None]
    assert "no bootstrap_servers configured" in capsys.readouterr().err
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "cluster:9092")
    settings = cli_support.settings_or_local_broker(None, None)
    assert settings.bootstrap_servers == "cluster:9092" and started == [None]  # not started again
    assert "cluster:9092 (from environment KAFKA_BOOTSTRAP_SERVERS)" in capsys.readouterr().err
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    (tmp_path / "choreo.toml").write_text('bootstrap_servers = "file:9092"\n')
    assert cli_support.settings_or_local_broker(None, None).bootstrap_servers == "file:9092" and len(started) == 1


def test_the_tools_group_id_is_a_setting(monkeypatch):
    from processors.tooling.kafka_io import reader_config

    assert reader_config(Settings.load(env={}))["group.id"] == "choreo-tools"
    custom = Settings.load(env={"CHOREO_TOOLS_GROUP_ID": "ops-readers"})
    assert reader_config(custom)["group.id"] == "ops-readers"
