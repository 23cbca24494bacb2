"""Records a hostile world sends, by class, for the fuzz suite (tests/integration/test_hostile_fuzz.py).

Every class of issue 13 has a maker here: bytes (random, JSON, truncated Avro, tombstone, another
contract's bytes), headers (missing, thousands of hop-count digits, 260 KB and 520 KB values,
non-UTF-8 values and *names*, bad time, a looping hop count), sizes (a 1.01 MB value), keys (null
off its partition, not the key field, not UTF-8), partitions (explicit wrong ones, librdkafka's
``consistent_random``), contract violations (a type with no business on the topic) and personal
data inside invalid bytes. Each says which DLQ reason every agent reading its topic must give.

A header *name* that is not UTF-8 cannot be written through confluent-kafka (it takes names as
text); it is produced by aiokafka, a second real Kafka client, in a subprocess (``python -m
tests.integration.hostile_records``) whose pure-Python record builder is handed the raw bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processors.contracts import Envelope
from processors.partitioner import partition_for

SOURCE = "urn:choreo:fuzz:hostile"
Headers = list[tuple[str, bytes | None]]

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNDECODABLE, MISSING_HEADER, LOOP = "undecodable", "missing_header", "loop"
MISROUTED, CONTRACT_VIOLATION = "misrouted", "contract_violation"


@dataclass
class Bad:
    """One malformed record and what must become of it."""

    cls: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str  # the DLQ reason every agent reading the topic gives
    partition: int | None = None  # explicit partition (else the producer's partitioner decides)
    producer: str = "murmur2_random"  # or "consistent_random", or "raw-names" (aiokafka)
    raw_names: list[bytes] = field(default_factory=list)  # header names that are not UTF-8 (raw-names only)
    pii: list[str] = field(default_factory=list)  # text that must never appear in logs, DLQ headers, audit, CLI
    truncated: bool = False  # its dead letter must be cut to fit the producer's limit
    coordinates: tuple[str, int, int] | None = None  # set once produced


class BadRecords:
    """Seeded makers of malformed records of every class, on the commerce topics."""

    def __init__(self, rng: random.Random, app: Any, run_id: str) -> None:
        self.rng, self.app, self.run_id = rng, app, run_id
        self.codec = app.codec
        self.order_topic = app.registry.get("order.created").topic
        self.partitions = app.registry.get("order.created").partitions
        consumed = {t for spec in app.agents.values() for t in app.input_topics(spec)}
        self.topics = sorted(consumed)
        self.seq = 0

    # ------------------------------------------------------------------ helpers
    def _order_id(self) -> str:
        self.seq += 1
        return f"bad-{self.run_id}-{self.seq:05d}"

    def _order(self, order_id: str) -> dict[str, Any]:
        return {
            "order_id": order_id,
            "customer_id": f"cust-{self.rng.randrange(100)}",
            "customer_email": f"pii{self.run_id}x{self.seq:05d}@leak.example",
            "card_token": f"tok_pii{self.run_id}x{self.seq:05d}",
            "items": [{"sku": "SKU-001", "qty": 1, "unit_price_minor": 1000}],
            "total_minor": 1000,
            "currency": "EUR",
            "created_at": 1_790_000_000_000,
        }

    def _headers(self, event_type: str = "order.created", **kw: Any) -> Headers:
        return list(Envelope.new(event_type, SOURCE, **kw).to_headers())

    def _pii(self, order: dict[str, Any]) -> list[str]:
        return [order["customer_email"], order["card_token"]]

    def _valid(self, cls: str, reason: str, **kw: Any) -> Bad:
        """A well-formed order (with PII in it) whose record is wrong in some other way."""
        order_id = self._order_id()
        order = self._order(order_id)
        return Bad(
            cls,
            self.order_topic,
            order_id.encode(),
            self.codec.encode("order.created", order),
            self._headers(),
            reason,
            pii=self._pii(order),
            **kw,
        )

    def _with(self, headers: Headers, name: str, value: bytes | None) -> Headers:
        return [(n, v) for n, v in headers if n != name] + ([(name, value)] if value is not None else [])

    def _home(self, key: bytes) -> int:
        return partition_for(key, self.partitions)

    # ------------------------------------------------------------------ classes
    def bytes_random(self) -> Bad:
        topic = self.rng.choice(self.topics)
        value = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(0, 200)))
        return Bad(
            "bytes.random",
            topic,
            self._order_id().encode(),
            value,
            self._headers(_type_of(self.app, topic)),
            UNDECODABLE,
        )

    def bytes_json(self) -> Bad:
        order_id = self._order_id()
        value = json.dumps({"order_id": order_id, "note": "json, not avro"}).encode()
        return Bad("bytes.json", self.order_topic, order_id.encode(), value, self._headers(), UNDECODABLE)

    def bytes_truncated(self) -> Bad:
        bad = self._valid("bytes.truncated_avro", UNDECODABLE)
        assert bad.value is not None
        bad.value = bad.value[: self.rng.randrange(11, len(bad.value) - 1)]
        return bad

    def bytes_tombstone(self) -> Bad:
        topic = self.rng.choice(self.topics)
        return Bad(
            "bytes.tombstone",
            topic,
            self._order_id().encode(),
            None,
            self._headers(_type_of(self.app, topic)),
            UNDECODABLE,
        )

    def bytes_other_contract(self) -> Bad:
        order_id = self._order_id()
        value = self.codec.encode(
            "order.confirmed",
            {"order_id": order_id, "total_minor": 1, "currency": "EUR", "confirmed_at": 1_790_000_000_000},
        )
        return Bad("bytes.other_contract", self.order_topic, order_id.encode(), value, self._headers(), UNDECODABLE)

    def headers_missing(self) -> Bad:
        bad = self._valid("headers.missing", MISSING_HEADER)
        drop = self.rng.choice(["ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion", "ce_idempotencykey"])
        bad.headers = [(n, v) for n, v in bad.headers if n != drop]
        return bad

    def headers_hop_digits(self) -> Bad:
        bad = self._valid("headers.hopcount_digits", MISSING_HEADER)
        bad.headers = self._with(bad.headers, "ce_hopcount", b"9" * self.rng.randrange(1000, 6000))
        return bad

    def headers_huge_known(self) -> Bad:
        bad = self._valid("headers.huge_value_260k", MISSING_HEADER)
        name = self.rng.choice(["ce_correlationid", "ce_tenant", "ce_id", "ce_idempotencykey", "tracestate"])
        bad.headers = self._with(bad.headers, name, b"h" * 260_000)
        if name == "tracestate":
            bad.headers = self._with(
                bad.headers, "traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )
        return bad

    def headers_huge_type(self) -> Bad:
        bad = self._valid("headers.ce_type_520k", MISSING_HEADER)
        bad.headers = self._with(bad.headers, "ce_type", b"order.created" + b"t" * 520_000)
        return bad

    def headers_non_utf8_value(self) -> Bad:
        bad = self._valid("headers.non_utf8_value", MISSING_HEADER)
        bad.headers = self._with(bad.headers, self.rng.choice(["ce_source", "ce_type", "ce_id"]), b"\xff\xfe\xfd")
        return bad

    def headers_non_utf8_name(self) -> Bad:
        bad = self._valid("headers.non_utf8_name", MISSING_HEADER, producer="raw-names")
        bad.raw_names = [b"\xff\xfe" + os.urandom(3)]
        return bad

    def headers_bad_time(self) -> Bad:
        bad = self._valid("headers.bad_time", MISSING_HEADER)
        bad.headers = self._with(bad.headers, "ce_time", self.rng.choice([b"yesterday", b"2024-01-01", b"x" * 900]))
        return bad

    def headers_loop(self) -> Bad:
        bad = self._valid("headers.loop", LOOP)
        bad.headers = self._with(bad.headers, "ce_hopcount", str(self.rng.randrange(100, 999_999)).encode())
        return bad

    def size_huge_value(self) -> Bad:
        order_id = self._order_id()
        fingerprint = self.codec.fingerprint("order.created")
        value = b"\xc3\x01" + fingerprint + self.rng.randbytes(1_010_000)
        return Bad(
            "size.value_1_01mb",
            self.order_topic,
            order_id.encode(),
            value,
            self._headers(),
            UNDECODABLE,
            truncated=True,
        )

    def key_null_elsewhere(self) -> Bad:
        bad = self._valid("key.null_off_partition", MISROUTED)
        assert bad.key is not None
        bad.partition = (self._home(bad.key) + self.rng.randrange(1, self.partitions)) % self.partitions
        bad.key = None
        return bad

    def key_mismatch(self) -> Bad:
        bad = self._valid("key.not_the_key_field", MISROUTED)
        bad.key = b"customer-" + (bad.key or b"")
        return bad

    def key_non_utf8(self) -> Bad:
        bad = self._valid("key.non_utf8", MISROUTED)
        bad.key = b"\xff" + (bad.key or b"") + b"\xfe"
        return bad

    def partition_explicit(self) -> Bad:
        bad = self._valid("partition.explicit_wrong", MISROUTED)
        assert bad.key is not None
        bad.partition = (self._home(bad.key) + self.rng.randrange(1, self.partitions)) % self.partitions
        return bad

    def partition_consistent_random(self) -> Bad:
        """librdkafka's default partitioner (CRC32 of the key), on a key it puts elsewhere (found
        without drawing from the seeded generator, so a seed gives the same records every run)."""
        base = order_id = self._order_id()
        attempt = 0
        while zlib.crc32(order_id.encode()) % self.partitions == self._home(order_id.encode()):
            attempt += 1
            order_id = f"{base}-{attempt}"
        order = self._order(order_id)
        return Bad(
            "partition.consistent_random",
            self.order_topic,
            order_id.encode(),
            self.codec.encode("order.created", order),
            self._headers(),
            MISROUTED,
            producer="consistent_random",
            pii=self._pii(order),
        )

    def contract_wrong_type(self) -> Bad:
        bad = self._valid("contract.type_not_on_topic", CONTRACT_VIOLATION)
        bad.headers = self._with(bad.headers, "ce_type", self.rng.choice([b"order.confirmed", b"no.such.type"]))
        return bad

    def pii_invalid_utf8(self) -> Bad:
        """Invalid UTF-8 inside a PII field: the decode error must name the field, never the bytes."""
        bad = self._valid("pii.invalid_utf8", UNDECODABLE)
        assert bad.value is not None
        target = self.rng.choice(bad.pii).encode()
        # a broken byte anywhere after the run id (so the readable piece before it, which any repr
        # of the bytes shows, holds the run id the leak scan anchors on) and before the last 3
        after_run = target.index(self.run_id.encode()) + len(self.run_id)
        cut = self.rng.randrange(after_run, len(target) - 3)
        bad.value = bad.value.replace(target, target[:cut] + b"\xff" + target[cut + 1 :])
        bad.pii = [target[:cut].decode()]
        return bad

    MAKERS = (
        "bytes_random",
        "bytes_json",
        "bytes_truncated",
        "bytes_tombstone",
        "bytes_other_contract",
        "headers_missing",
        "headers_hop_digits",
        "headers_huge_known",
        "headers_huge_type",
        "headers_non_utf8_value",
        "headers_non_utf8_name",
        "headers_bad_time",
        "headers_loop",
        "size_huge_value",
        "key_null_elsewhere",
        "key_mismatch",
        "key_non_utf8",
        "partition_explicit",
        "partition_consistent_random",
        "contract_wrong_type",
        "pii_invalid_utf8",
    )
    HEAVY = frozenset({"headers_huge_known", "headers_huge_type", "size_huge_value"})  # ~0.3-1 MB each

    def make(self, count: int, heavy_share: float = 0.05) -> list[Bad]:
        """``count`` records: every class at least once, then classes drawn at random (the heavy
        ones, a few hundred KB each, at ``heavy_share`` of the draws)."""
        out = [getattr(self, name)() for name in self.MAKERS]
        light = [m for m in self.MAKERS if m not in self.HEAVY]
        heavy = sorted(self.HEAVY)
        while len(out) < count:
            pool = heavy if self.rng.random() < heavy_share else light
            out.append(getattr(self, self.rng.choice(pool))())
        self.rng.shuffle(out)
        return out


def _type_of(app: Any, topic: str) -> str:
    return next(c.event_type for c in app.registry.for_topic(topic))


# ---------------------------------------------------------------------------------- producing
def produce_all(bootstrap: str, records: list[Bad], work_dir: Path) -> None:
    """Produce every record with the client its class needs; sets each one's coordinates."""
    from confluent_kafka import Producer

    from processors.kafka_types import produce_headers

    by_producer: dict[str, list[Bad]] = {}
    for bad in records:
        by_producer.setdefault(bad.producer, []).append(bad)
    for kind, batch in by_producer.items():
        if kind == "raw-names":
            _produce_raw_names(bootstrap, batch, work_dir)
            continue
        producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": kind, "message.max.bytes": 2_000_000, "linger.ms": 5}
        )
        for bad in batch:

            def delivered(err: Any, msg: Any, bad: Bad = bad) -> None:
                assert err is None, f"{bad.cls}: {err}"
                bad.coordinates = (msg.topic(), msg.partition(), msg.offset())

            extra: dict[str, Any] = {} if bad.partition is None else {"partition": bad.partition}
            producer.produce(
                bad.topic, bad.value, bad.key, headers=produce_headers(bad.headers), on_delivery=delivered, **extra
            )
            producer.poll(0)
        assert producer.flush(120) == 0, f"{kind}: not every record was confirmed"
    missing = [b.cls for b in records if b.coordinates is None]
    assert not missing, f"records without a delivery report: {missing[:5]}"


def _produce_raw_names(bootstrap: str, batch: list[Bad], work_dir: Path) -> None:
    spec = [
        {
            "topic": b.topic,
            "key": None if b.key is None else b.key.hex(),
            "value": None if b.value is None else b.value.hex(),
            "headers": [[n.encode().hex(), None if v is None else v.hex()] for n, v in b.headers]
            + [[raw.hex(), b"x".hex()] for raw in b.raw_names],
        }
        for b in batch
    ]
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "tests.integration.hostile_records", bootstrap],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for bad, (topic, partition, offset) in zip(batch, json.loads(out.stdout.strip().splitlines()[-1]), strict=True):
        bad.coordinates = (topic, partition, offset)


class _RawName(str):
    """A header name aiokafka's pure-Python record builder encodes as the given raw bytes."""

    raw: bytes

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _raw_name(raw: bytes) -> str:
    name = _RawName("raw")
    name.raw = raw
    return name


async def _send_raw(bootstrap: str, spec: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000)
    await producer.start()
    try:
        out = []
        for item in spec:
            headers = []
            for name_hex, value_hex in item["headers"]:
                raw = bytes.fromhex(name_hex)
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    name = _raw_name(raw)
                headers.append((name, None if value_hex is None else bytes.fromhex(value_hex)))
            key = None if item["key"] is None else bytes.fromhex(item["key"])
            value = None if item["value"] is None else bytes.fromhex(item["value"])
            meta = await producer.send_and_wait(item["topic"], value, key=key, headers=headers)
            out.append((meta.topic, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


if __name__ == "__main__":
    if os.environ.get("AIOKAFKA_NO_EXTENSIONS") != "1":
        raise SystemExit("set AIOKAFKA_NO_EXTENSIONS=1: the C record builder encodes names itself")
    print(json.dumps(asyncio.run(_send_raw(sys.argv[1], json.loads(sys.stdin.read())))))
