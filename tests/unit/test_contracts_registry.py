"""Contract files: the repository's contracts load, and every kind of mistake is named precisely."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from processors.contracts import ContractError, ContractRegistry
from processors.contracts.registry import field_path_exists
from processors.settings import REPO_ROOT

COMMERCE = [
    "inventory.rejected",
    "inventory.released",
    "inventory.reserved",
    "notification.sent",
    "order.cancelled",
    "order.confirmed",
    "order.created",
    "payment.authorized",
    "payment.declined",
    "payment.refunded",
    "shipment.requested",
]


def test_repository_contracts_load() -> None:
    registry = ContractRegistry.load()
    assert set(COMMERCE + ["audit.record"]) <= set(registry.event_types())
    created = registry.get("order.created")
    assert (created.topic, created.key_field, created.versions, created.current_version) == (
        "order.created",
        "order_id",
        (1, 2),
        2,
    )
    assert created.pii_fields == ("customer_email", "card_token", "shipping_address")
    assert (created.partitions, created.retention_ms, created.compatibility) == (6, 7 * 86_400_000, "FULL_TRANSITIVE")
    assert created.schema()["name"] == "io.choreo.commerce.OrderCreated"
    assert [f["name"] for f in created.raw_schema(1)["fields"]][-1] == "created_at"
    audit = registry.get("audit.record")
    assert audit.topic == "choreo.audit" and registry.for_topic("choreo.audit") == [audit]
    assert registry.for_topic("nope") == []
    assert [c.event_type for c in registry.all()] == registry.event_types()


def test_every_commerce_event_is_keyed_by_order_id_and_documented() -> None:
    registry = ContractRegistry.load()
    for event_type in COMMERCE:
        contract = registry.get(event_type)
        assert contract.topic == event_type and contract.key_field == "order_id"
        for version in contract.versions:
            for field in contract.raw_schema(version)["fields"]:
                assert field.get("doc"), f"{event_type} v{version} {field['name']} has no doc"


def test_external_producers_and_consumers_are_declared_in_contracts() -> None:
    registry = ContractRegistry.load()
    assert registry.get("order.created").external_producers == ("storefront",)
    assert registry.get("notification.sent").external_consumers == ("email-gateway", "crm")
    assert registry.get("order.confirmed").external_producers == ()


def test_unknown_event_type() -> None:
    with pytest.raises(ContractError, match=r"unknown event type 'nope' \(known: audit.record, inventory.rejected"):
        ContractRegistry.load().get("nope")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "contracts", tmp_path / "contracts")
    shutil.copytree(REPO_ROOT / "schemas", tmp_path / "schemas")
    return tmp_path


def edit(tree: Path, event_type: str, old: str, new: str) -> None:
    path = tree / "contracts" / f"{event_type}.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def load_error(tree: Path) -> str:
    with pytest.raises(ContractError) as info:
        ContractRegistry.load(tree / "contracts", tree / "schemas")
    return str(info.value)


def test_copied_tree_loads(tree: Path) -> None:
    copied = ContractRegistry.load(tree / "contracts", tree / "schemas")
    assert copied.event_types() == ContractRegistry.load().event_types()


@pytest.mark.parametrize(
    "old,new,message",
    [
        (
            "key_field: order_id",
            "key_field: orderid",
            "order.created.yaml: key_field: 'orderid' is not a field of schema v1",
        ),
        (
            "key_field: order_id",
            "key_field: items",
            'order.created.yaml: key_field: \'items\' has type {"type": "array"',
        ),
        (
            "compatibility: FULL_TRANSITIVE",
            "compatibility: SOMETIMES",
            "order.created.yaml: compatibility: 'SOMETIMES' is not one of NONE, BACKWARD",
        ),
        ("versions: [1, 2]", "versions: [2, 1]", "order.created.yaml: versions: [2, 1] must be strictly increasing"),
        (
            "versions: [1, 2]",
            "versions: [1, 2, 3]",
            "schemas/order.created/v3.avsc: schema file missing for a listed version",
        ),
        ("versions: [1, 2]", "versions: [1]", "schemas/order.created/v2.avsc exists but is not listed in versions [1]"),
        (
            "partitions: 6",
            "partitions: zero",
            "order.created.yaml: partitions: expected a positive integer, got 'zero'",
        ),
        (
            "retention: 7d",
            "retention: 7 days",
            "order.created.yaml: retention: expected milliseconds (or -1 for forever) or a duration like 7d, 12h, 30m, "
            "got '7 days'",
        ),
        (
            "  - card_token",
            "  - card.token",
            "order.created.yaml: pii_fields[1]: 'card.token' is not a field of any schema version [1, 2]",
        ),
        (
            "event_type: order.created",
            "event_type: order.placed",
            "order.created.yaml: event_type: 'order.placed' does not match the file name 'order.created'",
        ),
        ("owner: team-orders\n", "", "order.created.yaml: owner: required field missing"),
        ("owner: team-orders", "owner: team-orders\nownr: typo", "order.created.yaml: ownr: unknown field"),
        (
            "external_producers: [storefront]",
            "external_producers: storefront",
            "order.created.yaml: external_producers: expected a list of system names, got 'storefront'",
        ),
    ],
)
def test_mistakes_name_the_file_and_field(tree: Path, old: str, new: str, message: str) -> None:
    edit(tree, "order.created", old, new)
    assert message in load_error(tree)


def test_all_mistakes_are_reported_together(tree: Path) -> None:
    edit(tree, "order.created", "key_field: order_id", "key_field: orderid")
    edit(tree, "payment.declined", "partitions: 6", "partitions: -1")
    lines = load_error(tree).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("order.created.yaml: key_field: 'orderid' is not a field of schema v1")
    assert lines[1].endswith("payment.declined.yaml: partitions: expected a positive integer, got -1")


def test_invalid_schema_files_are_named(tree: Path) -> None:
    (tree / "schemas" / "order.confirmed" / "v1.avsc").write_text("{not json")
    assert "schemas/order.confirmed/v1.avsc: not valid JSON" in load_error(tree)
    (tree / "schemas" / "order.confirmed" / "v1.avsc").write_text(
        json.dumps({"type": "record", "name": "X", "fields": [{"name": "order_id", "type": "strin"}]})
    )
    assert "schemas/order.confirmed/v1.avsc: invalid Avro schema" in load_error(tree)


@pytest.mark.parametrize(
    "retention,expected_ms",
    [
        ("retention: 7d", 604_800_000),
        ("retention: 12h", 43_200_000),
        ("retention: 500ms", 500),
        ("retention: 2w", 1_209_600_000),
        ("retention: -1", -1),
        ("retention: 60000", 60_000),
    ],
)
def test_retention_forms(tree: Path, retention: str, expected_ms: int) -> None:
    edit(tree, "order.created", "retention: 7d", retention)
    assert ContractRegistry.load(tree / "contracts", tree / "schemas").get("order.created").retention_ms == expected_ms


def test_pii_field_paths_reach_into_records_and_arrays() -> None:
    schema = ContractRegistry.load().get("order.created").raw_schema(2)
    assert field_path_exists(schema, "shipping_address.city")
    assert field_path_exists(schema, "items[].sku")
    assert not field_path_exists(schema, "items.sku")
    assert not field_path_exists(schema, "shipping_address.planet")
