"""Read what the commerce flow left on Kafka and judge it: `choreo verify` and the demo's summary.

Reads the business topics, the audit topic and the DLQs from given start offsets (the beginning by
default) up to their current end, with read_committed, never joining a consumer group — so it
sees what downstream consumers see, independent of any worker's state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from processors.agents.gateway import PSP_URL_ENV
from processors.agents.ledger import FlowLedger, receiver_violations
from processors.agents.notifications import SINK_URL_ENV
from processors.contracts import ContractError
from processors.contracts.envelope import CE_IDEMPOTENCYKEY
from processors.kafka_types import coordinates
from processors.kafka_types import headers as read_headers
from processors.runtime import App
from processors.runtime.conventions import (
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    dlq_topic,
)
from processors.runtime.topics import watermarks
from processors.settings import Settings
from processors.tooling.kafka_io import (
    PartitionRange,
    bounded,
    header_value,
    read_ranges,
    reader_config,
)

Offsets = Mapping[tuple[str, int], int]


def business_topics(app: App) -> list[str]:
    types = {et for spec in app.agents.values() for et in (*spec.consumes, *spec.produces)}
    return sorted({app.registry.get(et).topic for et in types})


def watched_topics(app: App) -> list[str]:
    """Every topic verify reads: business events, their DLQs and the audit topic."""
    topics = business_topics(app)
    return topics + [dlq_topic(t) for t in topics] + [app.audit_topic]


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Current end of every partition of `topics` that exists: the start of a later verification."""
    consumer = Consumer(reader_config(settings))
    try:
        metadata = consumer.list_topics(timeout=15)
        out = {}
        for topic in topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for partition in info.partitions:
                out[(topic, partition)] = watermarks(consumer, topic, partition)[1]
        return out
    finally:
        consumer.close()


def collect(settings: Settings, app: App, since: Offsets | None = None, order_prefix: str = "") -> FlowLedger:
    """A ledger of everything on the watched topics after `since` (default: from the beginning)."""
    ledger = FlowLedger(order_prefix=order_prefix)
    consumers_of: dict[str, list[str]] = {}
    for spec in app.agents.values():
        for topic in app.input_topics(spec):
            consumers_of.setdefault(topic, []).append(spec.name)
    consumer = Consumer(reader_config(settings))
    try:
        ranges = _ranges(consumer, watched_topics(app), since or {})
        for msg in read_ranges(consumer, ranges):
            _ingest(ledger, app, consumers_of, msg)
    finally:
        consumer.close()
    return ledger


def _ranges(consumer: Consumer, topics: list[str], since: Offsets) -> list[PartitionRange]:
    metadata = consumer.list_topics(timeout=15)
    ranges = []
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            continue
        for partition in info.partitions:
            low, high = watermarks(consumer, topic, partition)
            start = max(low, since.get((topic, partition), low))
            ranges.append(PartitionRange(topic, partition, start, high))
    return ranges


def _ingest(ledger: FlowLedger, app: App, consumers_of: dict[str, list[str]], msg) -> None:
    """One record into the ledger. Anything may be on a topic (tombstones, foreign bytes, headers
    the client cannot read): what cannot be read is listed as such, never raised."""
    topic, partition, offset = coordinates(msg)
    headers, value = read_headers(msg), msg.value()
    where = f"{topic}[{partition}]@{offset}"
    if topic == app.audit_topic:
        audit = _decode(app, app.audit_event_type, value)
        if isinstance(audit, str):
            ledger.undecodable.append(f"{where}: audit record {audit}")
        else:
            ledger.add_audit(audit)
        return
    if topic.endswith(".dlq"):
        original = tuple(
            header_value(headers, h) for h in (DLQ_ORIGINAL_TOPIC, DLQ_ORIGINAL_PARTITION, DLQ_ORIGINAL_OFFSET)
        )
        ledger.add_dead_letter(bounded(header_value(headers, DLQ_REASON)) or "unknown", original)
        return
    for agent in consumers_of.get(topic, ()):
        ledger.add_input(agent, topic, partition, offset)
    event_type = header_value(headers, "ce_type")
    decoded = _decode(app, event_type, value) if event_type else "without a ce_type header"
    if isinstance(decoded, str):
        ledger.undecodable.append(f"{where}: {decoded}")
        return
    assert event_type is not None
    ledger.add_event(event_type, decoded, msg.timestamp()[1], header_value(headers, CE_IDEMPOTENCYKEY))


def _decode(app: App, event_type: str, value: bytes | None) -> dict | str:
    """The decoded value, or why it cannot be decoded (bounded, never a value of the record)."""
    if value is None:
        return "tombstone (null value)"
    if event_type not in set(app.registry.event_types()):
        return f"of unknown type {bounded(event_type, 80)!r}"
    try:
        return app.codec.decode(event_type, value)
    except ContractError as exc:
        return bounded(f"undecodable: {type(exc).__name__}: {exc}", 300) or "undecodable"
    except Exception as exc:  # noqa: BLE001 - foreign bytes: whatever the decoder raises is reported
        return f"undecodable: {type(exc).__name__}"


def wait_settled(settings: Settings, app: App, timeout: float) -> bool:
    """True once every agent's consumer group has committed up to the end of its inputs (no lag),
    i.e. nothing is left in flight; False if that did not happen within `timeout`."""
    admin = AdminClient(settings.kafka_config())
    consumer = Consumer(reader_config(settings))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if _no_lag(admin, consumer, app):
                return True
            time.sleep(1.0)
        return False
    finally:
        consumer.close()


def _no_lag(admin: AdminClient, consumer: Consumer, app: App) -> bool:
    from confluent_kafka import ConsumerGroupTopicPartitions

    behind: dict[tuple[str, int], int] = {}  # several agents read one topic: the furthest behind counts
    for spec in app.agents.values():
        partitions = []
        for topic in app.input_topics(spec):
            info = consumer.list_topics(topic, timeout=15).topics[topic]
            partitions += [TopicPartition(topic, p) for p in info.partitions]
        request = ConsumerGroupTopicPartitions(app.group_id(spec.name), partitions)
        committed = admin.list_consumer_group_offsets([request])[app.group_id(spec.name)].result(timeout=15)
        for tp in committed.topic_partitions:
            high = watermarks(consumer, tp.topic, tp.partition)[1]
            if high > 0 and tp.offset < high:
                key = (tp.topic, tp.partition)
                behind[key] = min(behind.get(key, high), max(tp.offset, 0))
    positions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in behind.items()]
    return not positions or not _records_after(consumer, positions)


def _records_after(consumer: Consumer, positions: list[TopicPartition], timeout: float = 10.0) -> bool:
    """Whether any committed record follows these positions. Under exactly-once a committed offset
    sits just before the transaction's commit marker, which counts in the high watermark but is no
    record, so a gap between committed offset and high watermark is not by itself lag."""
    consumer.assign(positions)
    open_partitions = {(tp.topic, tp.partition) for tp in positions}
    deadline = time.monotonic() + timeout
    try:
        while open_partitions and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                return True
            if err.code() == KafkaError._PARTITION_EOF:
                open_partitions.discard((msg.topic(), msg.partition()))
        return bool(open_partitions)
    finally:
        consumer.unassign()


def check_receivers(ledger: FlowLedger, order_prefix: str = "", env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read the PSP's and the delivery sink's ledgers (at ``CHOREO_PSP_URL`` / ``CHOREO_SINK_URL``,
    those set) for the orders with ``order_prefix`` and judge them against the topics: ``{"psp":
    summary or None, "sink": summary or None, "violations": [...]}``."""
    env = os.environ if env is None else env
    psp = _get(env.get(PSP_URL_ENV), "/v1/ledger", order_prefix)
    sink = _get(env.get(SINK_URL_ENV), "/v1/deliveries", order_prefix)
    return {
        "psp": psp["summary"] if psp else None,
        "sink": sink["summary"] if sink else None,
        "violations": receiver_violations(ledger, psp, sink),
    }


def _get(base_url: str | None, path: str, order_prefix: str) -> dict[str, Any] | None:
    if not base_url:
        return None
    response = httpx.get(base_url.rstrip("/") + path, params={"order_prefix": order_prefix}, timeout=30)
    response.raise_for_status()
    return response.json()
