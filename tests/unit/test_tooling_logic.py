"""Pure logic of the operator tooling: time arguments, checksums, rate limiting, checkpoints,
JSON-to-Avro conversion, DLQ header handling and filters."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.runtime import conventions as conv
from processors.tooling.checkpoint import Checkpoint, default_checkpoint_path
from processors.tooling.checksums import StreamDigest, chain
from processors.tooling.dlq import DeadLetter, DlqFilter, parse_offset
from processors.tooling.jsonavro import content_key, from_json, to_json_text
from processors.tooling.kafka_io import ProgressReporter, RateLimiter, ToolingError, encode_headers, headers_dict
from processors.tooling.timeparse import TimeArgError, format_ms, parse_time, parse_time_ms

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------ time arguments
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", NOW - dt.timedelta(minutes=10)),
        ("2h", NOW - dt.timedelta(hours=2)),
        ("1d", NOW - dt.timedelta(days=1)),
        ("1h30m", NOW - dt.timedelta(minutes=90)),
        ("45s", NOW - dt.timedelta(seconds=45)),
        ("2024-04-30T08:00:00Z", dt.datetime(2024, 4, 30, 8, tzinfo=dt.UTC)),
        ("2024-04-30T10:00:00+02:00", dt.datetime(2024, 4, 30, 8, tzinfo=dt.UTC)),
        ("2024-04-30T08:00:00", dt.datetime(2024, 4, 30, 8, tzinfo=dt.UTC)),
        ("2024-04-30", dt.datetime(2024, 4, 30, tzinfo=dt.UTC)),
    ],
)
def test_time_arguments_accept_iso_and_relative(text: str, expected: dt.datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "2024-13-01", "-5m"])
def test_bad_time_arguments_name_both_forms(text: str) -> None:
    with pytest.raises(TimeArgError, match="ISO-8601"):
        parse_time(text, now=NOW)


def test_time_in_epoch_ms_and_back() -> None:
    ms = parse_time_ms("2024-05-01T12:00:00.250Z")
    assert ms == 1714564800250
    assert format_ms(ms) == "2024-05-01T12:00:00.250Z"
    assert format_ms(None) == "-"


# ------------------------------------------------------------------------------ checksums
def test_digest_frames_lengths_and_nulls() -> None:
    zero = bytes(32)
    assert chain(zero, b"ab", b"c") != chain(zero, b"a", b"bc")
    assert chain(zero, None, b"") != chain(zero, b"", b"")
    assert chain(zero, b"k", None) != chain(zero, b"k", b"")


records = st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=8) | st.none(), st.binary(max_size=16)), max_size=30)


@given(records, st.randoms())
def test_digest_ignores_partition_interleaving_but_not_order_within(recs, rnd) -> None:
    """Records of different partitions may be read in any interleaving: the digest is the same."""
    ordered = StreamDigest()
    for p, k, v in recs:
        ordered.add(p, k, v)
    by_partition: dict[int, list] = {}
    for p, k, v in recs:
        by_partition.setdefault(p, []).append((k, v))
    shuffled = StreamDigest()
    queues = {p: list(items) for p, items in by_partition.items()}
    while queues:
        p = rnd.choice(sorted(queues))
        k, v = queues[p].pop(0)
        shuffled.add(p, k, v)
        if not queues[p]:
            del queues[p]
    assert shuffled.digest == ordered.digest and shuffled.count == ordered.count == len(recs)


def test_digest_detects_reordering_within_a_partition_and_survives_json() -> None:
    a, b = StreamDigest(), StreamDigest()
    a.add(0, b"k1", b"v1")
    a.add(0, b"k2", b"v2")
    b.add(0, b"k2", b"v2")
    b.add(0, b"k1", b"v1")
    assert a.digest != b.digest
    restored = StreamDigest.from_json(json.loads(json.dumps(a.to_json())))
    restored.add(1, None, b"x")
    a.add(1, None, b"x")
    assert restored.digest == a.digest and restored.count == 3


def test_digest_refuses_an_edited_checkpoint() -> None:
    data = StreamDigest()
    data.add(0, b"k", b"v")
    doc = data.to_json()
    doc["digest"] = "0" * 64
    with pytest.raises(ValueError, match="does not match"):
        StreamDigest.from_json(doc)


# ------------------------------------------------------------------------------ rate limiting
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_rate_limiter_paces_to_the_rate_after_a_one_second_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    for _ in range(300):
        limiter.acquire()
    # 100 tokens were available at once, the other 200 take two seconds
    assert clock.now == pytest.approx(2.0, abs=0.02)


def test_rate_limiter_unlimited_and_invalid() -> None:
    assert RateLimiter(None).acquire(10_000) == 0.0
    with pytest.raises(ToolingError, match="--rate must be positive"):
        RateLimiter(0)


def test_rate_limiter_below_one_per_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.5, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    limiter.acquire()
    assert clock.now == pytest.approx(2.0)


def test_progress_line_shows_rate_and_eta() -> None:
    reporter = ProgressReporter("replay a -> b", total=100, enabled=False)
    reporter.done = 25
    line = reporter.line(now=reporter._started + 5)
    assert line == "replay a -> b: 25/100 (25%), 5/s, ETA 15s"


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_is_atomic_and_complete(tmp_path: Path) -> None:
    read = StreamDigest()
    read.add(0, b"k", b"v")
    cp = Checkpoint(
        {"kind": "topic", "topic": "a", "partition": None},
        "b",
        {0: (0, 10), 1: (5, 5)},
        {0: 1, 1: 5},
        read,
        read.copy(),
    )
    path = tmp_path / "deep" / "cp.json"
    cp.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["cp.json"]  # no temp file left behind
    back = Checkpoint.load(path)
    assert back.ranges == {0: (0, 10), 1: (5, 5)} and back.next == {0: 1, 1: 5}
    assert back.read.digest == read.digest and back.written.count == 1 and not back.completed


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ToolingError, match="no checkpoint to resume from"):
        Checkpoint.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "source": {}}')
    with pytest.raises(ToolingError, match=r"bad.json: corrupt checkpoint"):
        Checkpoint.load(bad)


def test_default_checkpoint_path_is_a_safe_file_name() -> None:
    path = default_checkpoint_path("../orders[2]", "order created")
    assert path.parent == Path(".choreo/replay") and "/" not in path.name and path.name.endswith(".json")


# ------------------------------------------------------------------------------ JSON <-> Avro
SCHEMA = {
    "type": "record",
    "name": "E",
    "namespace": "t",
    "fields": [
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "maybe", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "label", "type": ["null", "string"]},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "L",
                    "fields": [{"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
                },
            },
        },
        {"name": "again", "type": ["null", "L"]},
    ],
}


def test_iso_timestamps_become_datetimes_guided_by_the_schema() -> None:
    out = from_json(
        SCHEMA,
        {
            "at": "2024-05-01T12:00:00Z",
            "maybe": "2024-05-01T12:00:00+02:00",
            "label": "2024-05-01T12:00:00Z",
            "day": "2024-05-01",
            "lines": [{"when": "2024-05-01T00:00:00"}],
            "again": {"when": 5},
            "extra": 1,
        },
    )
    assert out["at"] == dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    assert out["maybe"] == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert out["label"] == "2024-05-01T12:00:00Z"  # a string field stays a string
    assert out["day"] == dt.date(2024, 5, 1)
    assert out["lines"][0]["when"] == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    assert out["again"] == {"when": 5} and out["extra"] == 1


def test_unparseable_timestamps_are_left_for_the_validator() -> None:
    assert from_json(SCHEMA, {"at": "soon"})["at"] == "soon"


def test_content_key_is_deterministic_and_time_form_independent() -> None:
    a = content_key("order.created", {"id": "1", "at": dt.datetime(2024, 5, 1, tzinfo=dt.UTC)})
    b = content_key("order.created", {"at": 1714521600000, "id": "1"})
    assert a == b
    assert a != content_key("order.cancelled", {"id": "1", "at": 1714521600000})


def test_rendering_handles_avro_python_types() -> None:
    text = to_json_text({"at": dt.datetime(2024, 5, 1, tzinfo=dt.UTC), "raw": b"\x00\x01"})
    assert text == '{"at":"2024-05-01T00:00:00Z","raw":"AAE="}'


# ------------------------------------------------------------------------------ DLQ
def _dead_letter(offset: int = 7, headers: dict[str, str] | None = None) -> DeadLetter:
    base = {
        "ce_idempotencykey": "k-1",
        conv.DLQ_REASON: "handler_error",
        conv.DLQ_ERROR_CLASS: "ValueError",
        conv.DLQ_AGENT: "payments",
        conv.DLQ_ORIGINAL_TOPIC: "order.created",
        conv.DLQ_ATTEMPTS: "3",
    }
    base.update(headers or {})
    return DeadLetter("order.created.dlq", 0, offset, 1714521600000, b"o-1", b"\x00v", encode_headers(base))


def test_redrive_headers_strip_dlq_headers_and_count_redrives() -> None:
    first = _dead_letter()
    out = dict(first.redrive_headers())
    assert out == {"ce_idempotencykey": b"k-1", conv.REDRIVE_COUNT: b"1"}
    again = _dead_letter(headers={conv.REDRIVE_COUNT: "2"})
    assert dict(again.redrive_headers())[conv.REDRIVE_COUNT] == b"3"
    assert [k for k, _ in again.redrive_headers()].count(conv.REDRIVE_COUNT) == 1


def test_dead_letter_falls_back_to_the_topic_name_for_its_origin() -> None:
    rec = DeadLetter("payment.authorized.dlq", 0, 1, None, None, None, [])
    assert rec.original_topic == "payment.authorized"
    assert rec.reason == rec.error_class == rec.agent == "unknown" and rec.redrive_count == 0


def test_dlq_filters() -> None:
    rec = _dead_letter()
    assert DlqFilter().matches(rec) and DlqFilter().selects_all
    assert DlqFilter(reasons=frozenset({"handler_error"}), agents=frozenset({"payments"})).matches(rec)
    assert not DlqFilter(reasons=frozenset({"loop"})).matches(rec)
    assert not DlqFilter(error_classes=frozenset({"KeyError"})).matches(rec)
    assert DlqFilter(offsets=frozenset({(None, 7)})).matches(rec)
    assert DlqFilter(offsets=frozenset({(0, 7)})).matches(rec)
    assert not DlqFilter(offsets=frozenset({(1, 7)})).matches(rec)
    assert not DlqFilter(agents=frozenset({"x"})).selects_all


def test_parse_offset() -> None:
    assert parse_offset("42") == (None, 42)
    assert parse_offset("2:42") == (2, 42)
    with pytest.raises(ToolingError, match="PARTITION:OFFSET"):
        parse_offset("two")


def test_headers_render_as_text_without_losing_bytes() -> None:
    assert headers_dict([("a", b"x"), ("b", None), ("c", b"\xff")]) == {"a": "x", "b": None, "c": "\\xff"}
