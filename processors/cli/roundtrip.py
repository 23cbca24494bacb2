"""`choreo roundtrip`: the smallest proof that the broker works — events out and back in.

Produces keyed events with delivery confirmation, reads them back in a consumer group, and
prints what went through, per partition, with throughput and end-to-end latency.
"""

from __future__ import annotations

import statistics
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
import typer
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from processors.kafka_errors import KafkaFailure, stop_on_access_error
from processors.kafka_types import coordinates
from processors.localbroker import BrokerError, ToolchainError
from processors.localbroker.embedded import ensure_broker
from processors.settings import Settings

err = Console(stderr=True)


def _create_topic(settings: Settings, topic: str, partitions: int) -> None:
    admin = AdminClient(settings.kafka_config())
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(timeout=30)


def _produce(settings: Settings, topic: str, count: int) -> float:
    producer = Producer(settings.producer_config())
    started = time.monotonic()
    for i in range(count):
        body = orjson.dumps({"seq": i, "sent_ns": time.time_ns()})
        producer.produce(topic, key=f"key-{i % 64}".encode(), value=body, on_delivery=_stop_on_denial)
        producer.poll(0)
    undelivered = producer.flush(30)
    if undelivered:
        raise RuntimeError(f"{undelivered} events were not confirmed by the broker within 30s")
    return time.monotonic() - started


def _stop_on_denial(err: KafkaError | None, msg: Message | None) -> None:
    stop_on_access_error(err, topic=msg.topic() if msg is not None else None)


def _wait_for_assignment(consumer: Consumer, timeout: float) -> None:
    """Join the group before producing, so latency measures the flow, not the group join."""
    deadline = time.monotonic() + timeout
    while not consumer.assignment() and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None:
            stop_on_access_error(msg.error(), topic=msg.topic(), action="join the group")


def _consume(
    consumer: Consumer, count: int, timeout: float, producing: Future[float] | None = None
) -> tuple[dict[int, int], list[float]]:
    per_partition: dict[int, int] = {}
    latencies_ms: list[float] = []
    deadline = time.monotonic() + timeout
    while sum(per_partition.values()) < count and time.monotonic() < deadline:
        if producing is not None and producing.done() and producing.exception() is not None:
            producing.result()  # the producer failed (say, write denied): nothing more will come
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            error = msg.error()
            if error:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaFailure(error, topic=msg.topic(), action="consume")
                continue
            _, partition, _ = coordinates(msg)
            per_partition[partition] = per_partition.get(partition, 0) + 1
            value = msg.value()
            assert value is not None, "roundtrip sends every record with a value"
            latencies_ms.append((time.time_ns() - orjson.loads(value)["sent_ns"]) / 1e6)
    consumer.commit(asynchronous=False)
    return per_partition, latencies_ms


def roundtrip(
    events: int = typer.Option(5000, "--events", min=1, help="How many events to send."),
    partitions: int = typer.Option(3, "--partitions", min=1),
    bootstrap: str | None = typer.Option(
        None, "--bootstrap", help="HOST:PORT [default: KAFKA_BOOTSTRAP_SERVERS or the local broker]"
    ),
) -> None:
    """Send events through a real broker and read them back in a consumer group."""
    try:
        address = ensure_broker(bootstrap)
    except (BrokerError, ToolchainError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    settings = Settings.load(bootstrap_servers=address)
    topic = f"choreo.roundtrip.{uuid.uuid4().hex[:8]}"
    err.print(f"broker {address}: topic {topic} with {partitions} partitions")
    _create_topic(settings, topic, partitions)
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"choreo-roundtrip-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    try:
        _wait_for_assignment(consumer, timeout=30)
        with ThreadPoolExecutor(max_workers=1) as pool:
            producing = pool.submit(_produce, settings, topic, events)
            per_partition, latencies = _consume(consumer, events, timeout=60, producing=producing)
            produce_s = producing.result()
    finally:
        consumer.close()
    received = sum(per_partition.values())

    table = Table(title=f"round trip through {address}")
    table.add_column("partition", justify="right")
    table.add_column("events", justify="right")
    for partition in sorted(per_partition):
        table.add_row(str(partition), str(per_partition[partition]))
    Console().print(table)
    if latencies:
        quantiles = statistics.quantiles(latencies, n=100)
        typer.echo(
            f"sent {events} ({events / produce_s:,.0f}/s confirmed), received {received}; "
            f"latency p50 {quantiles[49]:.1f} ms, p99 {quantiles[98]:.1f} ms"
        )
    if received != events:
        err.print(f"[red]lost {events - received} events[/red]")
        raise typer.Exit(1)
