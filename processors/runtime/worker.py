"""The worker loop: one consumer group, one producer and a set of partition stores per agent.

Each agent runs in a thread of its own, around this loop (:meth:`AgentRunner.run_once`)::

    poll a batch  →  restore step  →  handle each record  →  timers and TTL purge  →  commit

Handlers write into a per-batch overlay of their partition's store; follow-ups, dead letters and
audit records are sent as they come; when the batch is due (the commit interval: a batch spans
polls until ``commit_interval_ms`` is up, or the agent finds itself idle) the commit protocol makes
it durable and writes the overlays to the stores. The parts live beside this module:

* :mod:`processors.runtime.topics`: the topics an agent set needs, created and checked at start;
* :mod:`processors.runtime._clients`: the settings of the agent's Kafka clients;
* :mod:`processors.runtime._commit`: the commit protocol, exactly-once or at-least-once;
* :mod:`processors.runtime._restore`: stores restored from their changelogs, a step per loop;
* :mod:`processors.runtime._assignment`: the partitions processed, through rebalances;
* :mod:`processors.runtime._housekeeping`: due timers, expired seen keys, consumer lag.

Failures: what ends the agent's session (see :mod:`processors.runtime._recovery`) ends only this
object; the worker's supervisor (:mod:`processors.runtime.supervisor`) starts a fresh one after a
backoff, or stops the worker when the failure is fatal. Every blocking client call is announced
to the agent's :class:`~processors.runtime._watchdog.CallWatch`, so one that outlives its
deadline gets the agent replaced instead of hanging it.

Rebalances are incremental where the group protocol allows it (see
:mod:`processors.runtime._clients`): partition N of every co-partitioned input goes to the same
worker, where the store of partition N lives, and only partitions that change owner are assigned
or revoked. An assigned partition stays paused until its store is restored; on revocation its
store is closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.kafka_errors import ErrorKind, KafkaFailure, classify, describe, is_unreachable
from processors.kafka_types import ConsumedRecord, records
from processors.kafka_types import headers as read_headers
from processors.runtime import audit
from processors.runtime._assignment import Assignment
from processors.runtime._clients import AgentClients, group_protocol
from processors.runtime._commit import Batch, BatchAborted, CommitSettings, Guarantee, open_committer
from processors.runtime._concurrency import KeyedExecutor
from processors.runtime._housekeeping import Housekeeping, HousekeepingOptions
from processors.runtime._latency import observe_record, observe_terminal
from processors.runtime._processor import IGNORED, HandleResult, Processor
from processors.runtime._recovery import BROKER_UNREACHABLE, AgentHealth, TransientFailure
from processors.runtime._restore import ChangelogRestorer, RestoreOptions
from processors.runtime._standby import open_standby
from processors.runtime._watchdog import Abandoned, CallWatch
from processors.runtime.agent import AgentSpec
from processors.runtime.app import App
from processors.runtime.conventions import DlqReason
from processors.runtime.dlq import max_record_bytes
from processors.runtime.errors import WorkerError
from processors.runtime.metrics import AgentMetrics
from processors.runtime.state import RocksStore, StoreMemory
from processors.runtime.state.store import StoreLockedError
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
    max_batch_s: float = 10.0  # cut a poll's batch short (and commit what is done) past this
    # The commit interval in seconds; None takes the settings' commit_interval_ms. Work stays open
    # across polls until it has run this long (or holds commit_max_records inputs): see _commit_due.
    commit_interval_s: float | None = None
    commit_max_records: int = 5000
    commit_idle_s: float | None = None  # None: the settings' commit_idle_ms (0: off)
    commit_timeout_s: float = 30.0
    timers_per_batch: int = 1000
    purge_interval_s: float = 60.0
    purge_limit: int = 5000
    lag_interval_s: float = 2.0
    restore_chunk: int = 10_000
    restore_stall_s: float = 120.0
    max_store_age_ms: int = CHANGELOG_DELETE_RETENTION_MS // 2
    # How long a transaction left open by a worker that never comes back blocks read_committed
    # readers (one that restarts fences it at once). Longer than a batch may take (the commit
    # interval plus max_batch_s plus its commit), or the broker would abort healthy batches.
    transaction_timeout_ms: int = 20_000
    # A revoke or a stop waits this long for the handlers that run (key-ordered concurrency) to end,
    # so their work is committed; those still running then are abandoned and handled again, once,
    # by whoever handles the partition next (a dependency call hands the callee the same key).
    drain_timeout_s: float = 10.0
    # The watchdog: a blocking client call may take its own timeout plus this, then the agent is
    # given up and replaced (fresh clients); poll and consume have no long timeout of their own.
    call_grace_s: float = 10.0
    # Transient batch aborts in a row before the session is replaced (fresh producer and consumer).
    max_replays: int = 3
    probe_interval_s: float = 1.0  # while retrying, how often an idle agent checks the broker is back
    probe_quiet_s: float = 5.0  # ...and for how long no client error may come before it says it recovered


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
        metrics: AgentMetrics | None = None,
        health: AgentHealth | None = None,
    ) -> None:
        self.app = app
        self.spec = spec
        self.settings = settings
        self.worker_id = worker_id
        self.guarantee = Guarantee(guarantee)
        self.stop_event = stop
        self.options = options
        self.metrics = metrics or AgentMetrics(spec.name, self.guarantee)
        self.health = health or AgentHealth(spec.name, self.metrics)
        self.watch = CallWatch()
        self.processor = Processor(
            app,
            spec,
            worker_id,
            metrics=self.metrics,
            max_record_bytes=max_record_bytes(settings.kafka),
            dependency_limits=settings.dependencies,
        )
        self.topics = app.input_topics(spec)
        self.state_root = Path(settings.state_dir) / app.app_id / spec.name
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.batches = 0
        self.handled = 0
        self.replays = 0  # transient aborts in a row
        self.isolating: dict[tuple[str, int], int] = {}  # replay one record per batch below these offsets
        self.single: ConsumedRecord | None = None  # the record of a one-record (isolating) batch
        self._client_failure: KafkaFailure | None = None  # a fatal error a client callback reported
        self._next_probe = 0.0
        self.commit_interval_s = _commit_interval_s(options, settings, self.guarantee)
        idle = settings.commit_idle_ms / 1000 if options.commit_idle_s is None else options.commit_idle_s
        self.commit_idle_s = idle if 0 < idle < self.commit_interval_s else None
        self.open: Batch | None = None  # work handled since the last commit (see _commit_due)
        self._rewind_after_poll: dict[tuple[str, int], int] = {}  # set by a revoke whose commit failed
        self._revoke_failure: BaseException | None = None  # raised by the loop once the poll returns
        self.max_in_flight = spec.concurrency(settings.max_in_flight(spec.name))
        problem = spec.concurrency_problem(self.max_in_flight)
        if problem is not None:
            raise WorkerError(problem)
        self.executor: KeyedExecutor | None = None  # set at _open when inputs run concurrently
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
        except Abandoned:
            pass  # replaced by the supervisor while stuck: touch nothing
        except BaseException as exc:  # noqa: BLE001 - judged by the supervisor: retry or stop
            self.error = exc
        finally:
            self.ready.set()

    def release(self, stuck_call: str) -> None:
        """The supervisor gave this agent up (a call stuck past its deadline): close its stores, so
        a fresh agent can open them, and, when the call that is stuck is not the consumer's, have
        the consumer leave the group (from a thread of its own, which may block too): an abandoned
        consumer would go on heartbeating and hold its partitions from the fresh one. Its thread
        raises :class:`Abandoned` if the call ever returns."""
        assignment = getattr(self, "assignment", None)
        if assignment is not None:
            assignment.detach()
            assignment.close()
        standby = getattr(self, "standby", None)
        if standby is not None:
            standby.release()
        if stuck_call in _CONSUMER_CALLS:
            return  # closing a consumer another thread is inside of is not safe: the group evicts it
        restorer = getattr(self, "restorer", None)
        consumers = [c for c in (getattr(self, "consumer", None), restorer and restorer.consumer) if c is not None]
        threading.Thread(target=_close_quietly, args=(consumers,), name=f"close-{self.spec.name}", daemon=True).start()

    def run(self) -> None:
        try:
            self._open()
        except BatchAborted as exc:  # init_transactions or a first write failed
            if exc.kind is ErrorKind.TRANSIENT:
                raise TransientFailure(BROKER_UNREACHABLE, str(exc)) from exc
            raise self._fatal_output(exc) from exc
        if self.guarantee is EXACTLY_ONCE:
            self.health.recovered()  # init_transactions answered: the broker is back
        log.info(
            "agent started",
            extra={
                "agent": self.spec.name,
                "topics": self.topics,
                "guarantee": str(self.guarantee),
                "worker_id": self.worker_id,
            },
        )
        failed = True
        try:
            while not self.stop_event.is_set():
                self.run_once()
            failed = False
        finally:
            if not self.watch.abandoned:
                self._shutdown(failed)

    def run_once(self) -> None:
        """One turn of the loop: poll, restore step, handle, timers and purge, commit."""
        msgs = self._next_batch(self._poll_timeout())
        self._raise_client_failure()
        if self.restorer.busy:  # also when the poll just assigned partitions
            self.assignment.activate(self.consumer, self.restorer.step())
        self.standby.step()  # a bounded turn of the warm standbys (none: a no-op)
        if self.assignment.settled:
            self.ready.set()
        self._process(msgs)
        if not self.health.healthy:
            self._probe()

    def _probe(self) -> None:
        """While retrying and idle, ask the cluster for the input topics' metadata now and then:
        an answer means the broker is back (a committed batch says so too)."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + self.options.probe_interval_s
        try:
            with self.watch.watch("list_topics", 2 + self.options.call_grace_s):
                self.consumer.list_topics(self.topics[0], timeout=2)
        except KafkaException:
            return
        self.health.recovered(quiet_s=self.options.probe_quiet_s)

    def _on_client_error(self, err: KafkaError) -> None:
        """The clients' error callback (served inside poll/flush): fatal errors are raised by the
        loop right after the call; the rest say the agent is retrying (logged once)."""
        if classify(err) is ErrorKind.FATAL:
            if self._client_failure is None:
                self._client_failure = KafkaFailure(err, action=f"agent {self.spec.name}")
            return
        self.health.trouble(BROKER_UNREACHABLE if is_unreachable(err) else "client error", describe(err))

    def _on_producer_error(self, err: KafkaError) -> None:
        """The producer serves its error events only when it is next polled (at a commit), so an
        outage's "all brokers down" would arrive after the recovery: only fatal ones count here
        (transient trouble shows in the consumer's events and in failed commits)."""
        if classify(err) is ErrorKind.FATAL:
            self._on_client_error(err)

    def _raise_client_failure(self) -> None:
        if self._client_failure is not None:
            raise self._client_failure

    def _open(self) -> None:
        opts = self.options
        clients = AgentClients(self.app, self.spec.name, self.worker_id, self.settings)
        protocol = group_protocol(self.settings, len(self.topics), self.watch, opts.call_grace_s)
        log.info("group protocol", extra={"agent": self.spec.name, "protocol": protocol.protocol,
                                          "assignor": protocol.assignor, "reason": protocol.reason})  # fmt: skip
        self.consumer = Consumer(_with_error_cb(clients.consumer(protocol), self._on_client_error))
        with self.watch.watch("list_topics", 10 + opts.call_grace_s):
            topic_partitions = existing_topics(self.consumer)
        self.processor.use_partition_counts(topic_partitions)
        marker = orjson.dumps({"worker": self.worker_id, "agent": self.spec.name})
        commit_settings = CommitSettings(
            self.spec.name,
            self.app.changelog_topic(self.spec.name),
            marker,
            opts.commit_timeout_s,
            opts.call_grace_s,
            opts.transaction_timeout_ms / 1000,
        )
        self.committer = open_committer(
            self.guarantee,
            clients,
            self.consumer,
            commit_settings,
            opts.transaction_timeout_ms,
            self.watch,
            self._on_producer_error,
        )
        self.committer.before_revoke = self._settle_revoked
        self.restorer = ChangelogRestorer(
            Consumer(_with_error_cb(clients.restorer(), self._on_client_error)),
            commit_settings.changelog,
            self._open_store,
            self.committer,
            self.metrics,
            self.spec.name,
            RestoreOptions(chunk=opts.restore_chunk, stall_s=opts.restore_stall_s),
            self.watch,
            opts.call_grace_s,
        )
        self.assignment = Assignment(
            self.restorer, self.committer, self.metrics, self.spec.name, incremental=protocol.incremental
        )
        self.housekeeping = Housekeeping(
            self.processor,
            self.assignment.stores,
            self.metrics,
            HousekeepingOptions(opts.timers_per_batch, opts.purge_interval_s, opts.purge_limit, opts.lag_interval_s),
        )
        assignment = self.assignment
        self.standby = open_standby(  # warm standbys (standby_replicas): copies of others' stores
            self.settings.standby_replicas,
            clients.restorer(),
            commit_settings.changelog,
            topic_partitions.get(commit_settings.changelog, 0),
            lambda: assignment.stores.keys() | assignment.paused.keys(),
            lambda p: self._open_store(p, standby=True),
            self.spec.name,
        )
        if self.max_in_flight > 1:
            self.executor = KeyedExecutor(
                self.processor, self.max_in_flight, lambda p: self._open_work().view(p), self.spec.threads
            )
        self.consumer.subscribe(
            self.topics, on_assign=assignment.on_assign, on_revoke=assignment.on_revoke, on_lost=assignment.on_lost
        )

    def _open_store(self, partition: int, standby: bool = False) -> RocksStore:
        """The store of ``partition``. Locked by this very process, it is still held by a session
        that was replaced (stuck in a client call with the store just opened): transient, the
        next session tries again. Locked by another process is a misconfiguration (two workers on
        one state directory): fatal. A warm standby copy is handed over open; a standby's own
        open never waits for the lock."""
        if not standby:
            warm = self.standby.take(partition)
            if warm is not None:
                return warm
        try:
            return RocksStore(
                self.state_root / f"p{partition}",
                max_age_ms=self.options.max_store_age_ms,
                lock_wait_s=0.0 if standby else 20.0,
                memory=StoreMemory.shared(self.settings.state_memory_mb),
            )
        except StoreLockedError as exc:
            if "current process" in str(exc):
                raise TransientFailure("state store still held by a replaced session", str(exc)[:300]) from exc
            raise

    # ------------------------------------------------------------------ batch
    def _next_batch(self, timeout: float) -> list[ConsumedRecord]:
        """Wait up to ``timeout`` for one record, then up to ``batch_linger_s`` for more, up to
        ``batch_size``. ``consume(n, timeout)`` alone waits out its whole timeout unless ``n``
        records arrive: at low load that added the poll timeout to every hop of a flow. This way a
        lone event is handled within the linger, a backlog still comes in full batches, and a
        trickle is gathered for a few milliseconds rather than committed record by record."""
        return self._settle_after_poll(self._poll(timeout))

    def _poll(self, timeout: float) -> list[ConsumedRecord]:
        opts = self.options
        # the deadline covers the rebalance callbacks served inside poll (a revoke commits the open
        # work there)
        deadline = opts.commit_timeout_s + opts.call_grace_s
        if self.executor is not None and not self.executor.capacity:
            return []  # max_in_flight handlers running (or max_held inputs in hand): wait for one to end
        with self.watch.watch("poll", timeout + deadline):
            first = self.consumer.poll(timeout)
        if first is None:
            return []
        size = opts.batch_size if self.executor is None else min(opts.batch_size, self.executor.capacity)
        if size <= 1 or self.isolating:
            return records([first])
        with self.watch.watch("consume", opts.batch_linger_s + deadline):
            more = self.consumer.consume(size - 1, opts.batch_linger_s)
        return records([first, *more])

    def _process(self, msgs: list[ConsumedRecord]) -> None:
        batch = self._open_work()
        if msgs:
            self.metrics.batch(len(msgs))
        self.single = None
        try:
            if self.executor is not None and not self.isolating:
                batch.handled += self._submit_records(msgs, batch)
            else:
                batch.handled += self._handle_records(msgs, batch)
            self.housekeeping.fire_timers(batch, self._emit_fired, self._key_in_flight)
            self.housekeeping.purge(batch)
            self.metrics.flush()
            if not (batch.has_work or self.committer.pending):
                self.open = None  # nothing to commit: the interval starts with the next work
            elif self._commit_due(batch, idle=not msgs and not (self.executor and self.executor.busy)):
                self.open = None
                self._commit(batch, batch.handled)
        except BatchAborted as exc:  # a write refused while the batch ran, or at its commit
            self.open = None
            self.metrics.flush()
            self._aborted(batch, exc, in_hand=msgs)
        self.housekeeping.report_lag(self.consumer)

    # ------------------------------------------------------------------ commit interval
    # Work stays open across polls until the commit interval is up (Kafka Streams' commit.interval.ms):
    # one transaction, or one offset commit, per interval rather than per poll. What must still hold:
    # a commit covers only handled inputs (the loop commits between polls, never inside a handler);
    # a revoke commits the open work before the partitions go (_settle_revoked, called by the
    # committer inside the revoke callback); a lost partition aborts it; a restore step or a stop
    # commits it first; an abort rewinds every partition to where the open work began.
    def _open_work(self) -> Batch:
        if self.open is None:
            self.open = Batch(self.assignment.stores)
        return self.open

    def _commit_due(self, batch: Batch, idle: bool = False) -> bool:
        """Whether the open work is committed now: its interval is up, it holds the size bound, the
        last poll found nothing for ``commit_idle_s`` (an idle agent has nothing to amortise the
        commit over), or the loop is isolating a refused record (one record a commit) or stopping."""
        if self.isolating or self.stop_event.is_set() or self.restorer.busy:
            return True
        if idle and self.commit_idle_s is not None:
            return True
        if batch.handled >= self.options.commit_max_records:
            return True
        return time.monotonic() - batch.opened >= self.commit_interval_s

    def _poll_timeout(self) -> float:
        """How long the next poll may wait: not past the open work's commit (so a lone event's
        latency stays within the interval), and not at all while a restore is to be stepped."""
        if self.restorer.busy or (self.executor is not None and self.executor.busy):
            return 0.0  # a restore to step, or handlers whose ends _submit_records waits for
        if self.open is None:
            return self.options.poll_timeout_s
        left = self.open.opened + self.commit_interval_s - time.monotonic()
        if self.commit_idle_s is not None:
            left = min(left, self.commit_idle_s)
        return max(0.0, min(self.options.poll_timeout_s, left))

    def _settle_revoked(self, partitions: set[int]) -> None:
        """Inside the revoke callback: commit the open work, all of it (a batch is one transaction),
        while this member still owns the partitions. A failed commit aborts it: the revoked
        partitions' new owner replays from the committed offsets, the ones kept here are rewound
        once the poll returns. Nothing raises inside the client's callback: a failure that ends the
        session is raised by the loop after the poll. Handlers of the revoked partitions that run
        are waited for first (``drain_timeout_s``); what is left of them is handed back."""
        drain_failure: Exception | None = None
        try:
            self._drain(partitions)
        except Exception as exc:  # noqa: BLE001 - a send refused while releasing: the open work aborts below
            drain_failure = exc
        batch = self._take_open_work()
        if batch is None:
            if drain_failure is not None:
                self._revoke_failure = drain_failure
            return
        try:
            if drain_failure is not None:
                raise drain_failure
            self._commit(batch, batch.handled)
        except BatchAborted as exc:
            self.metrics.abort()
            log.warning(
                "commit on revoke failed; the open work is replayed",
                extra={"agent": self.spec.name, "error": str(exc)[:300]},
            )
            try:
                self.committer.abort()
            except Exception as failure:  # noqa: BLE001 - raised by the loop, outside the callback
                self._revoke_failure = failure
            back = self._replay_from(batch)
            self._rewind_after_poll.update({tp: off for tp, off in back.items() if tp[1] not in partitions})
        except Exception as failure:  # noqa: BLE001 - raised by the loop, outside the callback
            self._revoke_failure = failure

    def _settle_after_poll(self, msgs: list[ConsumedRecord]) -> list[ConsumedRecord]:
        """What a poll's rebalance callbacks left to the loop: a revoke's failure to raise, partitions
        to rewind, open work of a partition lost meanwhile (aborted: no commit may cover it) and,
        before a restore step (which may write the changelog through the committer), open work to
        commit. Records of rewound partitions are dropped: the next poll brings them again."""
        failure, self._revoke_failure = self._revoke_failure, None
        if failure is not None:
            raise failure
        back, self._rewind_after_poll = self._rewind_after_poll, {}
        batch = self.open
        if batch is not None and not batch.partitions <= set(self.assignment.stores):
            self.open = None
            self.metrics.abort()
            self.committer.abort()
            replay = self._replay_from(batch)
            back.update({tp: off for tp, off in replay.items() if tp[1] in self.assignment.stores})
            log.warning("partitions lost with open work: it is aborted and replayed", extra={"agent": self.spec.name})
        elif batch is not None and self.restorer.busy and (batch.has_work or self.committer.pending):
            self.open = None
            try:
                self._commit(batch, batch.handled)
            except BatchAborted as exc:
                back.update(self._aborted(batch, exc))
        self._drop_unowned()
        if not back:
            return msgs
        self._rewind(back)
        return [m for m in msgs if (m.topic(), m.partition()) not in back]

    def _take_open_work(self) -> Batch | None:
        """The open work, taken out of the loop's hands to be committed now (the next record opens
        new work); None when there is nothing to commit."""
        batch, self.open = self.open, None
        if batch is None or not (batch.has_work or self.committer.pending):
            return None
        return batch

    def _commit_open_work(self) -> None:
        """On a stop: commit the open work (a failure aborts it: the next owner replays it), once the
        handlers that run have ended (up to ``drain_timeout_s``)."""
        self._drain(None)
        batch = self._take_open_work()
        if batch is None:
            return
        try:
            self._commit(batch, batch.handled)
        except BatchAborted as exc:
            log.warning("commit at stop failed; the open work is replayed", extra={"agent": self.spec.name,
                                                                              "error": str(exc)[:300]})  # fmt: skip

    def _handle_records(self, msgs: list[ConsumedRecord], batch: Batch) -> int:
        """Hand each record to the processor, in partition order; returns how many were handled.
        Past ``max_batch_s`` the rest is handed back to the next poll. Each handled record's
        end-to-end latency is observed (see :meth:`_observe_latency`)."""
        deadline = time.monotonic() + self.options.max_batch_s
        observe = self._observe_latency
        handle, emit = self.processor.handle_message, self._emit
        views, first, nxt = batch.views, batch.first_offsets, batch.next_offsets
        handled = 0
        not_ours: dict[tuple[str, int], int] = {}
        for i, msg in enumerate(msgs):
            err = msg.error()
            if err is not None:
                self._consume_error(err, msg.topic())
                continue
            if handled and (self.isolating or time.monotonic() > deadline):
                self._rewind(_first_offsets(msgs[i:]))
                break
            topic, p, off = msg.topic(), msg.partition(), msg.offset()
            view = views.get(p) or batch.view(p)
            if view is None:  # fetched before its partition was revoked (or paused for a restore)
                not_ours.setdefault((topic, p), off)
                continue
            tp = (topic, p)
            if tp not in first:
                first[tp] = off
            nxt[tp] = off + 1
            if self.isolating:
                self.single = msg
            result = handle(view, msg)
            observe(msg, result)
            emit(result)
            handled += 1
        if not_ours:
            self._not_ours(not_ours)
        return handled

    # ------------------------------------------------------------------ key-ordered concurrency
    # With max_in_flight > 1 the records go through the executor (processors.runtime._concurrency):
    # admitted here in offset order, handled concurrently across keys, released into the open work
    # per partition in offset order. The open work (and so every commit) holds released inputs only:
    # nothing past an unfinished one. What the executor still holds is not in the open work, so an
    # abort, a lost partition or a revoke also hands it back (_replay_from, _drain, _drop_unowned).
    def _submit_records(self, msgs: list[ConsumedRecord], batch: Batch) -> int:
        """Admit each record and hand it to the executor; then take in what ended (waiting for the
        first end when nothing came and handlers run). Returns how many inputs were released."""
        executor = self.executor
        assert executor is not None
        admit = self.processor.admit_message
        not_ours: dict[tuple[str, int], int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._consume_error(err, msg.topic())
                continue
            topic, p, off = msg.topic(), msg.partition(), msg.offset()
            if batch.view(p) is None:  # fetched before its partition was revoked (or paused for a restore)
                not_ours.setdefault((topic, p), off)
                continue
            executor.submit(topic, p, off, admit(msg), msg)
        if not_ours:
            self._not_ours(not_ours)
        wait_s = 0.0
        if not msgs and executor.busy:
            # at capacity nothing can be polled until a handler ends (or a head releases); else poll again soon
            wait_s = self.options.poll_timeout_s if not executor.capacity else self.options.batch_linger_s
        executor.collect(wait_s)
        return self._take_released()

    def _take_released(self) -> int:
        """Send what the executor released and count it into the open work."""
        executor = self.executor
        if executor is None:
            return 0
        released = executor.take_released()
        if not released:
            return 0
        batch = self._open_work()
        observe, metrics = self._observe_latency, self.metrics
        for r in released:
            batch.consumed(r.topic, r.partition, r.offset)
            if r.handler_seconds is not None:
                metrics.handler_latency(r.handler_seconds)
            observe(r.message, r.result)
            self._emit(r.result)
        return len(released)

    def _drain(self, partitions: set[int] | None) -> None:
        """Before a revoke's or a stop's commit: wait for the running handlers of ``partitions``
        (None: all) to end, take in what they released, abandon the rest (handled again from the
        committed offset by whoever handles the partition next)."""
        executor = self.executor
        if executor is None or not executor.busy:
            return
        if not executor.drain(partitions, self.options.drain_timeout_s):
            log.warning("handlers still running after the drain timeout are abandoned; their inputs are redone",
                        extra={"agent": self.spec.name, "drain_timeout_s": self.options.drain_timeout_s})  # fmt: skip
        self._take_released()
        executor.drop(partitions)

    def _replay_from(self, batch: Batch, in_hand: Sequence[ConsumedRecord] = ()) -> dict[tuple[str, int], int]:
        """Where each partition is handled again after ``batch`` is aborted: its first offset, or
        the executor's first unreleased one when lower (everything the executor holds is dropped),
        or the first of ``in_hand`` (the records polled with the batch) when lower. A write can be
        refused while the batch runs, before the loop reached the poll's later records: the
        consumer's position is already past them, so a partition not sought back to them would
        not be fetched again (its inputs stuck, unnoticed, until the next rebalance)."""
        back = dict(batch.first_offsets)
        if self.executor is not None:
            for tp, off in self.executor.drop().items():
                back[tp] = min(off, back.get(tp, off))
        owned = self.assignment.stores.keys() | self.assignment.paused.keys()
        for tp, off in _first_offsets(in_hand).items():
            if tp[1] in owned:  # a revoked partition's records are its new owner's (from the committed offset)
                back[tp] = min(off, back.get(tp, off))
        return back

    def _drop_unowned(self) -> None:
        """Inputs in the executor of partitions no longer processed here (lost, or revoked while
        the drain could not reach them) are dropped: their new owner handles them."""
        executor = self.executor
        if executor is None or not executor.busy:
            return
        stores = self.assignment.stores
        gone = {p for _, p in executor.lowest_offsets() if p not in stores}
        if gone:
            executor.drop(gone)

    def _key_in_flight(self, partition: int, state_key: bytes) -> bool:
        """Whether an input of the key is in the executor: its due timer waits for it."""
        return self.executor is not None and self.executor.holds(partition, state_key)

    def _observe_latency(self, msg: ConsumedRecord, result: HandleResult) -> None:
        """The record's end-to-end latency and the flow time of its terminal outputs (binned per
        record, published with the batch's metrics; see :mod:`processors.runtime._latency`)."""
        observe_record(self.metrics, self.spec.terminal, msg, result, time.time())

    def _emit_fired(self, result: HandleResult) -> None:
        """A fired timer's result: a flow that its timer ends (a timeout) is timed too, then sent."""
        observe_terminal(self.metrics, self.spec.terminal, result, time.time())
        self._emit(result)

    def _not_ours(self, first: dict[tuple[str, int], int]) -> None:
        """Records of partitions without an open store. A revoked partition's records belong to its
        new owner now, which starts from the committed offset: drop them, commit nothing of them.
        A partition still assigned (paused until its store is restored) is sought back to them."""
        paused = self.assignment.paused
        back = {tp: off for tp, off in first.items() if tp[1] in paused}
        if back:
            self._rewind(back)
        log.debug(
            "records of partitions not processed here dropped",
            extra={"agent": self.spec.name, "partitions": sorted(p for _, p in first), "rewound": sorted(back)},
        )

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
        self.committer.commit(batch)
        self.metrics.commit_latency(time.perf_counter() - t0)
        self.batches += 1
        self.handled += handled
        self.replays = 0
        self._isolated(batch)
        self.health.recovered()

    # ------------------------------------------------------------------ failed batches
    def _aborted(
        self, batch: Batch, exc: BatchAborted, in_hand: Sequence[ConsumedRecord] = ()
    ) -> dict[tuple[str, int], int]:
        """A batch that could not be made durable. Transient: replay it (a few times in a row,
        then replace the session). One record refused: replay the batch record by record, and
        dead-letter the input whose output is refused. Fatal (write denied, unknown topic): stop.
        ``in_hand``: the records of the poll the batch aborted in, handled or not: each goes back
        too. Returns where each partition is handled again (already sought there)."""
        self.metrics.abort()
        self.committer.abort()
        exc = self.committer.explain(exc)
        back = self._replay_from(batch, in_hand)
        self._rewind(back)
        if exc.kind is ErrorKind.FATAL:
            raise self._fatal_output(exc) from exc
        if exc.kind is ErrorKind.RECORD:
            self._record_refused(batch, exc)
            return back
        self.replays += 1
        cause = BROKER_UNREACHABLE if exc.error is not None and is_unreachable(exc.error) else "batch aborted"
        if "not delivered within" in str(exc):
            cause = BROKER_UNREACHABLE
        self.health.trouble(cause, str(exc))
        if self.replays >= self.options.max_replays:
            raise TransientFailure(cause, f"{self.replays} batches aborted in a row: {exc}")
        return back

    def _fatal_output(self, exc: BatchAborted) -> BaseException:
        if exc.error is not None:
            return KafkaFailure(exc.error, topic=exc.topic, action=f"agent {self.spec.name}: produce")
        return WorkerError(f"agent {self.spec.name}: {exc}")

    def _record_refused(self, batch: Batch, exc: BatchAborted) -> None:
        msg = self.single
        if msg is not None and len(batch.next_offsets) == 1:
            self._refuse(msg, exc)
            return
        if not batch.next_offsets:  # a timer's output, no input to blame: nothing a replay changes
            raise self._fatal_output(exc)
        self.isolating.update(batch.next_offsets)
        self.metrics.isolated_batch()
        log.warning(
            "a record of the batch was refused; replaying it record by record",
            extra={"agent": self.spec.name, "topic": exc.topic, "error": str(exc)[:300]},
        )

    def _isolated(self, batch: Batch) -> None:
        """A committed batch moves the end of isolation: past its offsets, batches are whole again."""
        if not self.isolating:
            return
        for tp, off in batch.next_offsets.items():
            until = self.isolating.get(tp)
            if until is not None and off >= until:
                del self.isolating[tp]
        for tp in [tp for tp in self.isolating if tp[1] not in self.assignment.stores]:
            del self.isolating[tp]  # revoked: its new owner isolates it if it must

    def _refuse(self, msg: ConsumedRecord, exc: BatchAborted) -> None:
        """Dead-letter the one input whose output the broker refused (reason ``output_refused``);
        if even its dead letter is refused, commit past it and say so: it never blocks the
        partition, and the loop cannot come back to it."""
        topic, p, off = msg.topic(), msg.partition(), msg.offset()
        why = f"output refused: {exc}"
        batch = Batch(self.assignment.stores)
        view = batch.view(p)
        if view is None:
            return  # revoked meanwhile: the new owner meets it
        batch.consumed(topic, p, off)
        try:
            result = self.processor.refuse(view, topic, p, off, msg.key(), msg.value(), read_headers(msg),
                                           DlqReason.OUTPUT_REFUSED, why)  # fmt: skip
            self._emit(result)
            self.metrics.flush()
            self._commit(batch, 1)
            self._rewind({(topic, p): off + 1})
            self.metrics.output_refused(exc.topic or "unknown", "dead_lettered")
            return
        except BatchAborted as refused:
            self.committer.abort()
            again = self.committer.explain(refused)
            if again.kind is not ErrorKind.RECORD:
                self._rewind({(topic, p): off})
                if again.kind is ErrorKind.FATAL:
                    raise self._fatal_output(again) from again
                return
        skip = Batch(self.assignment.stores)
        skip.consumed(topic, p, off)
        self._commit(skip, 0)
        self._rewind({(topic, p): off + 1})
        self.metrics.output_refused(exc.topic or "unknown", "skipped")
        log.error(
            "input skipped: neither its output nor its dead letter could be written",
            extra={"agent": self.spec.name, "topic": topic, "partition": p, "offset": off, "error": why[:300]},
        )

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

    def _consume_error(self, err: KafkaError, topic: str | None) -> None:
        """An error the consumer delivered instead of a record: fatal ones (group or topic READ
        denied) stop the worker; the rest mean the consumer is retrying by itself."""
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if classify(err) is ErrorKind.FATAL:
            raise KafkaFailure(err, topic=topic, action=f"agent {self.spec.name}: consume")
        if err.fatal():
            raise TransientFailure("consumer cannot go on", describe(err, topic=topic))
        self.health.trouble(BROKER_UNREACHABLE if is_unreachable(err) else "consumer error", describe(err, topic=topic))

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self, failed: bool) -> None:
        """Close the session. On a stop: abort an open transaction (exactly-once) or commit what is
        done (at-least-once), then leave the group. After a failure: drop what is queued (the next
        session replays it) and close what answers; every call is under the watchdog."""
        committer, consumer, restorer, assignment = (
            getattr(self, name, None) for name in ("committer", "consumer", "restorer", "assignment")
        )
        try:
            if committer is not None:
                try:
                    if not failed:
                        self._commit_open_work()
                    committer.discard() if failed else committer.close()
                except (KafkaException, TransientFailure, KafkaFailure, BatchAborted) as exc:
                    log.debug("closing the producer failed", extra={"agent": self.spec.name, "error": str(exc)})
            if assignment is not None:
                assignment.detach()  # the consumer's close serves a revoke: nothing is settled there now
                assignment.close()
            if consumer is not None:
                with self.watch.watch("close", 10 + self.options.call_grace_s):
                    consumer.close()
        finally:
            if assignment is not None:
                assignment.close()
            if restorer is not None:
                restorer.close()
            standby = getattr(self, "standby", None)
            if standby is not None:
                with self.watch.watch("close", 10 + self.options.call_grace_s):
                    standby.close()
            if self.executor is not None:
                self.executor.close()
            self.processor.close()
            log.info("agent stopped", extra={"agent": self.spec.name, "batches": self.batches})


def _with_error_cb(config: dict, ours: Callable[[KafkaError], None]) -> dict:
    """``config`` whose error callback also reports to the agent: the settings' own callback (client
    logging and metrics, and ending the poll on an access error) runs first, then ours."""
    theirs = config.get("error_cb")
    if theirs is None:
        return {**config, "error_cb": ours}

    def both(err: KafkaError) -> None:
        theirs(err)
        ours(err)

    return {**config, "error_cb": both}


_CONSUMER_CALLS = frozenset({"poll", "consume", "commit", "close", "list_topics", "get_watermark_offsets"})


def _close_quietly(clients: list) -> None:
    for client in clients:
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001 - an abandoned client: nothing to report to
            log.debug("closing an abandoned client failed", extra={"error": str(exc)})


def _commit_interval_s(options: WorkerOptions, settings: Settings, guarantee: Guarantee) -> float:
    """The commit interval; under exactly-once a transaction stays open for up to the interval plus
    one batch (max_batch_s) and its commit, which must stay inside the transaction timeout (else the
    broker aborts healthy work)."""
    interval = settings.commit_interval_ms / 1000 if options.commit_interval_s is None else options.commit_interval_s
    if interval < 0:
        raise WorkerError(f"commit interval must not be negative, got {interval}s")
    open_for = interval + options.max_batch_s
    if guarantee is EXACTLY_ONCE and open_for * 1000 >= options.transaction_timeout_ms:
        raise WorkerError(
            f"commit_interval_ms {interval * 1000:.0f}: a transaction would stay open up to {open_for:.0f}s, "
            f"past the transaction timeout ({options.transaction_timeout_ms} ms); lower the interval"
        )
    return interval


def _first_offsets(msgs: Iterable[ConsumedRecord]) -> dict[tuple[str, int], int]:
    first: dict[tuple[str, int], int] = {}
    for msg in msgs:
        if msg.error() is None:
            first.setdefault((msg.topic(), msg.partition()), msg.offset())
    return first


__all__ = ["AT_LEAST_ONCE", "EXACTLY_ONCE", "AgentRunner", "WorkerOptions"]
