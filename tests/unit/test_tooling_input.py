"""Input handling of the tooling without a broker: JSON readers with line numbers, publish-time
validation and keys, file backfill validation, tail filters, and the faust codec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.contracts import AvroCodec, ContractRegistry, Envelope
from processors.settings import Settings
from processors.tooling.filesource import FileSource
from processors.tooling.jsoninput import read_json_records
from processors.tooling.kafka_io import ToolingError
from processors.tooling.publisher import Publisher
from processors.tooling.subscriber import FieldFilter, ReceivedEvent, matches_all

REGISTRY = ContractRegistry.load()
CODEC = AvroCodec(REGISTRY)


def order(n: int = 1, **overrides: object) -> dict:
    event = {
        "order_id": f"o-{n}",
        "customer_id": "c-1",
        "customer_email": "a@example.com",
        "card_token": "tok",
        "items": [{"sku": "s", "qty": 1, "unit_price_minor": 100}],
        "total_minor": 100,
        "currency": "EUR",
        "created_at": "2024-05-01T12:00:00Z",
    }
    event.update(overrides)
    return event


# ------------------------------------------------------------------------------ JSON input
def test_ndjson_records_carry_their_line_and_bad_lines_do_not_stop_reading() -> None:
    text = '{"a": 1}\n\n{"a": 2}\n{oops\n[1, 2]\n'
    records = list(read_json_records(text))
    assert [(r.line, r.value) for r in records if r.error is None] == [(1, {"a": 1}), (3, {"a": 2}), (5, [1, 2])]
    [bad] = [r for r in records if r.error]
    assert bad.line == 4 and (bad.error or "").startswith("not valid JSON")


def test_array_elements_and_pretty_objects_get_the_line_they_start_on() -> None:
    array = json.dumps([{"a": 1}, {"b": 2}], indent=2)
    assert [r.line for r in read_json_records(array)] == [2, 5]
    pretty = json.dumps({"a": 1}, indent=2) + "\n" + json.dumps({"b": 2}, indent=2)
    assert [(r.line, r.value) for r in read_json_records(pretty)] == [(1, {"a": 1}), (4, {"b": 2})]
    assert list(read_json_records("[]")) == []


def test_broken_arrays_are_reported() -> None:
    [*_, unclosed] = read_json_records('[{"a": 1},\n{"b": 2}')
    assert "not closed" in (unclosed.error or "")
    [_, trailing] = read_json_records('[{"a": 1}] x')
    assert "after the closing ]" in (trailing.error or "")
    [bad] = read_json_records('[\n{"a": }]')
    assert bad.line == 2 and "rest of the array is not read" in (bad.error or "")


# ------------------------------------------------------------------------------ publishing
@pytest.fixture
def publisher() -> Publisher:
    return Publisher(Settings.load(bootstrap_servers="127.0.0.1:1"), registry=REGISTRY, codec=CODEC)


def test_prepare_keys_encodes_and_builds_the_envelope(publisher: Publisher) -> None:
    event = publisher.prepare("order.created", order(7), correlation_id="flow-1", tenant="acme")
    assert event.topic == "order.created" and event.key == b"o-7"
    assert CODEC.decode("order.created", event.value)["order_id"] == "o-7"
    envelope = Envelope.from_headers(event.headers)
    assert (envelope.correlation_id, envelope.tenant, envelope.type) == ("flow-1", "acme", "order.created")
    again = publisher.prepare("order.created", order(7, created_at=1714564800000))
    assert again.envelope.idempotency_key == event.envelope.idempotency_key  # same content, same key


def test_check_collects_every_problem_with_its_line(publisher: Publisher) -> None:
    text = "\n".join([json.dumps(order(1)), json.dumps(order(2, items=[{"sku": "s", "qty": "3"}])), "7"])
    prepared, rejects = publisher.check("order.created", read_json_records(text))
    assert [p.line for p in prepared] == [1]
    assert [(r.line, r.problems) for r in rejects] == [
        (
            2,
            [
                "items[0].qty: expected int, got string of 1 character(s)",
                "items[0].unit_price_minor: required field missing",
            ],
        ),
        (3, ["<value>: expected a JSON object, got int"]),
    ]


def test_idempotency_key_from_a_field(publisher: Publisher) -> None:
    prepared, rejects = publisher.check(
        "order.created", [order(1), order(2, customer_id="")], idempotency_field="customer_id"
    )
    assert prepared[0].envelope.idempotency_key == "c-1"
    assert rejects[0].problems == [
        "customer_id: expected a non-empty scalar for the idempotency key (--key), got empty string"
    ]


def test_a_key_field_holding_a_structure_is_named_by_its_type_never_its_value(publisher: Publisher) -> None:
    secret = {"card": "4111111111111111"}
    _, rejects = publisher.check("order.created", [order(1, customer_id=secret)], idempotency_field="customer_id")
    assert rejects[0].problems and all("got map of 1 entry" in problem for problem in rejects[0].problems)
    assert "4111" not in str(rejects[0].problems)


def test_dry_run_and_refusal_never_touch_the_broker(publisher: Publisher) -> None:
    dry = publisher.publish_many("order.created", [order(1)], dry_run=True)
    assert (dry.total, dry.sent, dry.refused) == (1, 0, False)
    refused = publisher.publish_many("order.created", [order(1), {"order_id": 3}])
    assert refused.refused and refused.rejected == 1 and refused.sent == 0


# ------------------------------------------------------------------------------ file backfills
def test_file_source_validates_the_whole_file_first(tmp_path: Path) -> None:
    path = tmp_path / "orders.ndjson"
    path.write_text(json.dumps(order(1)) + "\n" + json.dumps(order(2, currency=5)) + "\n")
    source = FileSource(path, "order.created", REGISTRY, CODEC)
    assert source.identity()["format"] == "ndjson" and source.identity()["event_type"] == "order.created"
    with pytest.raises(ToolingError, match=r"line 2: currency: expected string, got int\s*$"):
        source.plan()


def test_file_source_reads_from_a_position(tmp_path: Path) -> None:
    path = tmp_path / "orders.ndjson"
    path.write_text("".join(json.dumps(order(n)) + "\n" for n in range(5)))
    source = FileSource(path, "order.created", REGISTRY, CODEC)
    assert source.plan() == {-1: (0, 5)}
    rest = list(source.records({-1: (3, 5)}, stop=lambda: False))
    assert [(r.position, r.key) for r in rest] == [(3, b"o-3"), (4, b"o-4")]
    assert Envelope.from_headers(rest[0].headers).source == "urn:choreo:replay"


def test_file_source_needs_a_type_for_an_unknown_topic(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text("{}\n")
    with pytest.raises(ToolingError, match="--type"):
        FileSource(path, "scratch", REGISTRY, CODEC)
    with pytest.raises(ToolingError, match="no such file"):
        FileSource(tmp_path / "missing.ndjson", "order.created", REGISTRY, CODEC)


# ------------------------------------------------------------------------------ tail filters
def _event(value: dict | None, error: str | None = None) -> ReceivedEvent:
    return ReceivedEvent(
        "t", 0, 1, None, b"o-1", [("ce_tenant", b"acme")], "order.created" if value else None, value, None, error
    )


def test_filters_on_values_headers_key_and_type() -> None:
    event = _event({"customer_id": "c-1", "items": [{"qty": 3}], "paid": True, "shipping_address": None})
    assert matches_all(event, [FieldFilter.parse("customer_id=c-1"), FieldFilter.parse("items[0].qty=3")])
    assert matches_all(event, [FieldFilter.parse("paid=true"), FieldFilter.parse("shipping_address=null")])
    assert matches_all(
        event,
        [
            FieldFilter.parse("headers.ce_tenant=acme"),
            FieldFilter.parse("@key=o-1"),
            FieldFilter.parse("@type=order.created"),
        ],
    )
    assert not matches_all(event, [FieldFilter.parse("items[1].qty=3")])
    assert not matches_all(event, [FieldFilter.parse("customer_id=c-2")])


def test_undecodable_events_pass_value_filters_but_not_header_filters() -> None:
    broken = _event(None, error="undecodable")
    assert matches_all(broken, [FieldFilter.parse("customer_id=c-1")])
    assert not matches_all(broken, [FieldFilter.parse("headers.ce_tenant=other")])
    with pytest.raises(ToolingError, match="FIELD=VALUE"):
        FieldFilter.parse("=x")


# ------------------------------------------------------------------------------ faust codec
def test_faust_codec_round_trip_and_registration() -> None:
    pytest.importorskip("faust")
    from faust.serializers import codecs

    from processors.contracts.faust_codec import ChoreoAvroCodec

    typed = ChoreoAvroCodec(event_type="order.created")
    data = typed.dumps(order(3))
    assert data == CODEC.encode("order.created", {**order(3), "created_at": 1714564800000})
    assert codecs.get_codec("choreo-avro").loads(data)["order_id"] == "o-3"
    assert typed.clone().loads(data)["total_minor"] == 100
    with pytest.raises(ValueError, match="needs an event type"):
        codecs.get_codec("choreo-avro").dumps(order(3))
