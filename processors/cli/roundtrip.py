"""`choreo roundtrip`: the smallest proof that the broker works — events out and back in.

Produces keyed events at a steady rate with delivery confirmation, reads them back in a consumer
group, and prints what went through per partition with two latencies per record:

* produce→ack: from the ``produce()`` call to the broker's delivery confirmation;
* produce→consume: from the ``produce()`` call to the consumer's ``poll()`` returning the record.

Both start at the producer's call, so they include its ``linger.ms`` batching; records are read
one ``poll()`` at a time, so a consumer timeout never adds to them. With ``--rate 0`` everything is
sent at once and the latencies include the time records queue behind each other.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import typer
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from processors.kafka_errors import KafkaFailure, stop_on_access_error
from processors.kafka_types import coordinates
from processors.runtime.topics import wait_for_topics
from processors.settings import Settings
from processors.tooling.cli_support import (
    EXIT_FAILED,
    ConfigOption,
    LocalBrokerBootstrapOption,
    fail,
    settings_or_local_broker,
)

err = Console(stderr=True)
CONSUME_TIMEOUT_S = 60.0


def _create_topic(settings: Settings, topic: str, partitions: int) -> None:
    admin = AdminClient(settings.kafka_config())
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)]).values():
        future.result(timeout=30)
    if not wait_for_topics(admin, [topic], timeout=30):
        fail(f"topic {topic} was created but has no leader after 30 s", EXIT_FAILED)


@dataclass
class _Sent:
    acks_ms: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0


def _produce(settings: Settings, topic: str, count: int, rate: float, partitions: int) -> _Sent:
    sent = _Sent()
    producer = Producer(settings.producer_config())

    def on_delivery(sent_ns: int) -> Callable[[Any, Any], None]:
        def delivered(error: Any, msg: Any) -> None:
            if error is not None:
                sent.failed += 1
                stop_on_access_error(error, topic=msg.topic() if msg is not None else None)
            else:
                sent.acks_ms.append((time.monotonic_ns() - sent_ns) / 1e6)

        return delivered

    # One record per partition first, outside the figures: the producer's first send waits for
    # metadata, its idempotent producer id and each partition's leader, which says nothing about
    # the per-record latency of the flow.
    for partition in range(partitions):
        warm_up = orjson.dumps({"seq": -1, "sent_ns": time.monotonic_ns()})
        producer.produce(topic, key=b"warm-up", value=warm_up, partition=partition)
    if producer.flush(30):
        sent.failed += 1
    started = time.monotonic()
    for i in range(count):
        if rate > 0:  # pace to the schedule, so one record's latency is not another's queueing
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                producer.poll(delay)
        sent_ns = time.monotonic_ns()
        producer.produce(
            topic,
            key=f"key-{i % 64}".encode(),
            value=orjson.dumps({"seq": i, "sent_ns": sent_ns}),
            on_delivery=on_delivery(sent_ns),
        )
        producer.poll(0)
    undelivered = producer.flush(30)
    sent.failed += undelivered
    sent.seconds = time.monotonic() - started
    return sent


def _wait_for_assignment(consumer: Consumer, timeout: float) -> None:
    """Join the group before producing, so latency measures the flow, not the group join."""
    deadline = time.monotonic() + timeout
    while not consumer.assignment() and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None:
            stop_on_access_error(msg.error(), topic=msg.topic(), action="join the group")


def _consume(
    consumer: Consumer, count: int, timeout: float, producing: Future[_Sent] | None = None
) -> tuple[dict[int, int], list[float]]:
    """One record per ``poll()``: it returns as soon as a record is there, so the latency taken
    when it returns is the record's, not the poll timeout's. A failed producer ends the wait."""
    per_partition: dict[int, int] = {}
    latencies_ms: list[float] = []
    deadline = time.monotonic() + timeout
    while sum(per_partition.values()) < count and time.monotonic() < deadline:
        if producing is not None and producing.done() and producing.exception() is not None:
            producing.result()  # raises the producer's error: nothing more will come
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        received_ns = time.monotonic_ns()
        error = msg.error()
        if error:
            if error.code() != KafkaError._PARTITION_EOF:
                raise KafkaFailure(error, topic=msg.topic(), action="consume")
            continue
        value = msg.value()
        body: dict[str, Any] = orjson.loads(value) if value is not None else {}
        if body.get("seq") == -1:
            continue  # the warm-up record
        _, partition, _ = coordinates(msg)
        per_partition[partition] = per_partition.get(partition, 0) + 1
        if "sent_ns" in body:
            latencies_ms.append((received_ns - int(body["sent_ns"])) / 1e6)
    consumer.commit(asynchronous=False)
    return per_partition, latencies_ms


def _round_trip(
    settings: Settings, topic: str, group: str, events: int, rate: float, partitions: int
) -> tuple[dict[int, int], list[float], _Sent]:
    consumer = Consumer(
        settings.kafka_config(**{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    )
    consumer.subscribe([topic])
    try:
        _wait_for_assignment(consumer, timeout=30)
        with ThreadPoolExecutor(max_workers=1) as pool:
            producing = pool.submit(_produce, settings, topic, events, rate, partitions)
            wait_s = CONSUME_TIMEOUT_S + events / max(rate, 1)
            per_partition, latencies = _consume(consumer, events, timeout=wait_s, producing=producing)
            return per_partition, latencies, producing.result()
    finally:
        consumer.close()


def _remove(settings: Settings, topic: str, group: str) -> list[str]:
    """Delete the throwaway topic and consumer group, so runs against a shared cluster leave
    nothing behind; what could not be deleted (an ACL without DELETE, say) is returned, named."""
    admin = AdminClient(settings.kafka_config())
    leftovers = []
    for what, future in (
        (f"topic {topic}", admin.delete_topics([topic], operation_timeout=10)[topic]),
        (f"group {group}", admin.delete_consumer_groups([group], request_timeout=10)[group]),
    ):
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.GROUP_ID_NOT_FOUND:  # a run that failed before any commit
                leftovers.append(f"{what} ({error.str()[:200]})")
        except Exception as exc:  # noqa: BLE001 - a timeout, say: reported the same way, bounded
            leftovers.append(f"{what} ({str(exc)[:200]})")
    return leftovers


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a (fewer than 2 records)"
    q = statistics.quantiles(values, n=100, method="inclusive")  # never past the min or max
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(values):.1f} ms"


def roundtrip(
    events: int = typer.Option(1000, "--events", min=1, help="How many events to send."),
    partitions: int = typer.Option(3, "--partitions", min=1, help="Partitions of the throwaway topic."),
    rate: float = typer.Option(
        500.0,
        "--rate",
        min=0.0,
        help="Events per second, paced; 0 sends them all at once (latency then includes queueing).",
    ),
    bootstrap: str | None = LocalBrokerBootstrapOption,
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object with the figures on stdout."),
) -> None:
    """Send events through a real broker and read them back in a consumer group; per-record
    produce→ack and produce→consume latency."""
    settings = settings_or_local_broker(bootstrap, config)
    topic = f"choreo.roundtrip.{uuid.uuid4().hex[:8]}"
    group = f"{settings.tools_group_id}.roundtrip.{uuid.uuid4().hex[:8]}"
    err.print(f"topic {topic} with {partitions} partitions")
    _create_topic(settings, topic, partitions)
    try:
        per_partition, latencies, sent = _round_trip(settings, topic, group, events, rate, partitions)
    except BaseException:
        _remove(settings, topic, group)  # best effort: the failure is what the user must see
        raise
    leftovers = _remove(settings, topic, group)
    if leftovers:
        err.print(f"warning: left behind (delete them by hand): {'; '.join(leftovers)}", markup=False)
    received = sum(per_partition.values())
    linger = settings.producer_config().get("linger.ms")
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "bootstrap": settings.bootstrap_servers,
                    "topic": topic,
                    "group": group,
                    "sent": events,
                    "received": received,
                    "failed": sent.failed,
                    "per_partition": {str(p): n for p, n in sorted(per_partition.items())},
                    "rate": rate,
                    "producer_linger_ms": linger,
                    "produce_to_ack_ms": latency_figures(sent.acks_ms),
                    "produce_to_consume_ms": latency_figures(latencies),
                }
            ).decode()
        )
    else:
        table = Table(title=f"round trip through {settings.bootstrap_servers}")
        table.add_column("partition", justify="right")
        table.add_column("events", justify="right")
        for partition in sorted(per_partition):
            table.add_row(str(partition), str(per_partition[partition]))
        Console().print(table)
        typer.echo(f"sent {events} in {sent.seconds:.1f} s ({events / sent.seconds:,.0f}/s), received {received}")
        typer.echo(f"produce->ack latency per record: {_quantiles(sent.acks_ms)}")
        typer.echo(f"produce->consume latency per record: {_quantiles(latencies)}")
        typer.echo(
            f"(from the produce() call, including the producer's linger.ms={linger}, to the delivery report / to "
            "the consumer's poll() returning the record)"
        )
    if received != events or sent.failed:
        err.print(f"[red]lost {events - received} events, {sent.failed} deliveries failed[/red]")
        raise typer.Exit(1)


def latency_figures(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of the latencies; percentiles by the inclusive method, so that with few
    records they stay within what was measured instead of extrapolating past the max."""
    if len(values) < 2:
        return {"p50": None, "p99": None, "max": max(values) if values else None}
    q = statistics.quantiles(values, n=100, method="inclusive")  # never past the min or max
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(max(values), 2)}
