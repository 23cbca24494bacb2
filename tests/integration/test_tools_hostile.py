"""The tools against whatever can be on a topic (real broker, records written by raw clients):
tombstones, null keys, header values and names that are not UTF-8, huge and numerous headers,
transaction markers, undecodable bytes carrying PII. `tail`, `dlq show` and `verify` report
them and go on, with output bounded and no PII value unless --show-pii; `replay` warns when a
range selects nothing."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from processors.cli.main import app
from processors.kafka_types import produce_headers
from processors.runtime import conventions as conv
from processors.tooling.kafka_io import MAX_SHOWN_HEADERS, PartitionRange, read_ranges, reader_config
from processors.tooling.publisher import Publisher
from tests.integration.raw_records import produce_with_raw_header_names
from tests.integration.tooling_support import Isolated, isolate_contracts, order

pytestmark = pytest.mark.kafka
runner = CliRunner(env={"COLUMNS": "200"})

HUGE = 300_000  # bytes of one header value: over any sane display, under the broker's record limit
MANY = 500  # headers on one record
EMAIL = "secret.buyer@example.com"
BOUND = 200_000  # characters of output that every one of these records together must stay under


@pytest.fixture
def iso(tmp_path: Path, kafka_bootstrap: str, create_topics) -> Isolated:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    topic = iso.topics["order.created"]
    create_topics([topic, conv.dlq_topic(topic), iso.topics["audit.record"]], partitions=1)
    return iso


def _produce(iso: Isolated, topic: str, *records: dict) -> None:
    producer = Producer(iso.settings().producer_config())
    for rec in records:
        producer.produce(topic, key=rec.get("key"), value=rec.get("value"), headers=rec.get("headers"), partition=0)
    assert producer.flush(30) == 0


def _hostile(iso: Isolated, topic: str, extra_headers: list | None = None) -> int:
    """Write one of each hostile kind to partition 0 of ``topic``; returns how many records."""
    extra = extra_headers or []
    undecodable_with_pii = b"\x00garbage " + EMAIL.encode() + b" \xff\xfe"
    _produce(
        iso,
        topic,
        {"key": None, "value": None, "headers": extra},  # a tombstone with a null key
        {"key": b"\xff\xfe-key", "value": b"\xc3\x28 not avro", "headers": [*extra, ("ce_type", b"\xff\xfe\xfd")]},
        {"key": b"k-huge", "value": undecodable_with_pii, "headers": [*extra, ("x-huge", b"h" * HUGE)]},
        {"key": b"k-many", "value": b"v", "headers": [*extra, *[(f"x-{i}", b"v") for i in range(MANY)]]},
    )
    names = [(b"\xff\xfe-name", b"value"), *[(k.encode(), v) for k, v in extra]]
    produce_with_raw_header_names(iso.bootstrap, topic, 0, b"k-badname", b"v", names)
    return 5


def test_tail_reports_every_hostile_record_with_bounded_output_and_no_pii(iso: Isolated) -> None:
    topic = iso.topics["order.created"]
    count = _hostile(iso, topic)
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        assert publisher.publish_many("order.created", [order(1, customer_email=EMAIL)]).sent == 1
    as_json = runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--format", "json"))
    assert as_json.exit_code == 0, as_json.output
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(lines) == count + 1
    assert sum(1 for line in lines if line.get("error")) == count  # each hostile one reported, none skipped
    assert len(as_json.stdout) < BOUND and EMAIL not in as_json.stdout
    many = next(line for line in lines if line["key"] == "k-many")
    assert len(many["headers"]) == MAX_SHOWN_HEADERS + 1 and many["truncated"] is True
    badname = next(line for line in lines if line["key"] == "k-badname")
    assert list(badname["headers"]) == ["choreo_unreadable_headers"]
    table = runner.invoke(app, iso.cli("tail", topic, "--from-beginning"))
    assert table.exit_code == 0, table.output
    assert len(table.stdout) < BOUND and EMAIL not in table.stdout and table.stdout.count("UNDECODABLE") == count
    shown = runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--format", "json", "--show-pii"))
    assert EMAIL in shown.stdout  # the decoded order, on request


def test_tail_last_counts_records_not_offsets(iso: Isolated) -> None:
    """A transactional producer leaves a commit marker after each transaction: offsets 0,1 are
    one record and its marker, so "the last N offsets" can hold fewer than N records."""
    topic = iso.topics["order.created"]
    producer = Producer({**iso.settings().producer_config(), "transactional.id": f"tail-last-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        prepared = [publisher.prepare("order.created", order(n)) for n in range(4)]
    for event in prepared:
        producer.begin_transaction()
        producer.produce(topic, key=event.key, value=event.value, headers=produce_headers(event.headers), partition=0)
        producer.commit_transaction(30)
    for last, keys in ((1, ["o-3"]), (3, ["o-1", "o-2", "o-3"]), (10, ["o-0", "o-1", "o-2", "o-3"])):
        result = runner.invoke(app, iso.cli("tail", topic, "--last", str(last), "--format", "json"))
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["key"] for line in result.stdout.splitlines()] == keys


@pytest.mark.timeout(120)  # it hung: a read that never ends is the failure
def test_tail_last_reads_back_past_trailing_aborted_transactions(iso: Isolated) -> None:
    """Aborted transactions after the last committed record: the first windows `--last` reads
    back hold no record at all, so it widens them, reading the same partition again with the
    same consumer (which must not stay paused from the previous window's end)."""
    topic = iso.topics["order.created"]
    producer = Producer({**iso.settings().producer_config(), "transactional.id": f"tail-abort-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        committed, aborted = (publisher.prepare("order.created", order(n)) for n in (1, 2))
    for event, commit in ((committed, True), *((aborted, False),) * 4):
        producer.begin_transaction()
        producer.produce(topic, key=event.key, value=event.value, headers=produce_headers(event.headers), partition=0)
        producer.flush(30)
        producer.commit_transaction(30) if commit else producer.abort_transaction(30)
    for last in (1, 2):
        result = runner.invoke(app, iso.cli("tail", topic, "--last", str(last), "--format", "json"))
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["key"] for line in result.stdout.splitlines()] == ["o-1"]


def test_a_reader_reads_the_same_range_twice(iso: Isolated) -> None:
    """read_ranges pauses each partition it has finished; the next read of that partition with
    the same consumer must still get its records (it got none: the pause outlived unassign)."""
    topic = iso.topics["order.created"]
    _produce(iso, topic, *({"key": f"k{i}".encode(), "value": b"v"} for i in range(3)))
    consumer = Consumer(reader_config(iso.settings()))
    try:
        for _ in range(3):
            deadline = time.monotonic() + 30

            def too_long(end: float = deadline) -> bool:
                return time.monotonic() > end

            got = [m.offset() for m in read_ranges(consumer, [PartitionRange(topic, 0, 0, 3)], stop=too_long)]
            assert got == [0, 1, 2]
    finally:
        consumer.close()


def test_dlq_show_survives_hostile_records_and_hides_raw_pii(iso: Isolated) -> None:
    topic = iso.topics["order.created"]
    dlq = conv.dlq_topic(topic)
    dead = [(conv.DLQ_REASON, b"undecodable"), (conv.DLQ_ORIGINAL_TOPIC, topic.encode())]
    count = _hostile(iso, dlq, extra_headers=dead)
    as_json = runner.invoke(app, iso.cli("dlq", "show", topic, "--json"))
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert len(rows) == count
    assert len(as_json.stdout) < BOUND and EMAIL not in as_json.stdout and "secret.buyer" not in as_json.stdout
    huge = next(row for row in rows if row["key"] == "k-huge")
    assert "not_shown" in huge["payload"] and "PII" in huge["payload"]["not_shown"]
    table = runner.invoke(app, iso.cli("dlq", "show", topic))
    assert table.exit_code == 0, table.output
    assert len(table.stdout) < BOUND and EMAIL not in table.stdout
    listed = runner.invoke(app, iso.cli("dlq", "list", topic, "--json"))
    assert listed.exit_code == 0, listed.output
    assert [row["total"] for row in json.loads(listed.stdout)] == [count]
    redrive = runner.invoke(app, iso.cli("dlq", "redrive", topic, "--all", "--dry-run"))
    assert redrive.exit_code == 0 and "headers unreadable by the Kafka client, not redriven" in redrive.stderr
    shown = runner.invoke(app, iso.cli("dlq", "show", topic, "--json", "--show-pii"))
    assert "base64" in next(row for row in json.loads(shown.stdout) if row["key"] == "k-huge")["payload"]


def test_dlq_list_and_redrive_bound_what_the_dead_letters_own_headers_carry(iso: Isolated) -> None:
    """The DLQ headers themselves are anyone's bytes: a 300 KB reason, error class or idempotency
    key, and more distinct reasons than a table can hold, stay bounded in `dlq list` (counts of
    the top reasons, the rest summed) and in a redrive's dry-run listing."""
    topic = iso.topics["order.created"]
    dlq = conv.dlq_topic(topic)
    where = [(conv.DLQ_ORIGINAL_TOPIC, topic.encode())]
    huge = [
        (conv.DLQ_REASON, b"r" * HUGE),
        (conv.DLQ_ERROR_CLASS, b"c" * HUGE),
        ("ce_idempotencykey", b"i" * HUGE),
        *where,
    ]
    distinct = [
        {"key": b"k", "value": b"v", "headers": [(conv.DLQ_REASON, f"reason-{i}".encode()), *where]} for i in range(40)
    ]
    _produce(iso, dlq, {"key": b"k-huge", "value": b"v", "headers": huge}, *distinct)
    listed = runner.invoke(app, iso.cli("dlq", "list", dlq, "--json"))
    assert listed.exit_code == 0, listed.output
    [mine] = json.loads(listed.stdout)
    assert mine["total"] == 41 and sum(mine["by_reason"].values()) == 41
    assert len(mine["by_reason"]) <= 21 and any("others" in name for name in mine["by_reason"])
    assert len(json.dumps(mine)) < 10_000, len(json.dumps(mine))
    table = runner.invoke(app, iso.cli("dlq", "list", dlq))
    assert table.exit_code == 0 and len(table.stdout) < BOUND, len(table.stdout)
    redrive = runner.invoke(app, iso.cli("dlq", "redrive", topic, "--all", "--dry-run", "--json"))
    assert redrive.exit_code == 0, redrive.output
    assert len(redrive.stdout) < BOUND and "r" * 1000 not in redrive.stdout and "i" * 1000 not in redrive.stdout


def test_redrive_refuses_a_dead_letter_the_engine_truncated(iso: Isolated) -> None:
    """A copy cut to fit the producer's limit is not the event that was sent: redriving it would
    handle something else. It is named and left, the whole copy beside it is redriven."""
    topic = iso.topics["order.created"]
    dlq = conv.dlq_topic(topic)
    where = [(conv.DLQ_ORIGINAL_TOPIC, topic.encode()), (conv.DLQ_REASON, b"undecodable")]
    cut = [*where, (conv.DLQ_TRUNCATED, b"value cut from 1048600 to 900000 bytes")]
    _produce(
        iso,
        dlq,
        {"key": b"k-cut", "value": b"v" * 100, "headers": [*cut, ("ce_idempotencykey", b"cut-1")]},
        {"key": b"k-whole", "value": b"v", "headers": [*where, ("ce_idempotencykey", b"whole-1")]},
    )
    redrive = runner.invoke(app, iso.cli("dlq", "redrive", topic, "--all", "--dry-run", "--json"))
    assert redrive.exit_code == 0, redrive.output
    result = json.loads(redrive.stdout)
    assert [item["idempotency_key"] for item in result["items"]] == ["whole-1"]
    assert len(result["errors"]) == 1 and "@0: a truncated copy (choreo_dlq_truncated)" in result["errors"][0]


def test_verify_reports_tombstones_and_undecodable_records_instead_of_crashing(iso: Isolated) -> None:
    _hostile(iso, iso.topics["order.created"])
    _hostile(iso, iso.topics["audit.record"])
    result = runner.invoke(app, iso.cli("verify", "--json"))
    # Exit 1, not a crash: no agent ran, so the foreign inputs rightly have no audit record.
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["unreadable"] == 10
    examples = " ".join(summary["unreadable_examples"])
    assert "tombstone" in examples and "audit record" in examples
    assert all("no audit record" in v for v in summary["invariant_violations"])
    assert EMAIL not in result.stdout


def test_replay_warns_when_the_range_selects_nothing(iso: Isolated) -> None:
    topic = iso.topics["order.created"]
    result = runner.invoke(
        app, iso.cli("replay", "--from", topic, "--since", "1m", "--to", f"{topic}.copy", "--dry-run")
    )
    assert result.exit_code == 0, result.output
    assert "selects no records" in result.stderr and "--since 1m" in result.stderr


def test_replay_names_records_whose_headers_it_cannot_copy_and_fails_the_check(iso: Isolated, create_topics) -> None:
    """A header name that is not UTF-8 cannot be read, so cannot be copied, by confluent-kafka:
    replay leaves such a record out, names it, and exits 1 (the checksums differ) instead of
    writing it with the reader's stand-in header and reporting a matching copy."""
    source, copy = f"{iso.topics['order.created']}.src", f"{iso.topics['order.created']}.copy"
    create_topics([source, copy], partitions=1)
    _produce(iso, source, {"key": b"k-1", "value": b"v-1", "headers": [("x", b"1")]})
    produce_with_raw_header_names(iso.bootstrap, source, 0, b"k-2", b"v-2", [(b"\xff\xfe-name", b"v")])
    _produce(iso, source, {"key": b"k-3", "value": b"v-3"})
    dry = runner.invoke(app, iso.cli("replay", "--from", source, "--to", copy, "--dry-run"))
    assert dry.exit_code == 0 and "offset 1: headers unreadable" in dry.stderr, dry.output
    result = runner.invoke(app, iso.cli("replay", "--from", source, "--to", copy, "--json"))
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["read"]["count"], summary["written"]["count"], summary["not_copied"]) == (3, 2, 1)
    assert summary["match"] is False and "offset 1: headers unreadable" in summary["errors"][0]
    tailed = runner.invoke(app, iso.cli("tail", copy, "--from-beginning", "--json"))
    copied = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert [c["key"] for c in copied] == ["k-1", "k-3"] and copied[0]["headers"] == {"x": "1"}


def test_replay_file_refuses_an_export_of_a_record_whose_headers_were_unreadable(iso: Isolated, tmp_path: Path) -> None:
    """`tail --show-pii --json` exports such a record with the stand-in header only; replaying the
    export would write an event without its envelope and with that stand-in, so it is refused."""
    topic = iso.topics["order.created"]
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        event = publisher.prepare("order.created", order(1))
    names: list[tuple[bytes, bytes | None]] = [(b"\xff\xfe-name", b"v"), *[(k.encode(), v) for k, v in event.headers]]
    produce_with_raw_header_names(iso.bootstrap, topic, 0, event.key, event.value, names)
    export = tmp_path / "export.ndjson"
    export.write_text(runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--json", "--show-pii")).stdout)
    assert "choreo_unreadable_headers" in export.read_text()
    result = runner.invoke(app, iso.cli("replay", "--file", str(export), "--to", topic))
    assert result.exit_code == 2 and "headers the Kafka client could not read" in result.stderr, result.output
