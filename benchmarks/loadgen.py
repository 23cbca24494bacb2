"""Benchmark load: pre-load a topic with N `order.created` events as fast as possible, or offer them
at a target rate (token bucket) for latency-at-load runs.

    .venv/bin/python benchmarks/loadgen.py preload --topic T --events N [--partitions P] [--keys K] [--skew S]
    .venv/bin/python benchmarks/loadgen.py paced   --topic T --rate R --seconds S [--keys K] [--skew S]

Payloads come from :class:`processors.agents.loadgen.OrderGenerator` (1-4 line items, realistic
customers, uniform or Zipf-skewed over ``--keys`` customers), Avro single-object encoded with the
contract's current schema, with CloudEvents headers (:class:`Envelope`). The Kafka key is the
customer id (``--key-by customer``, the default, so ``--keys`` is the number of state keys) or the
order id (``--key-by order``, the contract's key: one state key per event).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import KafkaException, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from processors.agents.loadgen import OrderGenerator, OrderMix  # noqa: E402
from processors.contracts import AvroCodec, ContractRegistry, Envelope  # noqa: E402
from processors.kafka_types import produce_headers  # noqa: E402

EVENT_TYPE = "order.created"
SOURCE = "/bench/loadgen"


# ============================================================================ rate limiting
class TokenBucket:
    """Tokens accrue at ``rate`` per second up to ``burst``; :meth:`acquire` takes ``n`` tokens,
    returning how long the caller must wait first (0 when they were there). Pure: the clock is
    injected, nothing sleeps here."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate / 100))  # ~10 ms of events
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens (going into debt if needed); the delay until the debt is paid."""
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Pacer:
    """Offers events at a fixed rate: ``wait()`` before each send sleeps as the bucket says.
    Sleeps are coalesced (never shorter than ``min_sleep``) so a high rate does not spin."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        min_sleep: float = 0.001,
    ) -> None:
        self.bucket = TokenBucket(rate, burst, clock)
        self._sleep = sleep
        self._min_sleep = min_sleep

    def wait(self) -> None:
        # Debt below min_sleep stays in the bucket and is paid by a later, longer sleep.
        delay = self.bucket.acquire()
        if delay >= self._min_sleep:
            self._sleep(delay)


# ============================================================================ events
@dataclass(frozen=True)
class LoadSpec:
    """What a pre-loaded topic holds; part of every result so a figure says what it measured."""

    topic: str
    events: int
    partitions: int = 6
    keys: int = 10_000
    skew: float = 0.0
    key_by: str = "customer"
    seed: int = 7

    def describe(self) -> str:
        dist = "uniform" if self.skew == 0 else f"Zipf s={self.skew:g}"
        return f"{self.events:,} events, {self.partitions} partitions, {self.keys:,} keys ({dist}, by {self.key_by})"


class EventSource:
    """Encoded `order.created` events: (key, value bytes, headers)."""

    def __init__(
        self, spec: LoadSpec, codec: AvroCodec | None = None, run_id: str = "", mix: OrderMix | None = None
    ) -> None:
        self.spec = spec
        self.codec = codec or AvroCodec(ContractRegistry.load())
        # By default all orders are valid and confirmable: the single-agent benchmark measures the
        # handling, not rejections. The full flow passes the realistic mix (declines, stock-outs).
        self.generator = OrderGenerator(
            seed=spec.seed,
            mix=mix or OrderMix(declined=0.0, out_of_stock=0.0),
            customers=spec.keys,
            skew=spec.skew,
            run_id=run_id,
        )

    def __iter__(self) -> Iterator[tuple[str, bytes, list[tuple[str, bytes]]]]:
        while True:
            yield self.next()

    def next(self) -> tuple[str, bytes, list[tuple[str, bytes]]]:
        order = self.generator.next()
        # The generator's values are valid by construction (a unit test checks it); skipping the
        # validator makes pre-loading ~30% faster.
        data = self.codec.encode(EVENT_TYPE, order.value, validate=False)
        envelope = Envelope.new(EVENT_TYPE, SOURCE, idempotency_key=order.order_id)
        key = order.value["customer_id"] if self.spec.key_by == "customer" else order.order_id
        return key, data, envelope.to_headers()


@dataclass
class LoadStats:
    events: int = 0
    value_bytes: int = 0
    header_bytes: int = 0
    key_bytes: int = 0
    elapsed_s: float = 0.0

    def add(self, key: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.events += 1
        self.key_bytes += len(key)
        self.value_bytes += len(value)
        self.header_bytes += sum(len(name) + len(raw) for name, raw in headers)

    def summary(self) -> dict[str, Any]:
        n = max(self.events, 1)
        return {
            "events": self.events,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events / self.elapsed_s, 1) if self.elapsed_s else None,
            "mean_value_bytes": round(self.value_bytes / n, 1),
            "mean_header_bytes": round(self.header_bytes / n, 1),
            "mean_key_bytes": round(self.key_bytes / n, 1),
            "mean_event_bytes": round((self.value_bytes + self.header_bytes + self.key_bytes) / n, 1),
        }


# ============================================================================ Kafka
def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "none",
        "queue.buffering.max.messages": 500_000,
        "log_level": 3,
        **overrides,
    }


def recreate_topic(admin: AdminClient, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Delete ``topic`` if it exists and create it with ``partitions`` (waits until it is usable)."""
    if topic in admin.list_topics(timeout=timeout).topics:
        for future in admin.delete_topics([topic], operation_timeout=timeout).values():
            future.result(timeout=timeout)
        _wait(lambda: topic not in admin.list_topics(timeout=timeout).topics, timeout, f"deletion of {topic}")
    ensure_topic(admin, topic, partitions, timeout)


def ensure_topic(admin: AdminClient, topic: str, partitions: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            for future in admin.create_topics(
                [NewTopic(topic, partitions, replication_factor=-1)], operation_timeout=timeout
            ).values():
                future.result(timeout=timeout)
            break
        except KafkaException as exc:
            code = exc.args[0].name() if exc.args and hasattr(exc.args[0], "name") else ""
            if code == "TOPIC_ALREADY_EXISTS":
                break
            if time.monotonic() > deadline:  # a topic being deleted cannot be created yet
                raise
            time.sleep(0.5)
    _wait(lambda: _partitions(admin, topic) == partitions, timeout, f"creation of {topic}")


def _partitions(admin: AdminClient, topic: str) -> int:
    md = admin.list_topics(topic, timeout=10).topics.get(topic)
    return 0 if md is None or md.error is not None else len(md.partitions)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for the {what}")
        time.sleep(0.2)


def preload(
    bootstrap: str, spec: LoadSpec, recreate: bool = True, progress: bool = False, count_distinct: bool = False
) -> dict[str, Any]:
    """Write ``spec.events`` events into a (re)created topic as fast as one producer goes;
    ``count_distinct`` also reports how many distinct keys were written."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if recreate:
        recreate_topic(admin, spec.topic, spec.partitions)
    else:
        ensure_topic(admin, spec.topic, spec.partitions)
    producer = Producer(producer_config(bootstrap))
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    source, stats = EventSource(spec), LoadStats()
    distinct: set[str] | None = set() if count_distinct else None
    started = time.perf_counter()
    for i in range(spec.events):
        key, value, headers = source.next()
        stats.add(key, value, headers)
        if distinct is not None:
            distinct.add(key)
        while True:
            try:
                # confluent-kafka's stub types produce(headers=) as an invariant List of
                # (str, str | bytes | None), refusing our read-only list of bytes pairs.
                producer.produce(spec.topic, value, key, headers=produce_headers(headers), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
            if progress and i % 50_000 == 0 and i:
                print(f"[loadgen] {i:,}/{spec.events:,}", file=sys.stderr, flush=True)
    remaining = producer.flush(120)
    stats.elapsed_s = time.perf_counter() - started
    if remaining or errors:
        raise RuntimeError(f"pre-load of {spec.topic}: {remaining} undelivered, {len(errors)} failed ({errors[:3]})")
    out = {"spec": asdict(spec), **stats.summary()}
    if distinct is not None:
        out["distinct_keys"] = len(distinct)
    return out


def paced(
    bootstrap: str,
    spec: LoadSpec,
    rate: float,
    seconds: float,
    on_sent: Callable[[str, int], None] | None = None,
    mix: OrderMix | None = None,
    run_id: str | None = None,
    sent_key: str = "key",
) -> dict[str, Any]:
    """Offer events at ``rate``/s for ``seconds`` (open loop: the rate does not drop when the
    system under test falls behind). ``on_sent(kafka key, send_time_ms)`` sees each send."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ensure_topic(admin, spec.topic, spec.partitions)
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 1}))
    source = EventSource(spec, run_id=run_id if run_id is not None else f"{int(time.time())}-", mix=mix)
    pacer, stats = Pacer(rate), LoadStats()
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        pacer.wait()
        key, value, headers = source.next()
        stats.add(key, value, headers)
        # confluent-kafka's stub types produce(headers=) as an invariant List of
        # (str, str | bytes | None), refusing our read-only list of bytes pairs.
        producer.produce(spec.topic, value, key, headers=produce_headers(headers))
        if on_sent is not None:
            on_sent(key, int(time.time() * 1000))
        producer.poll(0)
    producer.flush(60)
    stats.elapsed_s = time.monotonic() - started
    return {"spec": asdict(spec), "target_rate": rate, **stats.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["preload", "paced"])
    parser.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS or the settings")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--skew", type=float, default=0.0, help="0 = uniform, ~1.1 = Zipf-skewed")
    parser.add_argument("--key-by", choices=["customer", "order"], default="customer")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced: events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced: how long")
    args = parser.parse_args()
    from processors.settings import Settings

    bootstrap = args.bootstrap or Settings.load().bootstrap_servers
    spec = LoadSpec(args.topic, args.events, args.partitions, args.keys, args.skew, args.key_by)
    out = (
        preload(bootstrap, spec, progress=True)
        if args.mode == "preload"
        else paced(bootstrap, spec, args.rate, args.seconds)
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
