"""`choreo replay` against the real broker: topic ranges, files, dry runs, and an interrupted
replay that resumes from its checkpoint with matching checksums."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from processors.cli.main import app
from processors.contracts import AvroCodec, Envelope
from processors.settings import REPO_ROOT, Settings
from processors.tooling.checkpoint import Checkpoint
from processors.tooling.filesource import FileSource
from processors.tooling.publisher import Publisher
from processors.tooling.replay import Replayer
from tests.integration.tooling_support import Isolated, isolate_contracts, order, read_all

pytestmark = pytest.mark.kafka
runner = CliRunner(env={"COLUMNS": "200"})  # rich tables as wide as a real terminal


def _fill(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    """Records with keys, varied values (one tombstone) and headers, as a real topic has."""
    producer = Producer(Settings.load(bootstrap_servers=bootstrap).producer_config())
    for n in range(start, start + count):
        value = None if n == start + 5 else f"value-{n}".encode() * (1 + n % 3)
        producer.produce(
            topic,
            key=f"key-{n % 50}".encode(),
            value=value,
            headers=[("ce_idempotencykey", f"idem-{n}".encode()), ("trace", b"\x00\xff")],
        )
    assert producer.flush(30) == 0


def _contents(settings: Settings, topic: str) -> Counter:
    return Counter((m.key(), m.value(), tuple(m.headers() or ())) for m in read_all(settings, topic))


def _json(result) -> dict:  # noqa: ANN001 - click Result
    return json.loads(result.stdout)


@pytest.fixture
def topics(kafka_bootstrap: str, create_topics, unique_name) -> tuple[str, str]:
    source, dest = unique_name("replay.src"), unique_name("replay.dst")
    create_topics([source, dest], partitions=3)
    return source, dest


def test_interrupted_replay_resumes_where_it_stopped_and_checksums_match(
    kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path
) -> None:
    source, dest = topics
    _fill(kafka_bootstrap, source, 400)
    checkpoint = tmp_path / "cp.json"
    base = [
        "replay",
        "--from",
        source,
        "--to",
        dest,
        "--checkpoint",
        str(checkpoint),
        "--bootstrap",
        kafka_bootstrap,
        "--json",
    ]

    proc = subprocess.Popen(
        [sys.executable, "-m", "processors.cli.main", *base, "--rate", "150", "--batch", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if checkpoint.exists() and Checkpoint.load(checkpoint).written.count >= 100:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    first = json.loads(stdout)
    assert first["interrupted"] and not first["completed"]
    assert 100 <= first["written"]["count"] < 400 and first["match"]
    assert "resume with the same command plus --resume" in stderr
    stopped = Checkpoint.load(checkpoint)
    assert stopped.read.count == stopped.written.count == first["read"]["count"]
    assert len(read_all(Settings.load(bootstrap_servers=kafka_bootstrap), dest)) == first["written"]["count"]

    refused = runner.invoke(app, base)
    assert refused.exit_code == 2 and "--resume" in refused.stderr

    resumed = runner.invoke(app, [*base, "--resume"])

    assert resumed.exit_code == 0, resumed.stderr
    second = _json(resumed)
    assert second["completed"] and second["resumed"] and second["match"]
    assert second["read"]["count"] == second["written"]["count"] == 400
    # Independent checks: a fresh dry run of the source gives the same digest, the destination holds
    # every record exactly once with its key, value and headers, and (same partition count,
    # murmur2 keys) reading the destination back gives the same digest again.
    dry_source = _json(
        runner.invoke(
            app, ["replay", "--from", source, "--to", dest, "--dry-run", "--json", "--bootstrap", kafka_bootstrap]
        )
    )
    assert dry_source["read"] == second["read"]
    settings = Settings.load(bootstrap_servers=kafka_bootstrap)
    assert _contents(settings, dest) == _contents(settings, source)
    dry_dest = _json(
        runner.invoke(
            app, ["replay", "--from", dest, "--to", source, "--dry-run", "--json", "--bootstrap", kafka_bootstrap]
        )
    )
    assert dry_dest["read"]["digest"] == second["written"]["digest"]

    again = runner.invoke(app, [*base, "--resume"])
    assert again.exit_code == 0 and _json(again)["completed"]
    assert len(read_all(settings, dest)) == 400  # a completed replay resumed sends nothing more


def test_ranges_by_partition_offsets_and_time(kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path) -> None:
    source, dest = topics
    _fill(kafka_bootstrap, source, 60)
    time.sleep(0.05)
    boundary = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    _fill(kafka_bootstrap, source, 30, start=1000)
    common = ["--to", dest, "--dry-run", "--json", "--bootstrap", kafka_bootstrap]

    by_offsets = _json(
        runner.invoke(
            app, ["replay", "--from", source, "--partition", "1", "--from-offset", "2", "--to-offset", "5", *common]
        )
    )
    assert by_offsets["read"]["count"] == 4 and list(by_offsets["partitions"]) == ["1"]
    since = _json(runner.invoke(app, ["replay", "--from", source, "--since", boundary, *common]))
    until = _json(runner.invoke(app, ["replay", "--from", source, "--until", boundary, *common]))
    assert (since["read"]["count"], until["read"]["count"]) == (30, 60)

    no_partition = runner.invoke(app, ["replay", "--from", source, "--from-offset", "3", *common])
    assert no_partition.exit_code == 2 and "pick one with --partition" in no_partition.stderr
    bad_partition = runner.invoke(app, ["replay", "--from", source, "--partition", "9", *common])
    assert bad_partition.exit_code == 2 and "has no partition 9" in bad_partition.stderr


def test_dry_run_produces_nothing_and_bad_arguments_exit_2(
    kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path
) -> None:
    source, dest = topics
    _fill(kafka_bootstrap, source, 20)
    checkpoint = tmp_path / "cp.json"
    dry = runner.invoke(
        app,
        [
            "replay",
            "--from",
            source,
            "--to",
            dest,
            "--dry-run",
            "--checkpoint",
            str(checkpoint),
            "--bootstrap",
            kafka_bootstrap,
        ],
    )
    assert dry.exit_code == 0 and "dry run" in dry.stdout
    assert not checkpoint.exists()
    assert read_all(Settings.load(bootstrap_servers=kafka_bootstrap), dest) == []

    cases = {
        ("--to", "missing." + uuid.uuid4().hex): "does not exist",
        ("--to", source): "into itself",
        ("--to", dest, "--resume", "--checkpoint", str(tmp_path / "none.json")): "no checkpoint to resume from",
        ("--to", dest, "--since", "someday"): "--since",
        ("--to", dest, "--rate", "0"): "--rate must be positive",
    }
    for args, message in cases.items():
        result = runner.invoke(app, ["replay", "--from", source, *args, "--bootstrap", kafka_bootstrap])
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    neither = runner.invoke(app, ["replay", "--to", dest, "--bootstrap", kafka_bootstrap])
    assert neither.exit_code == 2 and "exactly one source" in neither.stderr


def test_resume_refuses_a_checkpoint_of_another_replay(
    kafka_bootstrap: str, topics: tuple[str, str], tmp_path: Path, create_topics, unique_name
) -> None:
    source, dest = topics
    other = unique_name("replay.other")
    create_topics([other])
    _fill(kafka_bootstrap, source, 5)
    checkpoint = tmp_path / "cp.json"
    ok = runner.invoke(
        app, ["replay", "--from", source, "--to", dest, "--checkpoint", str(checkpoint), "--bootstrap", kafka_bootstrap]
    )
    assert ok.exit_code == 0, ok.stderr
    wrong = runner.invoke(
        app,
        [
            "replay",
            "--from",
            source,
            "--to",
            other,
            "--checkpoint",
            str(checkpoint),
            "--resume",
            "--bootstrap",
            kafka_bootstrap,
        ],
    )
    assert wrong.exit_code == 2 and "checkpoint is for" in wrong.stderr


# ------------------------------------------------------------------------------ files
@pytest.fixture
def iso(tmp_path: Path, kafka_bootstrap: str, create_topics) -> Isolated:
    iso = isolate_contracts(tmp_path, uuid.uuid4().hex[:10], kafka_bootstrap)
    create_topics([iso.topics["order.created"]], partitions=3)
    return iso


def test_ndjson_backfill_keeps_exported_headers_and_derives_keys_for_bare_events(iso: Isolated, tmp_path: Path) -> None:
    topic = iso.topics["order.created"]
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        publisher.publish("order.created", order(1), idempotency_key="original-key-1")
    exported = runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--json", "--show-pii"))
    export = tmp_path / "export.ndjson"
    export.write_text(exported.stdout + json.dumps(order(2)) + "\n\n" + json.dumps(order(3)) + "\n")

    result = runner.invoke(
        app,
        iso.cli("replay", "--file", str(export), "--to", topic, "--json", "--checkpoint", str(tmp_path / "cp.json")),
    )

    assert result.exit_code == 0, result.stderr
    summary = _json(result)
    assert summary["read"]["count"] == summary["written"]["count"] == 3 and summary["match"]
    keys = Counter(Envelope.from_headers(m.headers()).idempotency_key for m in read_all(iso.settings(), topic))
    assert keys["original-key-1"] == 2  # the original and its backfilled copy: agents drop the copy
    assert len(keys) == 3

    twice = runner.invoke(
        app,
        iso.cli("replay", "--file", str(export), "--to", topic, "--json", "--checkpoint", str(tmp_path / "cp2.json")),
    )
    assert twice.exit_code == 0
    again = Counter(Envelope.from_headers(m.headers()).idempotency_key for m in read_all(iso.settings(), topic))
    assert set(again) == set(keys)  # bare events got the same content-derived keys the second time


def test_invalid_file_is_refused_with_lines_and_fields_before_anything_is_sent(iso: Isolated, tmp_path: Path) -> None:
    topic = iso.topics["order.created"]
    export = tmp_path / "bad.ndjson"
    export.write_text(json.dumps(order(1)) + "\n" + json.dumps(order(2, total_minor=1.5)) + "\nnot json\n")
    result = runner.invoke(app, iso.cli("replay", "--file", str(export), "--to", topic))

    assert result.exit_code == 2
    assert "line 2: total_minor: expected long, got float" in result.stderr
    assert "line 3: not valid JSON" in result.stderr
    assert read_all(iso.settings(), topic) == []
    no_type = runner.invoke(app, iso.cli("replay", "--file", str(export), "--to", "scratch"))
    assert no_type.exit_code == 2 and "--type" in no_type.stderr


def test_redacted_exports_are_refused(iso: Isolated, tmp_path: Path) -> None:
    topic = iso.topics["order.created"]
    with Publisher(iso.settings(), registry=iso.registry()) as publisher:
        publisher.publish("order.created", order(1))
    export = tmp_path / "redacted.ndjson"
    export.write_text(runner.invoke(app, iso.cli("tail", topic, "--from-beginning", "--json")).stdout)
    result = runner.invoke(app, iso.cli("replay", "--file", str(export), "--to", topic))
    assert result.exit_code == 2 and "PII redacted" in result.stderr


def test_avro_container_backfill_of_an_old_schema_version_resumes(iso: Isolated, tmp_path: Path) -> None:
    topic = iso.topics["order.created"]
    v1 = json.loads((REPO_ROOT / "schemas" / "order.created" / "v1.avsc").read_text())
    path = tmp_path / "orders.avro"
    with path.open("wb") as handle:
        fastavro.writer(
            handle,
            fastavro.parse_schema(v1),
            [{**order(n), "created_at": datetime(2024, 5, 1, tzinfo=UTC)} for n in range(30)],
        )
    registry = iso.registry()
    codec = AvroCodec(registry)
    checkpoint = tmp_path / "cp.json"
    checks = {"n": 0}

    def stop_soon() -> bool:  # polled per record read and per record sent: trips inside the 1st or 2nd batch
        checks["n"] += 1
        return checks["n"] > 12

    first = Replayer(
        iso.settings(),
        FileSource(path, topic, registry, codec),
        topic,
        batch=10,
        checkpoint_path=checkpoint,
        stop=stop_soon,
        progress=False,
    ).run()
    assert first.interrupted and 0 < first.written.count < 30 and first.match

    second = Replayer(
        iso.settings(),
        FileSource(path, topic, registry, codec),
        topic,
        batch=10,
        checkpoint_path=checkpoint,
        resume=True,
        progress=False,
    ).run()

    assert second.completed and second.match and second.written.count == 30
    records = read_all(iso.settings(), topic)
    assert sorted(codec.decode("order.created", m.value())["order_id"] for m in records) == sorted(
        f"o-{n}" for n in range(30)
    )
    assert all(codec.decode("order.created", m.value())["shipping_address"] is None for m in records)


def test_a_failed_delivery_exits_1_and_keeps_the_checkpoint_at_the_last_complete_batch(
    kafka_bootstrap: str, create_topics, unique_name, tmp_path: Path
) -> None:
    source, dest = unique_name("replay.src"), unique_name("replay.small")
    create_topics([source])
    create_topics([dest], config={"max.message.bytes": "2000"})  # the broker refuses bigger records
    producer = Producer(Settings.load(bootstrap_servers=kafka_bootstrap).producer_config())
    for n in range(10):
        producer.produce(source, key=f"k{n}".encode(), value=(b"x" * 5000 if n == 6 else b"small"))
    assert producer.flush(30) == 0
    checkpoint = tmp_path / "cp.json"

    # --batch 1: each record is flushed alone, so the broker refuses exactly the big one (in one
    # produce request with neighbours, they would all be refused with it)
    result = runner.invoke(
        app,
        [
            "replay",
            "--from",
            source,
            "--to",
            dest,
            "--batch",
            "1",
            "--checkpoint",
            str(checkpoint),
            "--json",
            "--bootstrap",
            kafka_bootstrap,
        ],
    )

    assert result.exit_code == 1, result.stderr
    summary = _json(result)
    assert summary["failed"] == 1 and not summary["match"] and not summary["completed"]
    assert "source partition 0 offset 6" in summary["errors"][0]
    assert summary["read"]["count"] == 7 and summary["written"]["count"] == 6
    saved = Checkpoint.load(checkpoint)
    assert saved.next == {0: 6} and saved.written.count == 6  # the last confirmed batch
    resumed = runner.invoke(
        app,
        [
            "replay",
            "--from",
            source,
            "--to",
            dest,
            "--checkpoint",
            str(checkpoint),
            "--resume",
            "--json",
            "--bootstrap",
            kafka_bootstrap,
        ],
    )
    assert resumed.exit_code == 1 and "offset 6" in _json(resumed)["errors"][0]  # still refused, never skipped
