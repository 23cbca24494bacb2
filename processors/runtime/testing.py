"""Test harness for agents.

* :class:`AgentDriver` — pure, no Kafka: feed events to one agent's handler through the real
  processing path (envelope, contract decode, dedupe, state, retries, DLQ decisions, audit, timers)
  with an in-memory store and a controllable clock::

      driver = AgentDriver(app, "counter")
      r = driver.send("counter.incremented", {"name": "a", "by": 3}, key="a")
      assert r.outcome == "PROCESSED" and driver.state("a") == {"n": 3}
      driver.advance(seconds=300)  # fire due timers

* :func:`run_agents` — in-process against a real broker::

      with run_agents(app, kafka_bootstrap, agents=["counter"]) as running:
          running.publish("counter.incremented", {"name": "a", "by": 3}, key="a")
          out = running.read("counter.reached", count=1)
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer

from processors.contracts import Envelope
from processors.kafka_types import headers as kafka_headers
from processors.partitioner import partition_for
from processors.runtime import audit
from processors.runtime._concurrency import KeyedExecutor
from processors.runtime._processor import HandleResult, OutRecord, Processor
from processors.runtime.app import App
from processors.runtime.emitter import Emitted
from processors.runtime.state import BatchView, MemoryStore, keys
from processors.runtime.supervisor import Worker
from processors.runtime.worker import AT_LEAST_ONCE, WorkerOptions
from processors.settings import Settings


# ============================================================================ pure driver
@dataclass
class DriverResult:
    """What one input (or timer) did."""

    outcome: str  # PROCESSED, DUPLICATE, DEAD_LETTERED or IGNORED
    emitted: list[Emitted]
    dlq: OutRecord | None
    reason: str | None
    audit: dict[str, Any] | None
    records: list[OutRecord]
    raw: HandleResult = field(repr=False)

    @property
    def dlq_headers(self) -> dict[str, str]:
        if self.dlq is None:
            return {}
        return {k: (v.decode() if v is not None else "") for k, v in self.dlq.headers}

    def emitted_of(self, event_type: str) -> list[Emitted]:
        return [e for e in self.emitted if e.event_type == event_type]


class AgentDriver:
    """Runs one agent's handler without Kafka. The clock starts at ``now_ms`` (default: real time
    at construction) and only moves with :meth:`advance` and retry backoffs (which are recorded in
    :attr:`sleeps`, not slept)."""

    def __init__(
        self,
        app: App,
        agent: str,
        *,
        now_ms: int | None = None,
        worker_id: str = "driver",
        partition: int | None = None,
    ) -> None:
        self.app = app
        self.spec = app.select([agent])[0]
        self.now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self._mono = 0.0
        self.sleeps: list[float] = []
        # None: each record on the partition Kafka's default partitioner gives its key (as a producer
        # of ours puts it); a number: every record there (a foreign producer's misrouted records).
        self.partition = partition
        self.store = MemoryStore()
        self.processor = Processor(
            app,
            self.spec,
            worker_id,
            metrics=None,
            clock_ms=lambda: self.now_ms,
            sleep=self._sleep,
            monotonic=lambda: self._mono,
        )
        self.results: list[DriverResult] = []
        self._offsets: dict[str, int] = {}

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._mono += seconds
        self.now_ms += int(seconds * 1000)

    # ------------------------------------------------------------------ inputs
    def envelope(self, event_type: str, **kwargs: Any) -> Envelope:
        return Envelope.new(event_type, "/choreo/test", **kwargs)

    def send(
        self,
        event_type: str,
        value: dict[str, Any],
        key: str | None = None,
        *,
        envelope: Envelope | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        hop_count: int = 0,
        tenant: str | None = None,
    ) -> DriverResult:
        """Encode ``value`` by its contract, wrap it in an envelope and hand it to the agent."""
        return self.send_raw(*self._record_of(event_type, value, key, envelope, idempotency_key, correlation_id,
                                              hop_count, tenant))  # fmt: skip

    def send_many(self, events: Iterable[tuple[Any, ...]], *, max_in_flight: int | None = None) -> list[DriverResult]:
        """Hand ``events`` (event type, value[, key[, a dict of :meth:`send`'s keyword options]]) to
        the agent as one poll's records, handled
        with the worker's key-ordered concurrency (``max_in_flight``: default the agent's): inputs
        of different keys at once, of one key in order. Returns the results in release order (each
        partition's offset order), as the worker sends them."""
        limit = self.spec.concurrency(max_in_flight)
        view = BatchView(self.store)
        executor = KeyedExecutor(self.processor, limit, lambda _p: view, threads=self.spec.threads)
        out: list[DriverResult] = []
        try:
            for item in events:
                key, options = (item[2] if len(item) > 2 else None), (item[3] if len(item) > 3 else {})
                record = self._record_of(item[0], item[1], key, **options)
                while not executor.capacity:
                    out.extend(self._released(executor, view, wait_s=1.0))
                topic, key, data, headers = record
                partition = self.partition if self.partition is not None else self.home_partition(topic, key)
                offset = self._offsets.get(topic, 0)
                self._offsets[topic] = offset + 1
                admitted = self.processor.admit(topic, partition, offset, key, data, headers, self.now_ms)
                executor.submit(topic, partition, offset, admitted)
                out.extend(self._released(executor, view))
            while executor.busy:
                out.extend(self._released(executor, view, wait_s=1.0))
        finally:
            executor.close()
        self.store.apply(view.writes)
        return out

    def _released(self, executor: KeyedExecutor, view: BatchView, wait_s: float = 0.0) -> list[DriverResult]:
        executor.collect(wait_s)
        out = []
        for released in executor.take_released():
            out.append(self._record(released.result))
        return out

    def _record_of(
        self,
        event_type: str,
        value: dict[str, Any],
        key: str | None = None,
        envelope: Envelope | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        hop_count: int = 0,
        tenant: str | None = None,
    ) -> tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]:
        """The record a producer of ours would write for ``value``: (topic, key, value, headers)."""
        contract = self.app.registry.get(event_type)
        env = envelope or self.envelope(
            event_type,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            hop_count=hop_count,
            tenant=tenant,
        )
        if key is None:
            key = str(value.get(contract.key_field)) if value.get(contract.key_field) is not None else None
        data = self.app.codec.encode(event_type, value)
        return contract.topic, None if key is None else key.encode(), data, env.to_headers()

    def send_emitted(self, emitted: Emitted) -> DriverResult:
        """Feed an event emitted by this (or another) agent, headers and all."""
        return self.send_raw(
            emitted.topic,
            None if emitted.key is None else emitted.key.encode(),
            emitted.data,
            emitted.envelope.to_headers(),
        )

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        *,
        partition: int | None = None,
    ) -> DriverResult:
        """Feed a record exactly as it would come off Kafka (for poison-event tests), on
        ``partition`` if given, else the driver's (see ``__init__``)."""
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        view = BatchView(self.store)
        if partition is None:
            partition = self.partition if self.partition is not None else self.home_partition(topic, key)
        result = self.processor.handle(view, topic, partition, offset, key, value, headers, self.now_ms)
        self.store.apply(view.writes)
        return self._record(result)

    def home_partition(self, topic: str, key: bytes | None) -> int:
        """Where Kafka's default partitioner puts ``key`` on ``topic`` (0 for a null key or a topic
        the agent does not read)."""
        count = self.processor.partitions.get(topic)
        return 0 if key is None or not count else partition_for(key, count)

    def advance(self, seconds: float = 0.0, *, to_ms: int | None = None) -> list[DriverResult]:
        """Move the clock and fire the timers now due, earliest first."""
        self.now_ms = to_ms if to_ms is not None else self.now_ms + int(seconds * 1000)
        out: list[DriverResult] = []
        if self.spec.on_timer is None:
            return out
        while True:
            due = self.store.due_timers(self.now_ms, 1000)
            if not due:
                return out
            for _, tk in due:
                view = BatchView(self.store)
                result = self.processor.fire_timer(view, tk, self.partition or 0)
                self.store.apply(view.writes)
                if result is not None:
                    out.append(self._record(result))

    def _record(self, result: HandleResult) -> DriverResult:
        dlq = next((r for r in result.records if r.kind == "dlq"), None)
        res = DriverResult(
            result.outcome, list(result.emitted), dlq, result.reason, result.audit, list(result.records), result
        )
        self.results.append(res)
        return res

    # ------------------------------------------------------------------ inspection
    def state(self, key: str) -> dict[str, Any] | None:
        raw = self.store.get(keys.state_key(key.encode()))
        return None if raw is None else orjson.loads(raw)

    def timers(self, key: str) -> dict[str, int]:
        prefix = keys.TIMER + key.encode() + b"\x00"
        return {tk[len(prefix) :].decode(): keys.unpack_u64(raw) for tk, raw in self.store.timers_of(key.encode())}

    def seen(self, idempotency_key: str) -> bool:
        raw = self.store.get(keys.seen_key(idempotency_key))
        return raw is not None and keys.unpack_u64(raw) > self.now_ms

    @property
    def emitted(self) -> list[Emitted]:
        return [e for r in self.results for e in r.emitted]

    @property
    def dead_letters(self) -> list[DriverResult]:
        return [r for r in self.results if r.outcome == audit.DEAD_LETTERED]


# ============================================================================ real broker
@dataclass
class ReadRecord:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: Any  # decoded dict for contract topics, else raw bytes
    headers: dict[str, str]
    raw_value: bytes | None

    @property
    def envelope(self) -> Envelope:
        return Envelope.from_headers([(k, v.encode()) for k, v in self.headers.items()])


def publish(
    app: App,
    bootstrap: str,
    event_type: str,
    value: dict[str, Any],
    key: str | None = None,
    *,
    producer: Producer | None = None,
    flush: bool = True,
    **envelope_kwargs: Any,
) -> Envelope:
    """Produce one contract event with a fresh envelope (``idempotency_key=``, ``correlation_id=``,
    ``hop_count=`` ... accepted). Returns the envelope."""
    contract = app.registry.get(event_type)
    env = Envelope.new(event_type, "/choreo/test", **envelope_kwargs)
    if key is None and value.get(contract.key_field) is not None:
        key = str(value[contract.key_field])
    own = producer is None
    producer = producer or Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "enable.idempotence": True}
    )
    headers: list[tuple[str, str | bytes | None]] = list(env.to_headers())
    producer.produce(contract.topic, app.codec.encode(event_type, value), key, headers=headers)
    if flush or own:
        producer.flush(30)
    return env


def read_topic(
    bootstrap: str,
    topic: str,
    count: int | None = None,
    *,
    timeout: float = 30.0,
    app: App | None = None,
    idle_s: float = 2.0,
) -> list[ReadRecord]:
    """Read a topic from the beginning with read_committed until ``count`` records arrived (or, with
    ``count=None``, until the end of every partition). Values of contract topics are decoded."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"choreo-test-read-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    out: list[ReadRecord] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        eof: set[int | None] = set()
        partitions: int | None = None
        while time.monotonic() < deadline:
            if count is not None and len(out) >= count:
                break
            msgs = consumer.consume(500, 0.5)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                eof.discard(m.partition())
                out.append(_read_record(m, app))
            if count is None:
                if partitions is None:
                    md = consumer.list_topics(topic, timeout=10)
                    partitions = len(md.topics[topic].partitions) if topic in md.topics else 0
                if partitions and len(eof) >= partitions:
                    break
    finally:
        consumer.close()
    return out


def _read_record(m: Any, app: App | None) -> ReadRecord:
    headers = {k: (v.decode("utf-8", "replace") if v is not None else "") for k, v in kafka_headers(m)}
    value: Any = m.value()
    if app is not None and value is not None and headers.get("ce_type") in set(app.registry.event_types()):
        with contextlib.suppress(Exception):  # poison records stay raw
            value = app.codec.decode(headers["ce_type"], value)
    elif headers.get("content-type") == "application/json" and value is not None:
        value = orjson.loads(value)
    key = m.key().decode("utf-8", "replace") if m.key() is not None else None
    return ReadRecord(m.topic(), m.partition(), m.offset(), key, value, headers, m.value())


class RunningAgents:
    """Handle on agents running in-process (see :func:`run_agents`)."""

    def __init__(self, worker: Worker, bootstrap: str) -> None:
        self.worker = worker
        self.app = worker.app
        self.bootstrap = bootstrap
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "enable.idempotence": True}
        )

    def publish(
        self, event_type: str, value: dict[str, Any], key: str | None = None, **envelope_kwargs: Any
    ) -> Envelope:
        return publish(self.app, self.bootstrap, event_type, value, key, producer=self._producer, **envelope_kwargs)

    def read(self, topic_or_type: str, count: int | None = None, timeout: float = 30.0) -> list[ReadRecord]:
        types = set(self.app.registry.event_types())
        topic = self.app.registry.get(topic_or_type).topic if topic_or_type in types else topic_or_type
        return read_topic(self.bootstrap, topic, count, timeout=timeout, app=self.app)

    def stop(self) -> None:
        self.worker.stop()
        self.worker.join()


@contextlib.contextmanager
def run_agents(
    app: App,
    bootstrap: str,
    agents: list[str] | None = None,
    *,
    guarantee: str = AT_LEAST_ONCE,
    state_dir: str | Path | None = None,
    worker_id: str | None = None,
    options: WorkerOptions | None = None,
    settings: Settings | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[RunningAgents]:
    """Run agents of ``app`` in background threads of this process against a real broker; yields
    once every agent has its partitions assigned and restored; stops them (finish batch, commit,
    close stores) on exit and re-raises an agent's error."""
    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="choreo-state-")
        state_dir = tmp.name
    base = settings or Settings.load()  # the one settings rule: env and ./choreo.toml, as the worker
    from dataclasses import replace

    settings = replace(base, bootstrap_servers=bootstrap, state_dir=Path(state_dir), processing_guarantee=guarantee)
    worker = Worker(
        app,
        settings,
        agents=agents,
        worker_id=worker_id or f"test-{uuid.uuid4().hex[:6]}",
        guarantee=guarantee,
        options=options or WorkerOptions(poll_timeout_s=0.1),
    )
    worker.start()
    running = RunningAgents(worker, bootstrap)
    try:
        if not worker.wait_ready(ready_timeout):
            errors = worker.errors
            raise RuntimeError(f"agents not ready after {ready_timeout}s" + (f": {errors[0]!r}" if errors else ""))
        yield running
    finally:
        worker.stop()
        worker.join(60)
        if tmp is not None:
            tmp.cleanup()
    if worker.errors:
        raise worker.errors[0]
