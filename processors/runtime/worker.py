"""The worker loop: one consumer group, one producer and a set of partition stores per agent.

Each agent runs in a thread of its own, around this loop (:meth:`AgentRunner.run_once`)::

    poll a batch  →  restore step  →  handle each record  →  timers and TTL purge  →  commit

Handlers write into a per-batch overlay of their partition's store; follow-ups, dead letters and
audit records are sent as they come; at the end of the batch the commit protocol makes it
durable and writes the overlays to the stores. The parts live beside this module:

* :mod:`processors.runtime.topics`: the topics an agent set needs, created and checked at start;
* :mod:`processors.runtime._clients`: the settings of the agent's Kafka clients;
* :mod:`processors.runtime._commit`: the commit protocol, exactly-once or at-least-once;
* :mod:`processors.runtime._restore`: stores restored from their changelogs, a step per loop;
* :mod:`processors.runtime._assignment`: the partitions processed, through rebalances;
* :mod:`processors.runtime._housekeeping`: due timers, expired seen keys, consumer lag.

Rebalances are eager (``range`` assignor: partition N of every co-partitioned input goes to the
same worker, where the store of partition N lives). An assigned partition stays paused until its
store is restored; on revocation its store is closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.kafka_types import ConsumedRecord, records
from processors.runtime import audit
from processors.runtime._assignment import Assignment
from processors.runtime._clients import AgentClients
from processors.runtime._commit import Batch, BatchAborted, CommitSettings, Guarantee, open_committer
from processors.runtime._housekeeping import Housekeeping, HousekeepingOptions
from processors.runtime._processor import IGNORED, HandleResult, Processor
from processors.runtime._restore import ChangelogRestorer, RestoreOptions
from processors.runtime.agent import AgentSpec
from processors.runtime.app import App
from processors.runtime.dlq import max_record_bytes
from processors.runtime.errors import WorkerError
from processors.runtime.metrics import AgentMetrics
from processors.runtime.state import RocksStore, StoreMemory
from processors.runtime.topics import CHANGELOG_DELETE_RETENTION_MS, existing_topics
from processors.settings import Settings

log = logging.getLogger("choreo.worker")

EXACTLY_ONCE = Guarantee.EXACTLY_ONCE
AT_LEAST_ONCE = Guarantee.AT_LEAST_ONCE


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
    # How long a transaction left open by a worker that never comes back blocks read_committed
    # readers (one that restarts fences it at once). Longer than a batch may take (max_batch_s
    # plus its commit), or the broker would abort healthy batches.
    transaction_timeout_ms: int = 20_000


class AgentRunner:
    """Runs one agent in this worker: its consumer, commit protocol, restorer and processor."""

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
        self.guarantee = Guarantee(guarantee)
        self.stop_event = stop
        self.options = options
        self.metrics = AgentMetrics(spec.name, self.guarantee)
        self.processor = Processor(
            app, spec, worker_id, metrics=self.metrics, max_record_bytes=max_record_bytes(settings.kafka)
        )
        self.topics = app.input_topics(spec)
        self.state_root = Path(settings.state_dir) / app.app_id / spec.name
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.batches = 0
        self.handled = 0
        self.thread = threading.Thread(target=self._main, name=f"agent-{spec.name}", daemon=True)

    @property
    def stores(self) -> dict[int, RocksStore]:
        """The stores of the partitions this agent processes now."""
        return self.assignment.stores

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
        self._open()
        log.info(
            "agent started",
            extra={
                "agent": self.spec.name,
                "topics": self.topics,
                "guarantee": str(self.guarantee),
                "worker_id": self.worker_id,
            },
        )
        try:
            while not self.stop_event.is_set():
                self.run_once()
        finally:
            self._shutdown()

    def run_once(self) -> None:
        """One turn of the loop: poll, restore step, handle, timers and purge, commit."""
        msgs = self._next_batch(0.0 if self.restorer.busy else self.options.poll_timeout_s)
        if self.restorer.busy:  # also when the poll just assigned partitions
            self.assignment.activate(self.consumer, self.restorer.step())
        if self.assignment.settled:
            self.ready.set()
        self._process(msgs)

    def _open(self) -> None:
        opts = self.options
        clients = AgentClients(self.app, self.spec.name, self.worker_id, self.settings)
        self.consumer = Consumer(clients.consumer())
        self.processor.use_partition_counts(existing_topics(self.consumer))
        marker = orjson.dumps({"worker": self.worker_id, "agent": self.spec.name})
        commit_settings = CommitSettings(self.spec.name, self.app.changelog_topic(self.spec.name), marker,
                                         opts.commit_timeout_s)  # fmt: skip
        self.committer = open_committer(
            self.guarantee, clients, self.consumer, commit_settings, opts.transaction_timeout_ms
        )
        self.restorer = ChangelogRestorer(
            Consumer(clients.restorer()),
            commit_settings.changelog,
            self._open_store,
            self.committer,
            self.metrics,
            self.spec.name,
            RestoreOptions(chunk=opts.restore_chunk, stall_s=opts.restore_stall_s),
        )
        self.assignment = Assignment(self.restorer, self.committer, self.metrics, self.spec.name)
        self.housekeeping = Housekeeping(
            self.processor,
            self.assignment.stores,
            self.metrics,
            HousekeepingOptions(opts.timers_per_batch, opts.purge_interval_s, opts.purge_limit, opts.lag_interval_s),
        )
        assignment = self.assignment
        self.consumer.subscribe(
            self.topics, on_assign=assignment.on_assign, on_revoke=assignment.on_revoke, on_lost=assignment.on_lost
        )

    def _open_store(self, partition: int) -> RocksStore:
        return RocksStore(
            self.state_root / f"p{partition}",
            max_age_ms=self.options.max_store_age_ms,
            memory=StoreMemory.shared(self.settings.state_memory_mb),
        )

    # ------------------------------------------------------------------ batch
    def _next_batch(self, timeout: float) -> list[ConsumedRecord]:
        """Wait up to ``timeout`` for one record, then up to ``batch_linger_s`` for more, up to
        ``batch_size``. ``consume(n, timeout)`` alone waits out its whole timeout unless ``n``
        records arrive: at low load that added the poll timeout to every hop of a flow. This way a
        lone event is handled within the linger, a backlog still comes in full batches, and a
        trickle is gathered for a few milliseconds rather than committed record by record."""
        opts = self.options
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        if opts.batch_size <= 1:
            return records([first])
        return records([first, *self.consumer.consume(opts.batch_size - 1, opts.batch_linger_s)])

    def _process(self, msgs: list[ConsumedRecord]) -> None:
        batch = Batch(self.assignment.stores)
        if msgs:
            self.metrics.batch(len(msgs))
        handled = self._handle_records(msgs, batch)
        self.housekeeping.fire_timers(batch, self._emit)
        self.housekeeping.purge(batch)
        self.metrics.flush()
        if batch.next_offsets or batch.dirty or self.committer.pending:
            self._commit(batch, handled)
        self.housekeeping.report_lag(self.consumer)

    def _handle_records(self, msgs: list[ConsumedRecord], batch: Batch) -> int:
        """Hand each record to the processor, in partition order; returns how many were handled.
        Past ``max_batch_s`` the rest is handed back to the next poll."""
        deadline = time.monotonic() + self.options.max_batch_s
        handle, emit = self.processor.handle_message, self._emit
        views, first, nxt = batch.views, batch.first_offsets, batch.next_offsets
        handled = 0
        for i, msg in enumerate(msgs):
            err = msg.error()
            if err is not None:
                self._consume_error(err)
                continue
            if handled and time.monotonic() > deadline:
                self._rewind(_first_offsets(msgs[i:]))
                break
            topic, p, off = msg.topic(), msg.partition(), msg.offset()
            view = views.get(p) or batch.view(p)
            if view is None:
                raise WorkerError(f"record from partition {p} of {topic} without an open store")
            tp = (topic, p)
            if tp not in first:
                first[tp] = off
            nxt[tp] = off + 1
            emit(handle(view, msg))
            handled += 1
        return handled

    def _emit(self, result: HandleResult) -> None:
        """Send a handled input's records and count its outcome."""
        m = self.metrics
        outcome = result.outcome
        if outcome == IGNORED:
            m.ignored(result.event_type or "unknown")
            return
        if result.event_type is not None and outcome != audit.DEAD_LETTERED:
            m.event_in(result.event_type)
        records = result.records
        if records:
            self.committer.send_records(records)
            for r in records:
                if r.kind == "output":
                    m.event_out(r.event_type or "unknown")
        if outcome == audit.DUPLICATE:
            m.duplicate(result.event_type or "unknown")
        elif outcome == audit.DEAD_LETTERED:
            m.event_in(result.event_type or "unknown")
            m.dead_lettered(result.event_type, result.reason or "unknown")
        m.audit(outcome)

    def _commit(self, batch: Batch, handled: int) -> None:
        t0 = time.perf_counter()
        try:
            self.committer.commit(batch)
        except BatchAborted as exc:
            self.metrics.abort()
            log.warning("batch aborted, replaying it", extra={"agent": self.spec.name, "error": str(exc)})
            self._rewind(batch.first_offsets)
            return
        self.metrics.commit_latency(time.perf_counter() - t0)
        self.batches += 1
        self.handled += handled

    def _rewind(self, first: dict[tuple[str, int], int]) -> None:
        """Hand records back to the next poll: seek each partition to the first one not done."""
        for (topic, p), off in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, p, off))
            except KafkaException as exc:
                log.warning(
                    "seek failed after abort",
                    extra={"agent": self.spec.name, "topic": topic, "partition": p, "offset": off, "error": str(exc)},
                )

    def _consume_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise WorkerError(f"agent {self.spec.name}: fatal consumer error: {err}")
        log.warning("consumer error", extra={"agent": self.spec.name, "error": str(err)})

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        committer, consumer, restorer, assignment = (
            getattr(self, name, None) for name in ("committer", "consumer", "restorer", "assignment")
        )
        try:
            if committer is not None:
                committer.close()  # abort an open transaction, or commit what at-least-once finished
            if consumer is not None:
                consumer.close()
        finally:
            if assignment is not None:
                assignment.close()
            if restorer is not None:
                restorer.close()
            log.info("agent stopped", extra={"agent": self.spec.name, "batches": self.batches})


def _first_offsets(msgs: Iterable[ConsumedRecord]) -> dict[tuple[str, int], int]:
    first: dict[tuple[str, int], int] = {}
    for msg in msgs:
        if msg.error() is None:
            first.setdefault((msg.topic(), msg.partition()), msg.offset())
    return first


__all__ = ["AT_LEAST_ONCE", "EXACTLY_ONCE", "AgentRunner", "WorkerOptions"]
