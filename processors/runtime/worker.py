"""The worker: one consumer group, one producer and a set of partition stores per agent.

Loop of one agent (its own thread): consume a batch → handle each record in partition order
(handlers write into a per-batch overlay of the partition store) → produce follow-ups, dead letters
and audit records as they come → at the end of the batch make it durable → apply the overlay to
RocksDB.

* ``exactly_once``: all of it is one Kafka transaction per batch: outputs, DLQ and audit records,
  the changelog records of the batch and the input offsets (``send_offsets_to_transaction`` with
  the consumer's group metadata, so a zombie from an older generation is fenced, KIP-447). The
  store is written only after the commit; an abortable error aborts, drops the overlay and rewinds
  the consumer to the batch's first offsets.
* ``at_least_once``: outputs, DLQ and audit records are flushed first, then the changelog, then
  the store is written and the offsets committed. A crash anywhere replays the batch; inputs whose
  seen-key reached the changelog are dropped as duplicates, and those whose outputs had been
  flushed have their seen key written only after, so nothing is lost.

Rebalances are eager (``range`` assignor: partition N of every co-partitioned input goes to the
same worker, where the store of partition N lives). On assignment a store is restored from its
changelog before any record of the partition is handled; on revocation it is flushed and closed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.runtime import audit as A
from processors.runtime.agent import AgentSpec
from processors.runtime.app import App
from processors.runtime.conventions import dlq_topic
from processors.runtime.metrics import AgentMetrics
from processors.runtime.partitions import watermarks
from processors.runtime.processor import IGNORED, HandleResult, Processor
from processors.runtime.state import BatchView, RocksStore, StoreMemory
from processors.runtime.state import keys as K
from processors.runtime.topology import TopologyError, check_copartitioned
from processors.settings import Settings

log = logging.getLogger("choreo.worker")

EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"
CHANGELOG_DELETE_RETENTION_MS = 24 * 3600 * 1000


class WorkerError(RuntimeError):
    """The worker cannot go on (fenced producer, fatal client error, bad topology)."""


class _Abort(Exception):
    """The batch could not be made durable: drop it and replay from its first offsets."""


@dataclass(frozen=True)
class WorkerOptions:
    batch_size: int = 500
    poll_timeout_s: float = 0.2  # how long an idle loop waits for a first record
    batch_linger_s: float = 0.005  # once one record is there, how long to wait for more to join it
    max_batch_s: float = 10.0  # cut a batch short (and commit what is done) past this
    commit_timeout_s: float = 30.0
    timers_per_batch: int = 1000
    purge_interval_s: float = 60.0
    purge_limit: int = 5000
    lag_interval_s: float = 2.0
    restore_chunk: int = 10_000
    restore_stall_s: float = 120.0
    max_store_age_ms: int = CHANGELOG_DELETE_RETENTION_MS // 2
    transaction_timeout_ms: int = 60_000


def default_worker_id() -> str:
    return _safe(f"{socket.gethostname()}-{os.getpid()}")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


# ============================================================================ topics
def _admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


def plan_topics(
    app: App, specs: Iterable[AgentSpec], input_partitions: dict[str, int]
) -> dict[str, tuple[int, dict[str, str]]]:
    """Topics an agent set needs: name → (partitions, config). Input partition counts come from the
    cluster when the topic exists (``input_partitions``), else from the contract."""
    reg = app.registry
    plan: dict[str, tuple[int, dict[str, str]]] = {}
    for spec in specs:
        counts = []
        for topic in app.input_topics(spec):
            contract = next(c for c in reg.for_topic(topic))
            n = input_partitions.get(topic, contract.partitions)
            counts.append(n)
            plan.setdefault(topic, (n, {"retention.ms": str(contract.retention_ms)}))
            plan.setdefault(dlq_topic(topic), (n, {}))
        for et in spec.produces:
            c = reg.get(et)
            plan.setdefault(
                c.topic, (input_partitions.get(c.topic, c.partitions), {"retention.ms": str(c.retention_ms)})
            )
        n = max(counts)
        plan.setdefault(
            app.changelog_topic(spec.name),
            (n, {"cleanup.policy": "compact", "delete.retention.ms": str(CHANGELOG_DELETE_RETENTION_MS)}),
        )
        if spec.on_timer is not None:
            plan.setdefault(dlq_topic(app.timers_topic_name(spec.name)), (1, {}))
    if app.audit_event_type in set(reg.event_types()):
        c = reg.get(app.audit_event_type)
        plan.setdefault(app.audit_topic, (c.partitions, {"retention.ms": str(c.retention_ms)}))
    else:
        plan.setdefault(app.audit_topic, (3, {}))
    return plan


def topic_partitions(admin: AdminClient, timeout: float = 15.0) -> dict[str, int]:
    md = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def ensure_topics(admin: AdminClient, plan: dict[str, tuple[int, dict[str, str]]], timeout: float = 30.0) -> list[str]:
    """Create the planned topics that do not exist (never alters existing ones); returns created."""
    existing = topic_partitions(admin)
    missing = [
        NewTopic(name, n, replication_factor=-1, config=cfg)
        for name, (n, cfg) in sorted(plan.items())
        if name not in existing
    ]
    created = []
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise WorkerError(f"cannot create topic {name}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t in topic_partitions(admin) for t in plan):
                break
            time.sleep(0.2)
    return created


def check_agent_topics(app: App, spec: AgentSpec, partitions: dict[str, int]) -> int:
    """Co-partitioning of the agent's inputs and of its changelog; returns the partition count."""
    inputs = {t: partitions[t] for t in app.input_topics(spec) if t in partitions}
    missing = [t for t in app.input_topics(spec) if t not in partitions]
    if missing:
        raise TopologyError(f"agent {spec.name!r}: input topic(s) {', '.join(missing)} do not exist")
    n = check_copartitioned(spec.name, inputs)
    changelog = app.changelog_topic(spec.name)
    if changelog not in partitions:
        raise TopologyError(
            f"agent {spec.name!r}: changelog topic {changelog} does not exist; create it compacted with {n} "
            "partitions, or let the worker create it (App(create_topics=True), the default)"
        )
    if partitions[changelog] != n:
        raise TopologyError(
            f"agent {spec.name!r}: changelog {changelog} has {partitions[changelog]} partitions but the inputs have {n}; "
            "the store of partition N must be backed by changelog partition N"
        )
    return n


# ============================================================================ agent runner
class AgentRunner:
    """Runs one agent in this worker: its consumer, producer, stores and processor."""

    def __init__(
        self,
        app: App,
        spec: AgentSpec,
        settings: Settings,
        worker_id: str,
        guarantee: str,
        stop: threading.Event,
        options: WorkerOptions,
    ) -> None:
        self.app = app
        self.spec = spec
        self.settings = settings
        self.worker_id = worker_id
        self.guarantee = guarantee
        self.eos = guarantee == EXACTLY_ONCE
        self.stop_event = stop
        self.options = options
        self.metrics = AgentMetrics(spec.name, guarantee)
        self.processor = Processor(app, spec, worker_id, metrics=self.metrics)
        self.changelog = app.changelog_topic(spec.name)
        self.topics = app.input_topics(spec)
        self.state_root = Path(settings.state_dir) / app.app_id / spec.name
        self.stores: dict[int, RocksStore] = {}
        self.committed: dict[tuple[str, int], int] = {}  # ALOS: offsets handed to an async commit
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.batches = 0
        self.handled = 0
        self._in_txn = False
        self._callback_error: Exception | None = None
        self._delivery_errors: list[Any] = []
        self._cl_offsets: dict[int, int] = {}
        self._next_purge = 0.0
        self._next_lag = 0.0
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.restorer: Consumer | None = None
        self._marker = orjson.dumps({"worker": worker_id, "agent": spec.name})
        self.thread = threading.Thread(target=self._main, name=f"agent-{spec.name}", daemon=True)

    # ------------------------------------------------------------------ clients
    def _configs(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        s = self.settings
        passthrough = dict(s.kafka)
        consumer = {
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 300000,
            "fetch.wait.max.ms": 100,
            **s.kafka_config(),
            "group.id": self.app.group_id(self.spec.name),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "client.id": f"{self.worker_id}.{self.spec.name}",
        }
        producer = {
            **s.producer_config(),
            "linger.ms": 5,
            "batch.num.messages": 10000,
            **passthrough,
            "enable.idempotence": True,
            "client.id": f"{self.worker_id}.{self.spec.name}",
        }
        if not self.eos:
            # at-least-once must see every failed delivery before committing offsets; under
            # exactly-once a failed delivery fails the commit, and only the markers are tracked.
            producer["on_delivery"] = self._on_delivery
        if self.eos:
            producer["transactional.id"] = self.app.transactional_id(self.spec.name, self.worker_id)
            producer.setdefault("transaction.timeout.ms", self.options.transaction_timeout_ms)
        restorer = {
            **s.kafka_config(),
            "group.id": f"{self.app.group_id(self.spec.name)}.restore",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "client.id": f"{self.worker_id}.{self.spec.name}.restore",
        }
        return consumer, producer, restorer

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(err)
        elif msg.topic() == self.changelog:
            p = msg.partition()
            if msg.offset() > self._cl_offsets.get(p, -1):
                self._cl_offsets[p] = msg.offset()

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the worker, which exits non-zero
            self.error = exc
            log.exception("agent stopped on an error", extra={"agent": self.spec.name})
            self.stop_event.set()
        finally:
            self.ready.set()

    def run(self) -> None:
        consumer_cfg, producer_cfg, restorer_cfg = self._configs()
        self.producer = Producer(producer_cfg)
        if self.eos:
            self.producer.init_transactions(self.options.commit_timeout_s)
        self.restorer = Consumer(restorer_cfg)
        self.consumer = Consumer(consumer_cfg)
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "agent started",
            extra={
                "agent": self.spec.name,
                "topics": self.topics,
                "guarantee": self.guarantee,
                "worker_id": self.worker_id,
            },
        )
        try:
            while not self.stop_event.is_set():
                msgs = self._next_batch()
                if self._callback_error is not None:
                    raise WorkerError(
                        f"agent {self.spec.name}: partition assignment failed: {self._callback_error}"
                    ) from self._callback_error
                self._process(msgs)
        finally:
            self._shutdown()

    # ------------------------------------------------------------------ batch
    def _next_batch(self) -> list[Any]:
        """Wait up to ``poll_timeout_s`` for one record, then up to ``batch_linger_s`` for more, up
        to ``batch_size``. ``consume(n, timeout)`` alone waits out its whole timeout unless ``n``
        records arrive: at low load that added the poll timeout to every hop of a flow. This way a
        lone event is handled within the linger, a backlog still comes in full batches, and a
        trickle is gathered for a few milliseconds rather than committed record by record."""
        consumer = self.consumer
        assert consumer is not None
        opts = self.options
        first = consumer.poll(opts.poll_timeout_s)
        if first is None:
            return []
        if opts.batch_size <= 1:
            return [first]
        return [first, *consumer.consume(opts.batch_size - 1, opts.batch_linger_s)]

    def _process(self, msgs: list[Any]) -> None:
        opts = self.options
        views: dict[int, BatchView] = {}
        first: dict[tuple[str, int], int] = {}
        nxt: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + opts.max_batch_s
        handle = self.processor.handle
        stores = self.stores
        if msgs:
            self.metrics.batch(len(msgs))
        handled = 0
        for i, msg in enumerate(msgs):
            err = msg.error()
            if err is not None:
                self._consume_error(err)
                continue
            if handled and time.monotonic() > deadline:
                self._rewind_rest(msgs[i:])
                break
            topic = msg.topic()
            p = msg.partition()
            off = msg.offset()
            view = views.get(p)
            if view is None:
                store = stores.get(p)
                if store is None:
                    raise WorkerError(f"record from partition {p} of {topic} without an open store")
                view = views[p] = BatchView(store)
            tp = (topic, p)
            if tp not in first:
                first[tp] = off
            nxt[tp] = off + 1
            result = handle(view, topic, p, off, msg.key(), msg.value(), msg.headers(), msg.timestamp()[1])
            self._emit(result)
            handled += 1
        self._fire_timers(views)
        self._purge(views)
        self.metrics.flush()
        dirty = [p for p, v in views.items() if v.writes]
        if not nxt and not dirty and not self._in_txn:
            self._maybe_lag()
            return
        t0 = time.perf_counter()
        try:
            if self.eos:
                self._commit_eos(views, nxt)
            else:
                self._commit_alos(views, nxt)
        except _Abort as exc:
            self.metrics.abort()
            log.warning("batch aborted, replaying it", extra={"agent": self.spec.name, "error": str(exc)})
            self._rewind(first)
            return
        self.metrics.commit_latency(time.perf_counter() - t0)
        self.batches += 1
        self.handled += handled
        self._maybe_lag()

    def _emit(self, result: HandleResult) -> None:
        m = self.metrics
        outcome = result.outcome
        if outcome == IGNORED:
            m.ignored(result.event_type or "unknown")
            return
        if result.event_type is not None and outcome != A.DEAD_LETTERED:
            m.event_in(result.event_type)
        records = result.records
        if records:
            producer = self.producer
            assert producer is not None
            if self.eos and not self._in_txn:
                self._begin()  # what _produce does before the first record of a batch
            for r in records:
                # producer.produce straight away (this runs 2+ times per input); _produce when the
                # queue is full (it polls and retries) or the record has a partition.
                if r.partition is None:
                    try:
                        producer.produce(r.topic, r.value, r.key, headers=r.headers)
                    except BufferError:
                        self._produce(r.topic, r.key, r.value, r.headers, None)
                else:
                    self._produce(r.topic, r.key, r.value, r.headers, r.partition)
                if r.kind == "output":
                    m.event_out(r.event_type or "unknown")
        if outcome == A.DUPLICATE:
            m.duplicate(result.event_type or "unknown")
        elif outcome == A.DEAD_LETTERED:
            m.event_in(result.event_type or "unknown")
            m.dead_lettered(result.event_type, result.reason or "unknown")
        m.audit(outcome)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        partition: int | None = None,
        on_delivery: Any = None,
    ) -> None:
        producer = self.producer
        assert producer is not None
        if self.eos and not self._in_txn:
            self._begin()
        while True:
            try:
                if on_delivery is not None:
                    producer.produce(topic, value, key, partition=partition, headers=headers, on_delivery=on_delivery)
                elif partition is None:
                    producer.produce(topic, value, key, headers=headers)
                else:
                    producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)

    def _begin(self) -> None:
        assert self.producer is not None
        self._txn(self.producer.begin_transaction)
        self._in_txn = True

    def _produce_changelog(self, views: dict[int, BatchView]) -> None:
        producer = self.producer
        assert producer is not None
        changelog = self.changelog
        for p, view in views.items():
            if view.writes:
                if self.eos and not self._in_txn:
                    self._begin()
                for k, v in view.writes.items():
                    try:
                        producer.produce(changelog, v, k, partition=p)
                    except BufferError:
                        self._produce(changelog, k, v, None, p)
                self._produce(
                    self.changelog, K.MARKER, self._marker, None, p, on_delivery=self._on_delivery if self.eos else None
                )

    def _commit_eos(self, views: dict[int, BatchView], nxt: dict[tuple[str, int], int]) -> None:
        producer, consumer = self.producer, self.consumer
        assert producer is not None and consumer is not None
        self._delivery_errors.clear()
        self._cl_offsets.clear()
        try:
            if not self._in_txn:
                self._begin()
            self._produce_changelog(views)
            if nxt:
                offsets = [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
                self._txn(
                    lambda: producer.send_offsets_to_transaction(
                        offsets, consumer.consumer_group_metadata(), self.options.commit_timeout_s
                    )
                )
            self._txn(lambda: producer.commit_transaction(self.options.commit_timeout_s))
            self._in_txn = False
        except _Abort:
            self._abort_txn()
            raise
        producer.poll(0)  # serve the delivery reports: the changelog offsets reached
        self._apply(views)

    def _abort_txn(self) -> None:
        if not self._in_txn:
            return
        assert self.producer is not None
        try:
            self.producer.abort_transaction(self.options.commit_timeout_s)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise WorkerError(f"agent {self.spec.name}: producer fatal error on abort: {exc}") from exc
            raise WorkerError(f"agent {self.spec.name}: cannot abort transaction: {exc}") from exc
        finally:
            self._in_txn = False
            self.producer.poll(0)

    def _txn(self, call: Any) -> None:
        """Run a transactional call: retry retriable errors, turn abortable ones into _Abort,
        fatal ones (fenced by a newer instance of this transactional id) into WorkerError."""
        deadline = time.monotonic() + self.options.commit_timeout_s
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise WorkerError(f"agent {self.spec.name}: fatal producer error (fenced?): {err}") from exc
                if err.txn_requires_abort():
                    raise _Abort(str(err)) from exc
                if err.retriable() and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise _Abort(str(err)) from exc

    def _commit_alos(self, views: dict[int, BatchView], nxt: dict[tuple[str, int], int]) -> None:
        producer, consumer = self.producer, self.consumer
        assert producer is not None and consumer is not None
        self._flush()  # outputs, dead letters, audit: durable before the seen keys are
        self._cl_offsets.clear()
        if any(v.writes for v in views.values()):
            self._produce_changelog(views)
            self._flush()
        self._apply(views)
        if nxt:
            offsets = [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning(
                    "offset commit failed; the batch will be replayed and deduplicated",
                    extra={"agent": self.spec.name, "error": str(exc)},
                )
            for tp in offsets:
                self.committed[(tp.topic, tp.partition)] = tp.offset

    def _flush(self) -> None:
        assert self.producer is not None
        self._delivery_errors.clear()
        remaining = self.producer.flush(self.options.commit_timeout_s)
        if remaining:
            raise _Abort(f"{remaining} record(s) not delivered within {self.options.commit_timeout_s}s")
        if self._delivery_errors:
            errors = list(self._delivery_errors)
            self._delivery_errors.clear()
            raise _Abort(f"{len(errors)} record(s) failed delivery, first: {errors[0]}")

    def _apply(self, views: dict[int, BatchView]) -> None:
        for p, view in views.items():
            if view.writes:
                store = self.stores.get(p)
                if store is not None:
                    store.apply(view.writes, self._cl_offsets.get(p), view.reads)

    def _rewind(self, first: dict[tuple[str, int], int]) -> None:
        consumer = self.consumer
        assert consumer is not None
        for (topic, p), off in first.items():
            try:
                consumer.seek(TopicPartition(topic, p, off))
            except KafkaException as exc:
                log.warning(
                    "seek failed after abort",
                    extra={"agent": self.spec.name, "topic": topic, "partition": p, "offset": off, "error": str(exc)},
                )

    def _rewind_rest(self, rest: list[Any]) -> None:
        """The batch ran past max_batch_s: hand the rest back to the next consume."""
        first: dict[tuple[str, int], int] = {}
        for msg in rest:
            if msg.error() is None:
                first.setdefault((msg.topic(), msg.partition()), msg.offset())
        self._rewind(first)

    def _consume_error(self, err: Any) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise WorkerError(f"agent {self.spec.name}: fatal consumer error: {err}")
        log.warning("consumer error", extra={"agent": self.spec.name, "error": str(err)})

    # ------------------------------------------------------------------ timers, TTL, lag
    def _fire_timers(self, views: dict[int, BatchView]) -> None:
        if self.spec.on_timer is None:
            return
        now = self.processor.clock_ms()
        for p, store in list(self.stores.items()):
            due = store.due_timers(now, self.options.timers_per_batch)
            if not due:
                continue
            view = views.get(p)
            if view is None:
                view = views[p] = BatchView(store)
            for _, tk in due:
                result = self.processor.fire_timer(view, tk, p)
                if result is not None:
                    self.metrics.timer_fired()
                    self._emit(result)

    def _purge(self, views: dict[int, BatchView]) -> None:
        now_mono = time.monotonic()
        if now_mono < self._next_purge:
            return
        self._next_purge = now_mono + self.options.purge_interval_s
        now = self.processor.clock_ms()
        for p, store in list(self.stores.items()):
            expired = store.expired_seen_keys(now, self.options.purge_limit)
            if not expired:
                continue
            view = views.get(p)
            if view is None:
                view = views[p] = BatchView(store)
            for sk in expired:
                if sk not in view.writes:
                    view.put(sk, None)

    def _maybe_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag or self.consumer is None:
            return
        self._next_lag = now + self.options.lag_interval_s
        try:
            assignment = self.consumer.assignment()
            if not assignment:
                return
            for tp in self.consumer.position(assignment):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high is not None and high >= 0 and tp.offset >= 0:
                    self.metrics.lag(tp.topic, tp.partition, max(0, high - tp.offset))
        except KafkaException:
            pass

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # An exception escaping a rebalance callback reaches Python mangled by the client (its
        # value is a bare KafkaError), so it is kept here and re-raised by the consume loop.
        try:
            for p in sorted({tp.partition for tp in partitions}):
                if p not in self.stores:
                    self.stores[p] = self._open_and_restore(p)
        except Exception as exc:  # noqa: BLE001 - re-raised in run()
            self._callback_error = exc
            return
        self.metrics.assigned(len(self.stores))
        log.info(
            "partitions assigned",
            extra={"agent": self.spec.name, "partitions": sorted({tp.partition for tp in partitions})},
        )
        self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self.eos:
            self._commit_sync({tp.partition for tp in partitions})
        self._close_stores({tp.partition for tp in partitions})
        log.info(
            "partitions revoked",
            extra={"agent": self.spec.name, "partitions": sorted({tp.partition for tp in partitions})},
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._close_stores({tp.partition for tp in partitions})
        log.warning("partitions lost", extra={"agent": self.spec.name})

    def _commit_sync(self, partitions: set[int] | None = None) -> None:
        if self.consumer is None:
            return
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in self.committed.items() if partitions is None or p in partitions
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit on revoke failed", extra={"agent": self.spec.name, "error": str(exc)})
        for tp in offsets:
            self.committed.pop((tp.topic, tp.partition), None)

    def _close_stores(self, partitions: set[int]) -> None:
        for p in sorted(partitions):
            store = self.stores.pop(p, None)
            if store is not None:
                store.close()
            self.metrics.restore_remaining(p, 0)
        self.metrics.assigned(len(self.stores))

    def _open_and_restore(self, p: int) -> RocksStore:
        """Open the store of partition ``p`` and replay its changelog from the store's offset.

        Records are applied in chunks; the store's offset moves only at batch markers. A trailing
        run of records with no marker (an at-least-once worker died mid-flush) is undone in the
        store and rolled back on the changelog before the partition is processed.
        """
        restorer = self.restorer
        assert restorer is not None
        store = RocksStore(
            self.state_root / f"p{p}",
            max_age_ms=self.options.max_store_age_ms,
            memory=StoreMemory.shared(self.settings.state_memory_mb),
        )
        if store.wiped_reason:
            log.info("local store wiped", extra={"agent": self.spec.name, "partition": p, "reason": store.wiped_reason})
        tp = TopicPartition(self.changelog, p)
        low, high = watermarks(restorer, self.changelog, p)
        stored = store.changelog_offset
        if stored is not None and not (low <= stored + 1 <= high):
            log.warning(
                "store does not match its changelog, rebuilding it",
                extra={"agent": self.spec.name, "partition": p, "stored_offset": stored, "low": low, "high": high},
            )
            store.wipe()
            stored = None
        start = low if stored is None else stored + 1
        if start >= high:
            self.metrics.restore_remaining(p, 0)
            return store
        t0 = time.monotonic()
        store.set_restoring(True)
        restorer.assign([TopicPartition(self.changelog, p, start if start > 0 else OFFSET_BEGINNING)])
        chunk: dict[bytes, bytes | None] = {}
        undo: dict[bytes, bytes | None] = {}  # value before the current (unmarked) run, first touch
        last: int | None = None
        applied = 0
        done = False
        last_progress = time.monotonic()
        try:
            while not done:
                msgs = restorer.consume(1000, 0.5)
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            continue
                        if err.fatal():
                            raise WorkerError(f"restore of {self.changelog}[{p}]: {err}")
                        continue
                    key = m.key()
                    last = m.offset()
                    if key == K.MARKER:
                        store.apply(chunk, last)
                        applied += len(chunk)
                        chunk = {}
                        undo = {}
                        continue
                    if key not in undo:
                        undo[key] = chunk[key] if key in chunk else store.get(key)
                    chunk[key] = m.value()
                if msgs:
                    last_progress = time.monotonic()
                if len(chunk) >= self.options.restore_chunk:
                    store.apply(chunk)
                    applied += len(chunk)
                    self.metrics.restored(len(chunk))
                    chunk = {}
                if last is not None:
                    self.metrics.restore_remaining(p, max(0, high - last - 1))
                if time.monotonic() - last_progress > self.options.restore_stall_s:
                    raise WorkerError(f"restore of {self.changelog}[{p}] stalled at offset {last}")
        finally:
            restorer.unassign()
        if undo:
            # Undo what was applied of the unmarked run, then make the changelog say the same.
            store.apply(undo)
            self._roll_back_changelog(p, undo, store)
            log.warning(
                "rolled back an incomplete changelog batch",
                extra={"agent": self.spec.name, "partition": p, "records": len(undo)},
            )
        store.set_restoring(False)
        self.metrics.restore_remaining(p, 0)
        log.info(
            "store restored",
            extra={
                "agent": self.spec.name,
                "partition": p,
                "from_offset": start,
                "to_offset": last,
                "records": applied,
                "seconds": round(time.monotonic() - t0, 3),
            },
        )
        return store

    def _roll_back_changelog(self, p: int, undo: dict[bytes, bytes | None], store: RocksStore) -> None:
        view = BatchView(store)
        view.writes = dict(undo)
        views = {p: view}
        self._cl_offsets.clear()
        if self.eos:
            try:
                self._begin()
                self._produce_changelog(views)
                self._txn(lambda: self.producer.commit_transaction(self.options.commit_timeout_s))  # type: ignore[union-attr]
                self._in_txn = False
            except _Abort as exc:
                self._abort_txn()
                raise WorkerError(f"cannot roll back changelog {self.changelog}[{p}]: {exc}") from exc
            self.producer.poll(0)  # type: ignore[union-attr]
        else:
            self._produce_changelog(views)
            try:
                self._flush()
            except _Abort as exc:
                raise WorkerError(f"cannot roll back changelog {self.changelog}[{p}]: {exc}") from exc
        store.apply({}, self._cl_offsets.get(p))

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        try:
            if self._in_txn:
                try:
                    self._abort_txn()
                except WorkerError:
                    pass
            if not self.eos:
                self._commit_sync()
            if self.consumer is not None:
                self.consumer.close()
        finally:
            self._close_stores(set(self.stores))
            if self.producer is not None:
                self.producer.flush(5)
            if self.restorer is not None:
                self.restorer.close()
            log.info("agent stopped", extra={"agent": self.spec.name, "batches": self.batches})


# ============================================================================ worker
class Worker:
    """Runs some or all agents of an app in this process until :meth:`stop` (or SIGTERM/SIGINT
    through the CLI); several workers, here or on other machines, share the partitions."""

    def __init__(
        self,
        app: App,
        settings: Settings | None = None,
        agents: Iterable[str] | None = None,
        worker_id: str | None = None,
        guarantee: str | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or Settings.load()
        self.app.configure(self.settings)
        self.specs = app.select(list(agents) if agents is not None else None)
        self.worker_id = _safe(worker_id or os.environ.get("CHOREO_WORKER_ID") or default_worker_id())
        self.guarantee = guarantee or self.settings.processing_guarantee
        if self.guarantee not in (EXACTLY_ONCE, AT_LEAST_ONCE):
            raise WorkerError(f"processing guarantee must be exactly_once or at_least_once, got {self.guarantee!r}")
        self.options = options or WorkerOptions()
        self.stop_event = threading.Event()
        self.runners: list[AgentRunner] = []

    def prepare(self) -> None:
        """Checks that refuse to start (unknown types, undeclared cycle, inputs not co-partitioned)
        and the topics the agents need."""
        self.app.check()
        admin = _admin(self.settings)
        existing = topic_partitions(admin)
        if self.app.create_topics:
            ensure_topics(admin, plan_topics(self.app, self.specs, existing))
            existing = topic_partitions(admin)
        for spec in self.specs:
            check_agent_topics(self.app, spec, existing)

    def start(self) -> None:
        self.prepare()
        self.runners = [
            AgentRunner(self.app, spec, self.settings, self.worker_id, self.guarantee, self.stop_event, self.options)
            for spec in self.specs
        ]
        for runner in self.runners:
            runner.start()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            if not runner.ready.wait(max(0.0, deadline - time.monotonic())):
                return False
        return all(r.error is None for r in self.runners)

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for runner in self.runners:
            while runner.thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                runner.thread.join(0.2 if remaining is None else min(0.2, remaining))

    @property
    def errors(self) -> list[BaseException]:
        return [r.error for r in self.runners if r.error is not None]

    def run(self) -> int:
        """Start, wait until stopped (or an agent fails), stop the others; 0 when all ended cleanly."""
        self.start()
        while not self.stop_event.is_set():
            self.stop_event.wait(0.5)
        self.join()
        return 1 if self.errors else 0
