"""One settings object for every command and worker.

Sources, later ones winning: built-in defaults, a TOML file (``--config``, ``CHOREO_CONFIG`` or
``./choreo.toml``), then environment variables, then explicit arguments (CLI options). Relative
paths in the file are relative to the file, so a project's ``choreo.toml`` works from anywhere.

Where contracts come from, everywhere (``App``, the test driver, the worker, every command): the
explicit argument (``App(contracts_dir=...)``, ``--contracts-dir``), else ``CHOREO_CONTRACTS_DIR``
or the file's ``contracts_dir``, else the commerce contracts shipped with the package
(:func:`packaged_dir`); the same for schemas. Kafka client properties are passed through to
confluent-kafka untouched, so SASL, TLS and any librdkafka tuning work without code changes:

* in the file, every key of the ``[kafka]`` table, e.g. ``"security.protocol" = "SASL_SSL"``;
* in the environment, ``CHOREO_KAFKA_<PROPERTY>`` with dots written as underscores,
  e.g. ``CHOREO_KAFKA_SASL_MECHANISM=PLAIN`` becomes ``sasl.mechanism``.

The limits of an agent's external dependencies (timeout, bulkhead, rate limit, retries; see
:mod:`processors.runtime.dependencies`) are set the same two ways, over what the agent declares:

* in the file, a ``[dependencies.<name>]`` table, e.g. ``[dependencies.payment-gateway]`` with
  ``timeout_s = 2.0``;
* in the environment, ``CHOREO_DEPENDENCY_<NAME>__<LIMIT>`` with the name's dashes written as
  underscores, e.g. ``CHOREO_DEPENDENCY_PAYMENT_GATEWAY__RATE_PER_S=50``.

Per agent, ``[agents.<name>]`` in the file (``max_in_flight = 128``) or
``CHOREO_AGENT_<NAME>__<SETTING>`` in the environment (``CHOREO_AGENT_PAYMENTS__MAX_IN_FLIGHT=128``)
change what the agent declares: how many inputs of different keys it handles at once.

Secrets are never printed: :meth:`Settings.redacted` masks any property whose name suggests one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from processors.client_logging import with_client_hooks
from processors.errors import ChoreoError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOOLS_GROUP_ID = "choreo-tools"
REPO_ROOT = Path(__file__).resolve().parent.parent
_PACKAGED_DATA = Path(__file__).resolve().parent / "_data"
_SECRET_MARKERS = ("password", "secret", "token", "key.pem", "private", "credentials", "sasl.jaas")
_KAFKA_ENV_PREFIX = "CHOREO_KAFKA_"
_DEPENDENCY_ENV_PREFIX = "CHOREO_DEPENDENCY_"
_AGENT_ENV_PREFIX = "CHOREO_AGENT_"
AGENT_SETTINGS = frozenset({"max_in_flight"})  # what [agents.<name>] may set


# Directories of the source tree a wheel carries inside the package, as processors/_data/<name>
# (setup.py copies them at build time): name -> path in the source checkout.
PACKAGED_DATA = {"contracts": "contracts", "schemas": "schemas", "kafka": "ops/kafka"}


def packaged_dir(name: str) -> Path:
    """A directory the project ships (``contracts``, ``schemas``, ``kafka``): the copy a wheel
    carries inside the package (``processors/_data/<name>``), else the source checkout's
    (editable installs and the repository itself)."""
    packaged = _PACKAGED_DATA / name
    return packaged if packaged.is_dir() else REPO_ROOT / PACKAGED_DATA[name]


class SettingsError(ChoreoError, ValueError):
    """A setting is missing or malformed; the message names the source and the key."""


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    kafka: Mapping[str, str] = field(default_factory=dict)
    schema_registry_url: str | None = None
    contracts_dir: Path = field(default_factory=lambda: packaged_dir("contracts"))
    schemas_dir: Path = field(default_factory=lambda: packaged_dir("schemas"))
    state_dir: Path = Path(".state")
    processing_guarantee: str = "exactly_once"
    state_memory_mb: int = 256  # RocksDB block cache + memtables of all the state stores of a worker process
    metrics_port: int | None = None
    # Warm standbys: > 0 makes each agent keep copies of the stores of the partitions it does not
    # own, so a takeover after a crash restores only the tail (see _standby.py for the rule).
    standby_replicas: int = 0
    # Worker processes of one `choreo worker` (--processes): each a member of every agent's group,
    # so a machine's cores are used (one process runs all its agents under one interpreter lock).
    processes: int = 1
    log_level: str = "INFO"
    # The one consumer group id the tools (tail, dlq, replay, verify, publish checks) give their
    # readers: they assign partitions and never commit, but the client still names a group, and a
    # secured cluster's ACLs must allow it. `roundtrip` joins `<tools_group_id>.roundtrip.<random>`.
    tools_group_id: str = DEFAULT_TOOLS_GROUP_ID
    # How long a worker waits at start-up for a cluster that does not answer (it retries with
    # backoff meanwhile) before it exits 1 naming the cause; 0 waits without end. A broker being
    # restarted is waited out; one that never comes is reported, so an orchestrator sees it.
    startup_wait_s: float = 120.0
    # Per external dependency (name with dashes as underscores, lower case): limit -> value, over
    # what the agent declares. Parsed and checked by processors.runtime.dependencies.
    dependencies: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Per agent (name with dashes and dots as underscores, lower case): setting -> value, over what
    # the agent declares (AGENT_SETTINGS: max_in_flight).
    agents: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # How often an agent commits (like Kafka Streams' commit.interval.ms): its work stays open across
    # polls until this much time has passed since its first record (or a size bound is reached), so
    # paced load pays one transaction (exactly_once) or one offset commit (at_least_once) per
    # interval, not per small batch. Adds at most this plus one batch to a hop's latency under
    # exactly_once (outputs are visible at the commit); 0 commits every poll's batch.
    commit_interval_ms: int = 100
    # ...but commit before the interval is up once no input has come for this long (0: never): an
    # idle agent has nothing to amortise a commit over, so waiting out the interval only adds latency.
    commit_idle_ms: int = 10
    # How agents' consumer groups rebalance: "consumer" (Kafka 4's KIP-848 protocol, incremental,
    # broker-side range assignor), "classic" (cooperative-sticky for one-input agents, eager range
    # for co-partitioned ones) or "auto": consumer when the broker serves it, else classic.
    group_protocol: str = "auto"
    # Where bootstrap_servers came from ("default", "config file PATH", "environment NAME",
    # "argument"): commands that may start a local broker do so only when it is "default".
    bootstrap_source: str = field(default="default", compare=False)
    # The config file these settings were read from, so a command that starts worker processes
    # (the demo) hands them the same file.
    config_file: Path | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from defaults, the config file, the environment and explicit overrides
        (``None`` overrides are ignored, so CLI options that were not given do not mask the env)."""
        env = os.environ if env is None else env
        settings = cls()
        path = config_file or env.get("CHOREO_CONFIG") or None
        if path is None and Path("choreo.toml").is_file():
            path = "choreo.toml"
        if path is not None:
            settings = settings._merge_file(Path(path))
        settings = settings._merge_env(env)
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "bootstrap_servers" in clean:
            clean.setdefault("bootstrap_source", "argument")
        if clean:
            settings = replace(settings, **clean)
        settings._validate()
        return settings

    def _merge_file(self, path: Path) -> Settings:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path}: {exc}") from exc
        kafka = {str(k): str(v) for k, v in data.pop("kafka", {}).items()}
        dependencies = _dependency_tables(data.pop("dependencies", {}), str(path))
        agents = _dependency_tables(data.pop("agents", {}), str(path), "agents")
        known = {f for f in self.__dataclass_fields__ if f not in _NOT_SETTABLE}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
        values: dict[str, Any] = {k: _coerce(k, v, str(path)) for k, v in data.items()}
        for name in _PATH_FIELDS & set(values):
            values[name] = path.parent / values[name]  # absolute paths stay as they are
        if "bootstrap_servers" in values:
            values["bootstrap_source"] = f"config file {path}"
        merged = _merge_dependencies(self.dependencies, dependencies)
        return replace(
            self,
            kafka={**self.kafka, **kafka},
            dependencies=merged,
            agents=_merge_dependencies(self.agents, agents),
            config_file=path,
            **values,
        )

    def _merge_env(self, env: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        if env.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
            values["bootstrap_source"] = "environment KAFKA_BOOTSTRAP_SERVERS"
        for name in self.__dataclass_fields__:
            key = f"CHOREO_{name.upper()}"
            if name not in _NOT_SETTABLE and env.get(key):
                values[name] = _coerce(name, env[key], f"environment {key}")
                if name == "bootstrap_servers":
                    values["bootstrap_source"] = f"environment {key}"
        kafka = dict(self.kafka)
        for key, value in env.items():
            if key.startswith(_KAFKA_ENV_PREFIX) and len(key) > len(_KAFKA_ENV_PREFIX):
                kafka[key[len(_KAFKA_ENV_PREFIX) :].lower().replace("_", ".")] = value
        dependencies = _named_env_tables(env, _DEPENDENCY_ENV_PREFIX)
        merged = _merge_dependencies(self.dependencies, dependencies)
        agents = _merge_dependencies(self.agents, _named_env_tables(env, _AGENT_ENV_PREFIX))
        return replace(self, kafka=kafka, dependencies=merged, agents=agents, **values)

    def max_in_flight(self, agent: str) -> int | None:
        """The agent's ``max_in_flight`` from these settings, None when they do not set it."""
        raw = self.agents.get(dependency_setting_name(agent), {}).get("max_in_flight")
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise SettingsError(f"agents.{agent}.max_in_flight: must be a whole number of at least 1, got {raw!r}")
        return value

    def _validate(self) -> None:
        if self.processing_guarantee not in ("at_least_once", "exactly_once"):
            raise SettingsError(
                f"processing_guarantee: expected at_least_once or exactly_once, got {self.processing_guarantee!r}"
            )
        if not self.bootstrap_servers:
            raise SettingsError("bootstrap_servers: must not be empty")
        if self.startup_wait_s < 0:
            raise SettingsError(f"startup_wait_s: must be 0 (no limit) or a positive number, got {self.startup_wait_s}")
        if not self.tools_group_id:
            raise SettingsError("tools_group_id: must not be empty")
        if self.processes < 1:
            raise SettingsError(f"processes: must be 1 or more worker processes, got {self.processes}")
        for agent, table in self.agents.items():
            unknown = sorted(set(table) - AGENT_SETTINGS)
            if unknown:
                raise SettingsError(f"agents.{agent}: unknown setting(s) {', '.join(unknown)}")
            self.max_in_flight(agent)
        if self.commit_idle_ms < 0:
            raise SettingsError(f"commit_idle_ms: must be 0 (off) or a positive number, got {self.commit_idle_ms}")
        if self.commit_interval_ms < 0:
            raise SettingsError(
                f"commit_interval_ms: must be 0 (every batch) or a positive number, got {self.commit_interval_ms}"
            )
        if self.state_memory_mb <= 0:
            raise SettingsError(f"state_memory_mb: must be a positive number of MiB, got {self.state_memory_mb}")
        if self.group_protocol not in ("auto", "consumer", "classic"):
            raise SettingsError(f"group_protocol: expected auto, consumer or classic, got {self.group_protocol!r}")
        if self.standby_replicas < 0:
            raise SettingsError(f"standby_replicas: must be 0 (none) or more, got {self.standby_replicas}")

    # ------------------------------------------------------------------ use
    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """Client configuration for confluent-kafka: pass-through properties, the bootstrap
        servers, then per-client overrides (group id, transactional id, ...)."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.kafka)
        config.update(overrides)
        return with_client_hooks(config)  # client log lines and access errors through our logging

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Producer defaults every choreo producer shares: keys land where Java clients put them
        (murmur2_random), and the idempotent producer so retries never reorder or duplicate.
        These are defaults: the user's pass-through properties win over them, and per-client
        overrides (transactional id, delivery callback) win over both."""
        config: dict[str, Any] = {"partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 5}
        config.update(self.kafka_config())
        config.update(overrides)
        return config

    @property
    def bootstrap_configured(self) -> bool:
        """Whether anyone named the cluster (``--bootstrap``, the file, the environment); only
        when nobody did may a command start the local broker instead."""
        return self.bootstrap_source != "default"

    def redacted(self) -> dict[str, Any]:
        """A printable view: secret-looking Kafka properties are masked."""
        kafka = {k: ("***" if _is_secret(k) else v) for k, v in self.kafka.items()}
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = kafka if name == "kafka" else (str(value) if isinstance(value, Path) else value)
        return out


def contract_dirs(
    contracts_dir: str | os.PathLike[str] | None = None, schemas_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """The one rule for where contracts and schemas come from: the explicit argument, else the
    settings (``CHOREO_CONTRACTS_DIR`` / ``CHOREO_SCHEMAS_DIR``, or the config file), else the
    project's defaults (the commerce contracts shipped with the package)."""
    if contracts_dir is not None and schemas_dir is not None:
        return Path(contracts_dir), Path(schemas_dir)
    settings = Settings.load()
    return (
        Path(contracts_dir) if contracts_dir is not None else settings.contracts_dir,
        Path(schemas_dir) if schemas_dir is not None else settings.schemas_dir,
    )


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


# kafka and dependencies have their own tables and prefixes
_NOT_SETTABLE = frozenset({"kafka", "dependencies", "agents", "bootstrap_source", "config_file"})
_PATH_FIELDS = frozenset({"contracts_dir", "schemas_dir", "state_dir"})


def dependency_setting_name(name: str) -> str:
    """How a dependency is named in settings: lower case, dashes and dots as underscores (so the
    environment can name it)."""
    return name.lower().replace("-", "_").replace(".", "_")


def _dependency_tables(data: Any, source: str, table: str = "dependencies") -> dict[str, dict[str, str]]:
    """A file's ``[<table>.<name>]`` tables (dependencies' limits, agents' settings) by setting name."""
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SettingsError(f"config file {source}: [{table}.<name>] must be tables of settings")
    return {dependency_setting_name(str(n)): {str(k): str(v) for k, v in t.items()} for n, t in data.items()}


def _named_env_tables(env: Mapping[str, str], prefix: str) -> dict[str, dict[str, str]]:
    """``<prefix><NAME>__<SETTING>=value`` variables as {name: {setting: value}}."""
    tables: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if key.startswith(prefix) and "__" in key[len(prefix) :]:
            name, _, setting = key[len(prefix) :].partition("__")
            if name and setting:
                tables.setdefault(dependency_setting_name(name), {})[setting.lower()] = value
    return tables


def _merge_dependencies(
    base: Mapping[str, Mapping[str, str]], over: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    out = {name: dict(limits) for name, limits in base.items()}
    for name, limits in over.items():
        out.setdefault(name, {}).update(limits)
    return out


def _coerce(name: str, value: Any, source: str) -> Any:
    if name in _PATH_FIELDS:
        return Path(value)
    if name == "startup_wait_s":
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{source}: {name} must be a number of seconds, got {value!r}") from exc
    if name in (
        "metrics_port",
        "state_memory_mb",
        "processes",
        "commit_interval_ms",
        "commit_idle_ms",
        "standby_replicas",
    ):
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{source}: {name} must be an integer, got {value!r}") from exc
    return value
