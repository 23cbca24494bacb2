"""`choreo tail` and the Subscriber API against the real broker."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from processors.cli.main import app
from processors.tooling.publisher import Publisher
from processors.tooling.subscriber import FieldFilter, Subscriber
from tests.integration.tooling_support import Isolated, isolate_contracts, order

pytestmark = pytest.mark.kafka
runner = CliRunner(env={"COLUMNS": "200"})  # rich tables as wide as a real terminal


@pytest.fixture
def iso(tmp_path: Path, kafka_bootstrap: str, create_topics) -> Isolated:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    create_topics([iso.topics["order.created"]], partitions=2)
    return iso


def _publish(iso: Isolated, *events: dict, version: int | None = None) -> None:
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        result = publisher.publish_many("order.created", list(events), version=version)
        assert result.sent == len(events), result.to_json()


def _raw(iso: Isolated, topic: str, *records: tuple[bytes | None, bytes | None]) -> None:
    producer = Producer(iso.settings().producer_config())
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_tail_decodes_every_version_and_shows_undecodable_records(iso: Isolated) -> None:
    topic = iso.topics["order.created"]
    v1 = order(1)
    _publish(iso, v1, version=1)
    _publish(
        iso,
        order(
            2,
            shipping_address={"name": "A", "line1": "Main 1", "city": "X", "postal_code": "1", "country": "DE"},
            promo_code="SPRING",
        ),
    )
    _raw(iso, topic, (b"o-3", b"not avro at all"), (b"o-4", None))

    result = runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--format", "json", "--show-pii"))

    assert result.exit_code == 0, result.stderr
    events = {e["key"]: e for e in _lines(result.stdout)}
    assert set(events) == {"o-1", "o-2", "o-3", "o-4"}
    assert events["o-1"]["value"]["shipping_address"] is None  # v1 writer resolved to v2 reader
    assert events["o-1"]["value"]["customer_email"] == "buyer1@example.com"
    assert events["o-1"]["headers"]["ce_type"] == "order.created"
    assert events["o-2"]["value"]["shipping_address"]["city"] == "X"
    assert events["o-3"]["event_type"] is None and "undecodable" in events["o-3"]["error"]
    assert "unknown magic bytes" in events["o-3"]["error"]
    assert "envelope_error" in events["o-3"]  # no ce_* headers either, and it says so
    assert events["o-4"]["error"] == "tombstone: null value"


def test_tail_redacts_pii_by_default_and_filters(iso: Isolated) -> None:
    topic = iso.topics["order.created"]
    _publish(iso, order(1), order(2), order(4))  # customers c-1, c-2, c-1
    _raw(iso, topic, (b"junk", b"\x00\x01"))

    result = runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--json", "--filter", "customer_id=c-1"))

    assert result.exit_code == 0, result.stderr
    events = _lines(result.stdout)
    decoded = sorted(e["key"] for e in events if "error" not in e)
    assert decoded == ["o-1", "o-4"]
    assert [e["key"] for e in events if "error" in e] == ["junk"]  # cannot be matched: shown, not hidden
    assert all(e["value"]["customer_email"] == "***" and e["redacted"] for e in events if "error" not in e)
    by_key = runner.invoke(
        app, iso.cli("tail", topic, "--from-beginning", "--json", "--filter", "@key=o-2", "--filter", "items[0].qty=3")
    )
    assert [e["key"] for e in _lines(by_key.stdout)] == ["o-2"]


def test_tail_since_last_and_table(iso: Isolated, create_topics, unique_name) -> None:
    topic = unique_name("tail.single")
    create_topics([topic], partitions=1)
    iso_topic = iso.topics["order.created"]
    _publish(iso, *[order(n) for n in range(12)])
    time.sleep(0.05)
    boundary = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    _publish(iso, order(100))

    since = runner.invoke(app, iso.cli("tail", iso_topic, "--since", boundary, "--json"))
    assert [e["key"] for e in _lines(since.stdout)] == ["o-100"]
    everything = runner.invoke(app, iso.cli("tail", iso_topic, "--since", "1h", "--json"))
    assert len(_lines(everything.stdout)) == 13

    _raw(iso, topic, *[(f"k{n}".encode(), b"x") for n in range(12)])
    last = runner.invoke(app, iso.cli("tail", topic, "--json"))  # like tail(1): the last 10
    assert [e["key"] for e in _lines(last.stdout)] == [f"k{n}" for n in range(2, 12)]
    table = runner.invoke(app, iso.cli("tail", topic, "-n", "1"))
    assert table.exit_code == 0 and "UNDECODABLE" in table.stdout and "k11" in table.stdout


def test_tail_usage_errors(iso: Isolated) -> None:
    topic = iso.topics["order.created"]
    bad_filter = runner.invoke(app, iso.cli("tail", topic, "--filter", "customer_id"))
    assert bad_filter.exit_code == 2 and "expected FIELD=VALUE" in bad_filter.stderr
    missing = runner.invoke(app, iso.cli("tail", "no.such.topic." + uuid.uuid4().hex))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    bad_time = runner.invoke(app, iso.cli("tail", topic, "--since", "last tuesday"))
    assert bad_time.exit_code == 2 and "--since" in bad_time.stderr
    both = runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--since", "1h"))
    assert both.exit_code == 2 and "one of --from-beginning, --since or --last" in both.stderr


def test_subscriber_follows_new_events(iso: Isolated) -> None:
    later = threading.Timer(1.0, _publish, args=(iso, order(7), order(8)))
    seen = []
    deadline = time.monotonic() + 30
    with Subscriber(
        [iso.topics["order.created"]],
        iso.settings(),
        registry=iso.registry(),
        follow=True,
        filters=[FieldFilter.parse("order_id=o-8")],
        stop=lambda: time.monotonic() > deadline,
    ) as sub:
        later.start()
        for event in sub:
            seen.append(event)
            break
    later.join()
    assert [e.value["order_id"] if e.value else None for e in seen] == ["o-8"]
    assert seen[0].envelope is not None and seen[0].envelope.type == "order.created"


def test_subscriber_as_a_group_member_resumes_from_its_commits(iso: Isolated) -> None:
    _publish(iso, order(1), order(2), order(3))
    group = f"tail-test-{uuid.uuid4().hex[:8]}"
    topic = iso.topics["order.created"]

    def consume(expect: int) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + 30
        with Subscriber(
            [topic],
            iso.settings(),
            registry=iso.registry(),
            group_id=group,
            from_beginning=True,
            stop=lambda: len(got) >= expect or time.monotonic() > deadline,
        ) as sub:
            for event in sub:
                assert event.value is not None, event.error
                got.append(event.value["order_id"])
        return got

    assert sorted(consume(3)) == ["o-1", "o-2", "o-3"]
    _publish(iso, order(4))
    assert consume(1) == ["o-4"]  # the first three were committed
