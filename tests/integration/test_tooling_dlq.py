"""`choreo dlq list|show|redrive` against the real broker, on dead letters written with the
engine's own header builder (`processors.runtime.dlq.dlq_headers`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from processors.cli.main import app
from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.runtime import conventions as conv
from processors.runtime.dlq import Failure, dlq_headers
from processors.tooling.dlq import DlqFilter, DlqInspector
from processors.tooling.publisher import Publisher
from tests.integration.tooling_support import Isolated, isolate_contracts, order, read_all

pytestmark = pytest.mark.kafka
runner = CliRunner(env={"COLUMNS": "200"})  # rich tables as wide as a real terminal
T0 = 1714564800000


@pytest.fixture
def iso(tmp_path: Path, kafka_bootstrap: str, create_topics) -> Isolated:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    topic = iso.topics["order.created"]
    create_topics([topic, conv.dlq_topic(topic)], partitions=2)
    return iso


def _dead_letters(iso: Isolated) -> list[tuple[str, str]]:
    """Five dead letters of order.created: (error class, reason) in DLQ order, one undecodable,
    one a second failure of o-1 after an earlier redrive."""
    topic = iso.topics["order.created"]
    publisher = Publisher(iso.settings(), registry=iso.registry())
    plan = [
        (order(1), "ValueError", "handler_error", "payments", {}),
        (order(2), "ValueError", "handler_error", "payments", {}),
        (order(3), "TimeoutError", "retries_exhausted", "inventory", {}),
        (None, "DecodeError", "undecodable", "payments", {}),
        (order(1), "ValueError", "handler_error", "payments", {conv.REDRIVE_COUNT: b"1"}),
    ]
    producer = Producer(iso.settings().producer_config())
    for offset, (event, error_class, reason, agent, extra) in enumerate(plan):
        if event is None:
            key, value, headers = b"o-x", b"\x07garbage", []
        else:
            prepared = publisher.prepare("order.created", event, idempotency_key=f"idem-{event['order_id']}")
            key, value, headers = prepared.key, prepared.value, list(prepared.headers)
        headers += list(extra.items())
        failure = Failure(reason, error_class, f"{error_class}: boom {offset}", 3, T0, T0 + 500)
        producer.produce(
            conv.dlq_topic(topic),
            key=key,
            value=value,
            partition=0,
            # confluent-kafka's stub types produce(headers=) as an invariant List of
            # (str, str | bytes | None), refusing our read-only list of (str, bytes | None) pairs.
            headers=produce_headers(dlq_headers(headers, failure, agent, topic, 1, 100 + offset)),
        )
    assert producer.flush(30) == 0
    return [(p[1], p[2]) for p in plan]


def test_list_counts_dead_letters_by_error_class(iso: Isolated) -> None:
    _dead_letters(iso)
    result = runner.invoke(app, iso.cli("dlq", "list", "--json"))
    assert result.exit_code == 0, result.stderr
    [ours] = [s for s in json.loads(result.stdout) if s["topic"] == conv.dlq_topic(iso.topics["order.created"])]
    assert ours["total"] == 5
    assert ours["by_error_class"] == {"ValueError": 3, "TimeoutError": 1, "DecodeError": 1}
    assert ours["by_reason"]["handler_error"] == 3
    assert ours["original_topic"] == iso.topics["order.created"]
    pattern = iso.topics["order.created"][:-2] + "*"  # shell-style, on the original topic's name
    table = runner.invoke(app, iso.cli("dlq", "list", pattern))
    assert table.exit_code == 0 and "ValueError: 3" in table.stdout, table.output
    assert conv.dlq_topic(iso.topics["order.created"]) in table.stdout
    unknown = runner.invoke(app, iso.cli("dlq", "list", "no-such-topic-" + iso.topics["order.created"]))
    assert unknown.exit_code == 2 and "no DLQ topic matches" in unknown.stderr, unknown.output


def test_show_filters_and_decodes_with_error_headers(iso: Isolated) -> None:
    _dead_letters(iso)
    topic = iso.topics["order.created"]
    result = runner.invoke(
        app, iso.cli("dlq", "show", topic, "--agent", "payments", "--reason", "handler_error", "--json")
    )
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["offset"] for r in rows] == [0, 1, 4]
    first = rows[0]
    assert first["error_class"] == "ValueError" and first["error_message"] == "ValueError: boom 0"
    assert first["attempts"] == "3" and first["first_failure"] == "2024-05-01T12:00:00.000Z"
    assert first["original"] == {"topic": topic, "partition": "1", "offset": "100"}
    assert first["payload"]["value"]["order_id"] == "o-1"
    assert first["payload"]["value"]["card_token"] == "***"
    assert rows[2]["redrive_count"] == 1

    undecodable = json.loads(
        runner.invoke(
            app, iso.cli("dlq", "show", conv.dlq_topic(topic), "--error-class", "DecodeError", "--json")
        ).stdout
    )
    assert len(undecodable) == 1 and "undecodable" in undecodable[0]["payload"]["error"]
    by_offset = json.loads(runner.invoke(app, iso.cli("dlq", "show", topic, "--offset", "0:2", "--json")).stdout)
    assert [r["reason"] for r in by_offset] == ["retries_exhausted"]
    since = json.loads(runner.invoke(app, iso.cli("dlq", "show", topic, "--since", "1h", "--json")).stdout)
    until = json.loads(runner.invoke(app, iso.cli("dlq", "show", topic, "--until", "1h", "--json")).stdout)
    assert (len(since), len(until)) == (5, 0)  # by the time each record was dead-lettered
    table = runner.invoke(app, iso.cli("dlq", "show", topic, "--limit", "2"))
    assert table.exit_code == 0 and "handler_error" in table.stdout and "boom 1" in table.stdout


def test_redrive_sends_originals_back_once_with_a_redrive_counter(iso: Isolated) -> None:
    _dead_letters(iso)
    topic = iso.topics["order.created"]

    dry = runner.invoke(app, iso.cli("dlq", "redrive", topic, "--error-class", "ValueError", "--dry-run", "--json"))
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["items"] and read_all(iso.settings(), topic) == []

    result = runner.invoke(
        app, iso.cli("dlq", "redrive", topic, "--error-class", "ValueError", "--rate", "50", "--json")
    )

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["selected"], summary["redriven"], summary["skipped_duplicates"], summary["failed"]) == (3, 2, 1, 0)
    records = {m.key(): m for m in read_all(iso.settings(), topic)}
    assert set(records) == {b"o-1", b"o-2"}
    for key, expected_count in ((b"o-1", b"2"), (b"o-2", b"1")):
        headers = records[key].headers()
        names = [name for name, _ in headers]
        assert not any(name.startswith("choreo_dlq_") for name in names)
        assert dict(headers)[conv.REDRIVE_COUNT] == expected_count and names.count(conv.REDRIVE_COUNT) == 1
        envelope = Envelope.from_headers(headers)  # the original envelope, idempotency key included
        assert envelope.idempotency_key == f"idem-{key.decode()}"
    codec = iso.codec()
    assert codec.decode("order.created", records[b"o-2"].value())["customer_email"] == "buyer2@example.com"


def test_redrive_needs_a_selection_and_honours_max_redrives(iso: Isolated) -> None:
    _dead_letters(iso)
    topic = iso.topics["order.created"]
    everything = runner.invoke(app, iso.cli("dlq", "redrive", topic))
    assert everything.exit_code == 2 and "--all" in everything.stderr
    unknown = runner.invoke(app, iso.cli("dlq", "show", "no.such." + uuid.uuid4().hex))
    assert unknown.exit_code == 2 and "no DLQ topic" in unknown.stderr
    bad_offset = runner.invoke(app, iso.cli("dlq", "show", topic, "--offset", "x"))
    assert bad_offset.exit_code == 2 and "PARTITION:OFFSET" in bad_offset.stderr

    with DlqInspector(iso.settings()) as inspector:
        result = inspector.redrive(
            conv.dlq_topic(topic), DlqFilter(reasons=frozenset({"handler_error"})), max_redrives=1, progress=False
        )
    assert (result.selected, result.skipped_max_redrives, result.redriven) == (3, 1, 2)
    assert sorted(m.key() for m in read_all(iso.settings(), topic)) == [b"o-1", b"o-2"]
