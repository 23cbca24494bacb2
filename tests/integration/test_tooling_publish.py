"""`choreo publish` and the Publisher API against the real broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processors.cli.main import app
from processors.contracts import Envelope
from processors.tooling.publisher import Publisher
from tests.integration.tooling_support import Isolated, isolate_contracts, order, read_all

pytestmark = pytest.mark.kafka
runner = CliRunner(env={"COLUMNS": "200"})  # rich tables as wide as a real terminal


@pytest.fixture
def iso(tmp_path: Path, kafka_bootstrap: str, create_topics) -> Isolated:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    create_topics([iso.topics["order.created"]], partitions=3)
    return iso


def _ndjson(path: Path, events: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_publish_validates_encodes_and_sets_envelope_headers(iso: Isolated, tmp_path: Path) -> None:
    events = [order(1), order(2, created_at=1714564800000), order(3)]
    source = _ndjson(tmp_path / "orders.ndjson", events)

    result = runner.invoke(
        app,
        iso.cli(
            "publish",
            "order.created",
            "--file",
            str(source),
            "--key",
            "order_id",
            "--correlation-id",
            "flow-7",
            "--json",
        ),
    )

    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["rejected"], summary["failed"]) == (3, 0, 0)
    records = read_all(iso.settings(), iso.topics["order.created"])
    codec = iso.codec()
    by_key = {m.key(): m for m in records}
    assert set(by_key) == {b"o-1", b"o-2", b"o-3"}
    for n in (1, 2, 3):
        msg = by_key[f"o-{n}".encode()]
        envelope = Envelope.from_headers(msg.headers())
        assert envelope.type == "order.created"
        assert envelope.idempotency_key == f"o-{n}"  # from --key order_id
        assert envelope.correlation_id == "flow-7"
        value = codec.decode("order.created", msg.value())
        assert value["customer_email"] == f"buyer{n}@example.com"
        assert int(value["created_at"].timestamp() * 1000) == 1714564800000


def test_one_invalid_record_refuses_the_whole_file_naming_line_and_field(iso: Isolated, tmp_path: Path) -> None:
    bad_qty = order(2)
    bad_qty["items"][0]["qty"] = "3"
    source = tmp_path / "orders.ndjson"
    source.write_text(
        json.dumps(order(1)) + "\n" + json.dumps(bad_qty) + "\n{broken\n" + json.dumps(order(4, currency=None)) + "\n"
    )

    result = runner.invoke(app, iso.cli("publish", "order.created", "--file", str(source)))

    assert result.exit_code == 2
    assert f"{source}:2: items[0].qty: expected int, got string of 1 character(s)" in result.stderr
    assert f"{source}:3: not valid JSON" in result.stderr
    assert f"{source}:4: currency: expected string, got null" in result.stderr
    assert "nothing sent" in result.stderr
    assert read_all(iso.settings(), iso.topics["order.created"]) == []


def test_skip_invalid_sends_the_valid_and_writes_rejects(iso: Isolated, tmp_path: Path) -> None:
    source = tmp_path / "orders.json"  # a JSON array, pretty-printed: lines still point at records
    source.write_text(json.dumps([order(1), order(2, total_minor="lots"), order(3)], indent=2))
    rejects = tmp_path / "rejects.ndjson"

    result = runner.invoke(
        app,
        iso.cli(
            "publish", "order.created", "--file", str(source), "--skip-invalid", "--rejects", str(rejects), "--json"
        ),
    )

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["rejected"], summary["failed"]) == (2, 1, 0)
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["problems"] == ["total_minor: expected long, got string of 4 character(s)"]
    assert reject["record"]["order_id"] == "o-2"
    assert source.read_text().splitlines()[reject["line"] - 1].strip() == "{"
    assert sorted(m.key() for m in read_all(iso.settings(), iso.topics["order.created"])) == [b"o-1", b"o-3"]


def test_publishing_the_same_file_twice_reuses_idempotency_keys(iso: Isolated, tmp_path: Path) -> None:
    source = _ndjson(tmp_path / "orders.ndjson", [order(1)])
    for _ in range(2):
        assert runner.invoke(app, iso.cli("publish", "order.created", "-f", str(source))).exit_code == 0
    keys = [
        Envelope.from_headers(m.headers()).idempotency_key
        for m in read_all(iso.settings(), iso.topics["order.created"])
    ]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_usage_errors_exit_2_with_a_message(iso: Isolated, tmp_path: Path) -> None:
    source = _ndjson(tmp_path / "orders.ndjson", [order(1)])
    unknown = runner.invoke(app, iso.cli("publish", "order.teleported", "-f", str(source)))
    assert unknown.exit_code == 2 and "unknown event type 'order.teleported'" in unknown.stderr
    empty = runner.invoke(app, iso.cli("publish", "order.created"), input="  \n")
    assert empty.exit_code == 2 and "no events in the input" in empty.stderr
    missing_file = runner.invoke(app, iso.cli("publish", "order.created", "-f", str(tmp_path / "nope.json")))
    assert missing_file.exit_code == 2 and "nope.json" in missing_file.stderr
    wrong_type = runner.invoke(app, iso.cli("publish", "payment.authorized", "-f", str(source)))
    assert wrong_type.exit_code == 2 and ":1: payment_id: required field missing" in wrong_type.stderr
    missing_key = runner.invoke(app, iso.cli("publish", "order.created", "-f", str(source), "--key", "promo.code"))
    assert missing_key.exit_code == 2 and "promo.code: required field missing" in missing_key.stderr


def test_a_missing_topic_is_refused_not_auto_created(iso: Isolated, tmp_path: Path) -> None:
    payment = {
        "order_id": "o-1",
        "payment_id": "p-1",
        "amount_minor": 100,
        "currency": "EUR",
        "authorized_at": "2024-05-01T12:00:00Z",
    }
    source = _ndjson(tmp_path / "payments.ndjson", [payment])
    result = runner.invoke(app, iso.cli("publish", "payment.authorized", "-f", str(source)))
    assert result.exit_code == 2, result.stderr
    assert f"topic '{iso.topics['payment.authorized']}' does not exist" in result.stderr
    assert "create it with" in result.stderr


def test_publisher_api_single_event_and_stdin(iso: Isolated) -> None:
    with Publisher(iso.settings(), registry=iso.registry(), source="urn:test") as publisher:
        delivery = publisher.publish("order.created", order(9), idempotency_key="fixed-key")
        assert delivery.topic == iso.topics["order.created"] and delivery.offset >= 0
    via_stdin = runner.invoke(
        app, iso.cli("publish", "order.created", "--dry-run", "--json"), input=json.dumps(order(5))
    )
    assert via_stdin.exit_code == 0 and json.loads(via_stdin.stdout)["sent"] == 0
    [msg] = read_all(iso.settings(), iso.topics["order.created"])
    envelope = Envelope.from_headers(msg.headers())
    assert (envelope.idempotency_key, envelope.source) == ("fixed-key", "urn:test")


def test_failed_deliveries_are_counted_and_exit_1(tmp_path: Path, kafka_bootstrap: str, create_topics) -> None:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    create_topics([iso.topics["order.created"]], config={"max.message.bytes": "1000"})
    source = _ndjson(tmp_path / "orders.ndjson", [order(1), order(2, customer_email="x" * 3000 + "@example.com")])

    result = runner.invoke(app, iso.cli("publish", "order.created", "-f", str(source), "--json"))

    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    # records in the same produce request as the big one are refused with it: 1 or 2 failures
    assert summary["failed"] >= 1 and summary["sent"] + summary["failed"] == 2
    assert any(e.startswith("line 2: delivery failed") for e in summary["errors"])
