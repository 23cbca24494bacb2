from __future__ import annotations

from pathlib import Path

import pytest

from processors.settings import Settings, SettingsError


def test_defaults_then_file_then_env_then_overrides(tmp_path: Path):
    config = tmp_path / "choreo.toml"
    config.write_text(
        'bootstrap_servers = "file:9092"\nprocessing_guarantee = "exactly_once"\nmetrics_port = 9100\n'
        '[kafka]\n"security.protocol" = "SASL_SSL"\n"sasl.password" = "hunter2"\n'
    )
    env = {"KAFKA_BOOTSTRAP_SERVERS": "env:9092", "CHOREO_KAFKA_SASL_MECHANISM": "PLAIN"}
    settings = Settings.load(config, env=env, metrics_port=None, state_dir=tmp_path / "state")
    assert settings.bootstrap_servers == "env:9092"
    assert settings.processing_guarantee == "exactly_once"
    assert settings.metrics_port == 9100
    assert settings.state_dir == tmp_path / "state"
    assert settings.kafka == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2", "sasl.mechanism": "PLAIN"}


def test_kafka_properties_pass_through_untouched_and_overrides_win():
    settings = Settings.load(env={"CHOREO_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem", "KAFKA_BOOTSTRAP_SERVERS": "b:1"})
    config = settings.producer_config(**{"linger.ms": 50})
    assert config["bootstrap.servers"] == "b:1"
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert config["partitioner"] == "murmur2_random"
    assert config["linger.ms"] == 50


def test_user_kafka_properties_win_over_producer_defaults():
    settings = Settings.load(env={"CHOREO_KAFKA_LINGER_MS": "20", "CHOREO_KAFKA_PARTITIONER": "consistent_random"})
    config = settings.producer_config()
    assert config["linger.ms"] == "20" and config["partitioner"] == "consistent_random"
    assert config["enable.idempotence"] is True
    assert Settings.load(env={}).processing_guarantee == "exactly_once"


def test_secrets_are_masked_in_the_printable_view():
    settings = Settings.load(env={"CHOREO_KAFKA_SASL_PASSWORD": "hunter2", "CHOREO_KAFKA_SASL_USERNAME": "svc"})
    shown = settings.redacted()
    assert shown["kafka"]["sasl.password"] == "***"
    assert shown["kafka"]["sasl.username"] == "svc"
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("bootstrap = 'x'\n", "unknown key(s) bootstrap"),
        ("metrics_port = 'nine'\n", "metrics_port must be an integer"),
        ("state_memory_mb = 'lots'\n", "state_memory_mb must be an integer"),
        ("state_memory_mb = 0\n", "state_memory_mb: must be a positive number of MiB, got 0"),
        ("processing_guarantee = 'maybe_once'\n", "processing_guarantee: expected at_least_once or exactly_once"),
        ("[kafka\n", "choreo.toml:"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, content: str, message: str):
    config = tmp_path / "choreo.toml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.load(config, env={})


def test_missing_config_file_is_an_error(tmp_path: Path):
    with pytest.raises(SettingsError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", env={})


def test_state_memory_comes_from_the_environment():
    assert Settings.load(env={}).state_memory_mb == 256
    assert Settings.load(env={"CHOREO_STATE_MEMORY_MB": "64"}).state_memory_mb == 64


def test_startup_wait_is_seconds_from_file_or_environment(tmp_path: Path):
    assert Settings.load(env={}).startup_wait_s == 120.0
    assert Settings.load(env={"CHOREO_STARTUP_WAIT_S": "7.5"}).startup_wait_s == 7.5
    config = tmp_path / "choreo.toml"
    config.write_text("startup_wait_s = 0\n")
    assert Settings.load(config, env={}).startup_wait_s == 0.0
    with pytest.raises(SettingsError, match="startup_wait_s must be a number of seconds"):
        Settings.load(env={"CHOREO_STARTUP_WAIT_S": "soon"})
    with pytest.raises(SettingsError, match="startup_wait_s: must be 0"):
        Settings.load(env={"CHOREO_STARTUP_WAIT_S": "-1"})


def test_an_agents_max_in_flight_comes_from_the_file_or_the_environment(tmp_path):
    config = tmp_path / "choreo.toml"
    config.write_text("[agents.order-payments]\nmax_in_flight = 32\n")
    assert Settings.load(config, env={}).max_in_flight("order-payments") == 32
    env = {"CHOREO_AGENT_ORDER_PAYMENTS__MAX_IN_FLIGHT": "128"}
    assert Settings.load(config, env=env).max_in_flight("order-payments") == 128
    assert Settings.load(env={}).max_in_flight("order-payments") is None
    with pytest.raises(SettingsError, match="max_in_flight: must be a whole number of at least 1, got '0'"):
        Settings.load(env={"CHOREO_AGENT_X__MAX_IN_FLIGHT": "0"})
    with pytest.raises(SettingsError, match="agents.x: unknown setting"):
        Settings.load(env={"CHOREO_AGENT_X__MAX_INFLIGHT": "3"})
