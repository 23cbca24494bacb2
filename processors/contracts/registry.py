"""Contract files and their schemas, loaded and checked once at start-up.

A contract (``contracts/<event_type>.yaml``) says where an event lives (topic, key, partitions,
retention), who owns it, which fields are PII and how its schema may evolve. Its schema versions live
side by side in ``schemas/<event_type>/v<N>.avsc``; the highest listed version is the one producers
write and readers resolve to. Loading refuses a contract with any mistake and names the file and the
field, because a bad contract found at start-up is cheap and one found in production is not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import fastavro
import yaml

from processors.contracts.compat import MODES
from processors.contracts.errors import ContractError
from processors.settings import REPO_ROOT, contract_dirs

_REQUIRED = (
    "event_type",
    "topic",
    "key_field",
    "versions",
    "compatibility",
    "owner",
    "partitions",
    "retention",
    "description",
)
_OPTIONAL = ("pii_fields", "external_producers", "external_consumers")
_DURATION = re.compile(r"^(\d+)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_SCHEMA_FILE = re.compile(r"^v(\d+)\.avsc$")


@dataclass(frozen=True)
class Contract:
    """One event type's contract plus its schema versions (raw JSON and fastavro-parsed)."""

    event_type: str
    topic: str
    key_field: str
    versions: tuple[int, ...]
    compatibility: str
    owner: str
    pii_fields: tuple[str, ...]
    partitions: int
    retention_ms: int
    description: str
    # Systems outside the agent graph that publish or subscribe to this event type (a storefront,
    # an e-mail gateway); `choreo topology --check` counts them as producers and consumers.
    external_producers: tuple[str, ...] = ()
    external_consumers: tuple[str, ...] = ()
    raw_schemas: Mapping[int, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    parsed_schemas: Mapping[int, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def current_version(self) -> int:
        return self.versions[-1]

    def schema(self, version: int | None = None) -> dict[str, Any]:
        """The fastavro-parsed schema, ready for schemaless_writer/reader without re-parsing."""
        return self.parsed_schemas[self._version(version)]

    def raw_schema(self, version: int | None = None) -> dict[str, Any]:
        """The schema exactly as written in its ``.avsc`` file (for fingerprints and compat checks)."""
        return self.raw_schemas[self._version(version)]

    def _version(self, version: int | None) -> int:
        if version is None:
            return self.current_version
        if version not in self.raw_schemas:
            raise ContractError(f"{self.event_type}: no schema version {version} (known: {list(self.versions)})")
        return version


class ContractRegistry:
    """Every contract of the repository, by event type and by topic."""

    def __init__(self, contracts: Iterable[Contract]) -> None:
        self._by_type = {c.event_type: c for c in contracts}
        self._by_topic: dict[str, list[Contract]] = {}
        for contract in self._by_type.values():
            self._by_topic.setdefault(contract.topic, []).append(contract)

    @classmethod
    def load(cls, contracts_dir: Path | None = None, schemas_dir: Path | None = None) -> ContractRegistry:
        """Load and validate every ``*.yaml`` contract; all mistakes are reported together. A
        directory not given is found by the settings' rule (:func:`processors.settings.contract_dirs`)."""
        contracts_dir, schemas_dir = contract_dirs(contracts_dir, schemas_dir)
        if not contracts_dir.is_dir():
            raise ContractError(
                f"{display_path(contracts_dir)}: contracts directory does not exist "
                "(pass it, or set CHOREO_CONTRACTS_DIR or contracts_dir in choreo.toml)"
            )
        contracts, errors = [], []
        for path in sorted(contracts_dir.glob("*.yaml")):
            try:
                contracts.append(load_contract(path, schemas_dir))
            except ContractError as exc:
                errors.append(str(exc))
        if errors:
            raise ContractError("\n".join(errors))
        return cls(contracts)

    def get(self, event_type: str) -> Contract:
        try:
            return self._by_type[event_type]
        except KeyError:
            raise ContractError(f"unknown event type {event_type!r} (known: {', '.join(self.event_types())})") from None

    def for_topic(self, topic: str) -> list[Contract]:
        return list(self._by_topic.get(topic, ()))

    def all(self) -> list[Contract]:
        return [self._by_type[t] for t in self.event_types()]

    def event_types(self) -> list[str]:
        return sorted(self._by_type)


def display_path(path: Path) -> str:
    """Paths relative to the repository when inside it, as people type them in issues and reviews."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_contract(path: Path, schemas_dir: Path) -> Contract:
    """Parse one contract file and its schemas; raise :class:`ContractError` naming file and field."""
    where = display_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ContractError(f"{where}: cannot read contract: {exc}") from exc
    if not isinstance(data, dict):
        raise ContractError(f"{where}: expected a mapping of contract fields, got {type(data).__name__}")
    _check_keys(where, data)
    event_type = _text(where, data, "event_type")
    if event_type != path.stem:
        raise ContractError(f"{where}: event_type: {event_type!r} does not match the file name {path.stem!r}")
    versions = _versions(where, data["versions"])
    raw = {v: _read_schema(schemas_dir / event_type / f"v{v}.avsc") for v in versions}
    _check_no_unlisted_schemas(where, schemas_dir / event_type, versions)
    parsed = {v: _parse_schema(schemas_dir / event_type / f"v{v}.avsc", s) for v, s in raw.items()}
    key_field = _text(where, data, "key_field")
    _check_key_field(where, key_field, raw)
    pii = _pii_fields(where, data.get("pii_fields") or [], raw)
    return Contract(
        event_type=event_type,
        topic=_text(where, data, "topic"),
        key_field=key_field,
        versions=versions,
        compatibility=_mode(where, data["compatibility"]),
        owner=_text(where, data, "owner"),
        pii_fields=pii,
        partitions=_partitions(where, data["partitions"]),
        retention_ms=parse_retention(where, data["retention"]),
        description=_text(where, data, "description"),
        external_producers=_names(where, data, "external_producers"),
        external_consumers=_names(where, data, "external_consumers"),
        raw_schemas=raw,
        parsed_schemas=parsed,
    )


def _check_keys(where: str, data: dict[str, Any]) -> None:
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ContractError(f"{where}: {missing[0]}: required field missing")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ContractError(
            f"{where}: {unknown[0]}: unknown field (expected one of {', '.join(_REQUIRED + _OPTIONAL)})"
        )


def _text(where: str, data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ContractError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value


def _names(where: str, data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ContractError(f"{where}: {key}: expected a list of system names, got {value!r}")
    return tuple(value)


def _versions(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ContractError(f"{where}: versions: expected a non-empty list of schema versions, got {value!r}")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise ContractError(f"{where}: versions: {item!r} is not a positive integer")
    if value != sorted(set(value)):
        raise ContractError(f"{where}: versions: {value} must be strictly increasing")
    return tuple(value)


def _mode(where: str, value: Any) -> str:
    if value not in MODES:
        raise ContractError(f"{where}: compatibility: {value!r} is not one of {', '.join(MODES)}")
    return value


def _partitions(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ContractError(f"{where}: partitions: expected a positive integer, got {value!r}")
    return value


def parse_retention(where: str, value: Any) -> int:
    """Retention in ms from an int (``-1`` means forever, as Kafka's retention.ms) or ``7d``-style text."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= -1 and value != 0:
        return value
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ContractError(
            f"{where}: retention: expected milliseconds (or -1 for forever) or a duration like 7d, 12h, 30m, "
            f"got {value!r}"
        )
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _read_schema(path: Path) -> dict[str, Any]:
    where = display_path(path)
    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{where}: schema file missing for a listed version") from None
    except (OSError, ValueError) as exc:
        raise ContractError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ContractError(f"{where}: an event schema must be a record, got {json.dumps(schema)[:60]}")
    return schema


def _parse_schema(path: Path, schema: dict[str, Any]) -> dict[str, Any]:
    try:
        # parse_schema returns the shape it was given (fastavro types it as any schema): a record in, a dict out.
        return cast("dict[str, Any]", fastavro.parse_schema(schema, _force=True))
    except Exception as exc:  # fastavro raises several unrelated types for invalid schemas
        raise ContractError(f"{display_path(path)}: invalid Avro schema: {exc}") from exc


def _check_no_unlisted_schemas(where: str, schema_dir: Path, versions: tuple[int, ...]) -> None:
    """A version file nobody lists would silently skip compatibility checks: refuse it."""
    for path in sorted(schema_dir.glob("*.avsc")):
        match = _SCHEMA_FILE.match(path.name)
        if match is None or int(match.group(1)) not in versions:
            raise ContractError(
                f"{where}: versions: {display_path(path)} exists but is not listed in versions {list(versions)}"
            )


def _check_key_field(where: str, key_field: str, raw: Mapping[int, dict[str, Any]]) -> None:
    for version, schema in raw.items():
        fields = {f["name"]: f for f in schema.get("fields", [])}
        if key_field not in fields:
            raise ContractError(f"{where}: key_field: {key_field!r} is not a field of schema v{version}")
        if fields[key_field]["type"] != "string":
            raise ContractError(
                f"{where}: key_field: {key_field!r} has type {json.dumps(fields[key_field]['type'])} "
                f"in schema v{version}; keys must be strings"
            )


def _pii_fields(where: str, value: Any, raw: Mapping[int, dict[str, Any]]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ContractError(f"{where}: pii_fields: expected a list of field paths, got {value!r}")
    for index, path in enumerate(value):
        if not any(field_path_exists(schema, path) for schema in raw.values()):
            raise ContractError(
                f"{where}: pii_fields[{index}]: {path!r} is not a field of any schema version {sorted(raw)}"
            )
    return tuple(value)


def field_path_exists(schema: dict[str, Any], path: str) -> bool:
    """Whether a dotted path (``shipping_address.city``, ``items[].sku``) names a field of the schema.

    Array and map levels are written ``[]``; unions are looked through, so a nullable record's fields
    are reachable.
    """
    named: dict[str, Any] = {}
    current: list[Any] = [schema]
    for part in path.split("."):
        name = part.removesuffix("[]")
        nxt = []
        for node in _expand(current, named):
            if isinstance(node, dict) and node.get("type") == "record":
                nxt += [f["type"] for f in node["fields"] if f["name"] == name]
        if not nxt:
            return False
        current = nxt
        if part.endswith("[]"):
            current = [
                n.get("items", n.get("values"))
                for n in _expand(current, named)
                if isinstance(n, dict) and n.get("type") in ("array", "map")
            ]
            if not current:
                return False
    return True


def _expand(nodes: list[Any], named: dict[str, Any]) -> list[Any]:
    """Resolve unions and named-type references, remembering named types as they are defined."""
    out: list[Any] = []
    for node in nodes:
        if isinstance(node, list):
            out += _expand(node, named)
        elif isinstance(node, str) and node in named:
            out.append(named[node])
        elif isinstance(node, dict):
            if "name" in node and node.get("type") in ("record", "enum", "fixed"):
                named[node["name"]] = node
                if node.get("namespace"):
                    named[f"{node['namespace']}.{node['name']}"] = node
            out.append(node)
        else:
            out.append(node)
    return out
