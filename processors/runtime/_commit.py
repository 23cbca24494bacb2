"""The commit protocol: how a batch's records, store writes and input offsets become durable.

Owns the agent's producer for everything it sends (outputs, dead letters, audit records,
changelog records and their batch markers) and the two guarantees, behind one interface:
:meth:`Committer.send_records` while the batch runs, :meth:`Committer.commit` at its end. The
worker loop never asks which guarantee it runs.

A batch is the work since the last commit: one poll's records, or several when a commit interval
(``commit_interval_ms``) keeps it open across polls; the worker decides when to commit.

* :class:`ExactlyOnceCommitter`: one Kafka transaction per batch — outputs, DLQ and audit
  records, the batch's changelog records and the input offsets (``send_offsets_to_transaction``
  with the consumer's group metadata, so a zombie from an older generation is fenced, KIP-447).
  The transaction begins in one place (:meth:`ExactlyOnceCommitter._ensure_transaction`), before
  the first record of a batch. The stores are written only after the commit; an abortable error
  aborts and raises :class:`BatchAborted`, and the loop drops the overlay and rewinds.
* :class:`AtLeastOnceCommitter`: outputs, DLQ and audit records are flushed first, then the
  changelog, then the stores are written and the offsets committed. A crash anywhere replays the
  batch; inputs whose seen key reached the changelog are dropped as duplicates, and those whose
  outputs had been flushed have their seen key written only after, so nothing is lost.

:meth:`Committer.commit` returns the changelog offset each partition's batch marker reached, and
the stores record it, so a restore knows where the store stands.
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from processors.kafka_errors import ErrorKind, KafkaFailure, classify_produce, describe, is_fenced
from processors.runtime._clients import AgentClients
from processors.runtime._recovery import TransientFailure, transient_from
from processors.runtime._watchdog import CallWatch
from processors.runtime.state import BatchView, KeyValueStore
from processors.runtime.state.keys import MARKER

log = logging.getLogger("choreo.worker")

InputPartition = tuple[str, int]
ChangelogOffsets = dict[int, int]


class Guarantee(StrEnum):
    """The processing guarantee of a worker (``processing_guarantee`` in settings)."""

    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


class BatchAborted(Exception):
    """The batch could not be made durable: drop it and replay from its first offsets.

    ``kind`` says what a replay can expect: ``TRANSIENT`` (try again), ``RECORD`` (one record of
    the batch was refused: replay record by record to find its input) or ``FATAL`` (no input can
    fix it: write denied, unknown topic); ``topic`` names the topic written when that is known."""

    def __init__(
        self, message: str, kind: ErrorKind = ErrorKind.TRANSIENT, topic: str | None = None, error: Any = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.topic = topic
        self.error = error


DeliveryError = tuple[KafkaError, str | None]  # the error and the topic of the record
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def _aborted_by(errors: list[DeliveryError], fallback: str) -> BatchAborted:
    """The abort a failed delivery calls for: the gravest of the failures reported, its topic named."""
    graver = sorted(errors, key=lambda e: (classify_produce(e[0]) is not ErrorKind.FATAL,
                                            classify_produce(e[0]) is not ErrorKind.RECORD))  # fmt: skip
    err, topic = graver[0]
    kind = classify_produce(err)
    return BatchAborted(
        f"{len(errors)} record(s) failed delivery{'' if fallback == '' else ' (' + fallback + ')'}, first: "
        + describe(err, topic=topic, action="produce"),
        kind,
        topic,
        err,
    )


def _produce_failed(exc: KafkaException, topic: str) -> BatchAborted:
    """A produce call that raised: the record too large for the client, or the producer in a state
    (a transaction that must abort) where it takes nothing more."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if err is None:
        return BatchAborted(f"produce to {topic}: {exc}", ErrorKind.TRANSIENT, topic)
    return BatchAborted(describe(err, topic=topic, action="produce"), classify_produce(err), topic, err)


@dataclass
class Batch:
    """The open work of one agent, up to its next commit: the per-partition overlays its records
    wrote into, where each input partition started (to rewind on abort) and the offsets to commit
    (last handled + 1). One commit covers one batch; with a commit interval a batch spans several
    polls (the overlays carry over, so a later poll reads what an earlier one wrote)."""

    stores: Mapping[int, KeyValueStore]
    views: dict[int, BatchView] = field(default_factory=dict)
    first_offsets: dict[InputPartition, int] = field(default_factory=dict)
    next_offsets: dict[InputPartition, int] = field(default_factory=dict)
    handled: int = 0  # inputs handled into it (the commit's size bound counts these)
    opened: float = field(default_factory=time.monotonic)  # when its first work came (the interval's start)

    @property
    def has_work(self) -> bool:
        """Inputs handled or state written: something a commit must cover."""
        return bool(self.next_offsets) or self.dirty

    @property
    def partitions(self) -> set[int]:
        """The partitions this batch holds work of."""
        return set(self.views) | {p for _, p in self.first_offsets}

    def view(self, partition: int) -> BatchView | None:
        """The overlay of ``partition``, created on first use; None when the partition has no open
        store (revoked, or still restoring)."""
        view = self.views.get(partition)
        if view is None:
            store = self.stores.get(partition)
            if store is None:
                return None
            view = self.views[partition] = BatchView(store)
        return view

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        self.first_offsets.setdefault((topic, partition), offset)
        self.next_offsets[(topic, partition)] = offset + 1

    @property
    def dirty(self) -> bool:
        return any(view.writes for view in self.views.values())

    def write_stores(self, reached: ChangelogOffsets) -> None:
        """Apply the overlays to their stores in one write each, with the changelog offset their
        marker reached. Called by the committer once Kafka has accepted the batch."""
        for partition, view in self.views.items():
            if view.writes:
                store = self.stores.get(partition)
                if store is not None:
                    store.apply(view.writes, reached.get(partition), view.reads)


@dataclass(frozen=True)
class CommitSettings:
    """What the commit protocol needs to know of its agent."""

    agent: str
    changelog: str
    marker: bytes  # the value of the batch markers in the changelog: who wrote the batch
    timeout_s: float  # the client's own timeout of one blocking call
    grace_s: float = 10.0  # past timeout_s + grace_s the watchdog gives the call up
    transaction_timeout_s: float = 20.0


class Committer(ABC):
    """Sends an agent's records and makes its batches durable under one guarantee."""

    guarantee: Guarantee

    def __init__(
        self,
        producer: Producer,
        settings: CommitSettings,
        delivery_errors: list[DeliveryError] | None = None,
        watch: CallWatch | None = None,
    ) -> None:
        self.producer = producer
        self.settings = settings
        # failed deliveries reported since the last commit (the producer's callback appends)
        self.delivery_errors: list[DeliveryError] = [] if delivery_errors is None else delivery_errors
        self.watch = watch or CallWatch()
        # Called first thing in :meth:`revoke` (inside the consumer's revoke callback) with the
        # revoked partitions: the loop commits its open work there (a commit interval keeps work
        # open across polls), before the partitions' stores close and their new owner reads the
        # committed offsets.
        self.before_revoke: Callable[[set[int]], None] | None = None

    @property
    def deadline_s(self) -> float:
        """How long the engine lets one blocking client call take: the client's own timeout plus a
        grace, past which the watchdog gives the agent up (see :mod:`._watchdog`)."""
        return self.settings.timeout_s + self.settings.grace_s

    # ------------------------------------------------------------------ sending
    def send_records(self, records: Iterable[Any]) -> None:
        """Produce the records of one handled input (``OutRecord``: topic, key, value, headers,
        partition). Runs two or more times per input: the plain produce call goes straight to the
        client, the retrying path only when its queue is full."""
        self._ensure_transaction()
        produce = self.producer.produce
        for record in records:
            try:
                if record.partition is None:
                    try:
                        produce(record.topic, record.value, record.key, headers=record.headers)
                    except BufferError:
                        self._produce(record.topic, record.key, record.value, record.headers)
                else:
                    self._produce(record.topic, record.key, record.value, record.headers, record.partition)
            except KafkaException as exc:
                raise _produce_failed(exc, record.topic) from exc

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any = None,
        partition: int | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Produce one record, serving delivery reports while the client's queue is full."""
        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if on_delivery is not None:
            extra["on_delivery"] = on_delivery
        deadline = time.monotonic() + self.settings.timeout_s
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, **extra)
                return
            except BufferError:
                if time.monotonic() > deadline:  # nothing delivered for that long: the broker is away
                    full = f"producer queue full for {self.settings.timeout_s}s"
                    raise TransientFailure("broker unreachable", full) from None
                with self.watch.watch("poll", self.deadline_s):
                    self.producer.poll(0.05)

    def _send_changelog(self, views: Mapping[int, BatchView]) -> ChangelogOffsets:
        """Produce each dirty partition's writes and a closing batch marker to the changelog. The
        returned dict fills in with the offset each marker reached as its delivery is reported,
        i.e. once the records were flushed or the transaction committed."""
        reached: ChangelogOffsets = {}
        errors = self.delivery_errors
        changelog = self.settings.changelog
        for partition, view in views.items():
            if not view.writes:
                continue
            self._ensure_transaction()
            try:
                for key, value in view.writes.items():
                    try:
                        self.producer.produce(changelog, value, key, partition=partition)
                    except BufferError:
                        self._produce(changelog, key, value, None, partition)

                def marker_delivered(err: Any, msg: Any, partition: int = partition) -> None:
                    if err is not None:
                        errors.append((err, changelog))
                    else:
                        reached[partition] = msg.offset()

                self._produce(changelog, MARKER, self.settings.marker, None, partition, on_delivery=marker_delivered)
            except KafkaException as exc:
                raise _produce_failed(exc, changelog) from exc
        return reached

    # ------------------------------------------------------------------ protocol
    @abstractmethod
    def _ensure_transaction(self) -> None:
        """Begin the batch's transaction if the guarantee has one and it is not begun."""

    @property
    @abstractmethod
    def pending(self) -> bool:
        """Records were sent that no commit covers yet (a batch with no input still commits)."""

    @abstractmethod
    def commit(self, batch: Batch) -> ChangelogOffsets:
        """Make ``batch`` durable, write its overlays to the stores (:meth:`Batch.write_stores`)
        and return the changelog offsets its markers reached. Raises :class:`BatchAborted` when
        the batch must be replayed, :class:`WorkerError` when the agent cannot go on."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was sent since the last commit, where the guarantee can."""

    @abstractmethod
    def revoke(self, partitions: set[int]) -> None:
        """Partitions are about to go to another worker: settle what is theirs."""

    def _settle_open_work(self, partitions: set[int]) -> None:
        if self.before_revoke is not None:
            self.before_revoke(partitions)

    def close(self) -> None:
        """The agent stops: abort an open transaction or commit what is done, flush the producer."""
        with self.watch.watch("flush", 5 + self.settings.grace_s):
            self.producer.flush(5)

    def explain(self, aborted: BatchAborted) -> BatchAborted:
        """Why the batch really failed: a produce call or a commit only says the producer is in an
        error state ("Erroneous state"); the delivery reports say which record, on which topic,
        and why. Serves them, forgets them, and returns the graver explanation."""
        with contextlib.suppress(KafkaException):
            self.producer.poll(0)
        # records purged by our own abort say nothing about why the batch failed
        errors = [e for e in self.delivery_errors if e[0].code() not in _PURGED]
        self.delivery_errors.clear()
        if not errors:
            return aborted
        reported = _aborted_by(errors, "")
        if reported.kind is ErrorKind.TRANSIENT and aborted.kind is not ErrorKind.TRANSIENT:
            return aborted
        return reported

    def discard(self) -> None:
        """The session is replaced after a failure: drop what is queued (a replay sends it again)."""
        try:
            self.producer.purge()
            with self.watch.watch("flush", 1 + self.settings.grace_s):
                self.producer.flush(1)
        except KafkaException:
            pass


class ExactlyOnceCommitter(Committer):
    """One transaction per batch, input offsets inside it (KIP-447)."""

    guarantee = Guarantee.EXACTLY_ONCE

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        settings: CommitSettings,
        delivery_errors: list[DeliveryError] | None = None,
        watch: CallWatch | None = None,
    ) -> None:
        super().__init__(producer, settings, delivery_errors, watch)
        self.consumer = consumer
        self.in_transaction = False
        self.began = 0.0  # when the open transaction began (monotonic)

    def initialize(self) -> None:
        """Register the transactional id, fencing older instances of it (also a stuck or dead
        session of this worker: the same id is reused on purpose)."""
        timeout = self.settings.timeout_s
        self._call("init_transactions", lambda: self.producer.init_transactions(timeout))

    def _ensure_transaction(self) -> None:
        if not self.in_transaction:
            self._call("begin_transaction", self.producer.begin_transaction)
            self.in_transaction = True
            self.began = time.monotonic()

    @property
    def pending(self) -> bool:
        return self.in_transaction

    def commit(self, batch: Batch) -> ChangelogOffsets:
        producer, timeout = self.producer, self.settings.timeout_s
        try:
            self._ensure_transaction()
            reached = self._send_changelog(batch.views)
            if batch.next_offsets:
                offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()]
                metadata = self.consumer.consumer_group_metadata()
                self._call(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(offsets, metadata, timeout),
                )
            self._call("commit_transaction", lambda: producer.commit_transaction(timeout))
            self.in_transaction = False
        except BatchAborted:
            self.abort()
            raise
        self.delivery_errors.clear()
        producer.poll(0)  # serve the markers' delivery reports: the changelog offsets reached
        batch.write_stores(reached)
        return reached

    def abort(self) -> None:
        """Abort the open transaction. A call librdkafka asks to retry (timed out: "retry call to
        resume") is retried up to the timeout; a transaction that still cannot be aborted leaves a
        producer nobody can use: :class:`TransientFailure` replaces the session (the new producer's
        ``init_transactions`` aborts the transaction on the broker)."""
        if not self.in_transaction:
            return
        timeout = self.settings.timeout_s
        try:
            self._call("abort_transaction", lambda: self.producer.abort_transaction(timeout), aborting=True)
        except BatchAborted as exc:
            raise TransientFailure("cannot abort transaction", str(exc)) from exc
        finally:
            self.in_transaction = False
            self.producer.poll(0)

    def revoke(self, partitions: set[int]) -> None:
        """The loop commits its open transaction (its input offsets are inside it)."""
        self._settle_open_work(partitions)

    def close(self) -> None:
        try:
            self.abort()
        except (TransientFailure, KafkaFailure):
            pass
        finally:
            super().close()

    def _call(self, name: str, call: Callable[[], Any], aborting: bool = False) -> None:
        """Run a transactional call under the watchdog: retry what the client says is retriable
        (up to the timeout), turn what needs an abort into :class:`BatchAborted`, what needs a new
        producer into :class:`TransientFailure`, and what no retry fixes into :class:`KafkaFailure`."""
        deadline = time.monotonic() + self.settings.timeout_s
        while True:
            try:
                with self.watch.watch(name, self.deadline_s):
                    call()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if is_fenced(err):
                    raise self._fenced(err, name) from exc
                if classify_produce(err) is ErrorKind.FATAL:  # e.g. transactional id or group denied
                    raise KafkaFailure(err, action=name) from exc
                if err.fatal():
                    raise transient_from(exc, name) from exc
                if err.txn_requires_abort() and not aborting:
                    raise BatchAborted(describe(err, action=name), ErrorKind.TRANSIENT, None, err) from exc
                if err.retriable() and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                failure = transient_from(exc, name)
                if isinstance(failure, KafkaFailure):
                    raise failure from exc
                raise BatchAborted(describe(err, action=name), ErrorKind.TRANSIENT, None, err) from exc

    def _fenced(self, err: KafkaError, action: str) -> BaseException:
        """Fenced: by a newer instance of this transactional id (fatal: two workers share an id),
        or by the broker aborting a transaction that outlived the transaction timeout while the
        broker was away or a call stuck (transient: a new producer takes over)."""
        if self.in_transaction and time.monotonic() - self.began >= self.settings.transaction_timeout_s:
            return TransientFailure("transaction timed out", describe(err, action=action))
        return KafkaFailure(err, action=f"{action} (another worker runs with this worker id?)")


class AtLeastOnceCommitter(Committer):
    """Flush outputs, then the changelog, then write the stores and commit offsets."""

    guarantee = Guarantee.AT_LEAST_ONCE

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        settings: CommitSettings,
        delivery_errors: list[DeliveryError],
        watch: CallWatch | None = None,
    ) -> None:
        super().__init__(producer, settings, delivery_errors, watch)
        self.consumer = consumer
        self.committed: dict[InputPartition, int] = {}  # offsets handed to an async commit

    def _ensure_transaction(self) -> None:
        return None

    @property
    def pending(self) -> bool:
        return False

    def commit(self, batch: Batch) -> ChangelogOffsets:
        self._flush()  # outputs, dead letters, audit: durable before the seen keys are
        reached: ChangelogOffsets = {}
        if batch.dirty:
            reached = self._send_changelog(batch.views)
            self._flush()
        batch.write_stores(reached)
        if batch.next_offsets:
            self._commit_offsets(batch.next_offsets)
        return reached

    def _commit_offsets(self, next_offsets: Mapping[InputPartition, int]) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.debug(
                "offset commit failed; the batch will be replayed and deduplicated",
                extra={"agent": self.settings.agent, "error": str(exc)},
            )
        self.committed.update(next_offsets)

    def _flush(self) -> None:
        timeout = self.settings.timeout_s
        with self.watch.watch("flush", self.deadline_s):
            remaining = self.producer.flush(timeout)
        if self.delivery_errors:
            errors = list(self.delivery_errors)
            self.delivery_errors.clear()
            raise _aborted_by(errors, "")
        if remaining:
            raise BatchAborted(f"{remaining} record(s) not delivered within {timeout}s", ErrorKind.TRANSIENT)

    def abort(self) -> None:
        """Sent records cannot be taken back; the replay's dedupe makes them harmless."""

    def revoke(self, partitions: set[int]) -> None:
        self._settle_open_work(partitions)  # the loop's open work: flushed, offsets handed to commit
        self._commit_sync(partitions)

    def close(self) -> None:
        try:
            self._commit_sync(None)
        finally:
            super().close()

    def _commit_sync(self, partitions: set[int] | None) -> None:
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in self.committed.items() if partitions is None or p in partitions
        ]
        if not offsets:
            return
        try:
            with self.watch.watch("commit", self.deadline_s):
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit on revoke failed", extra={"agent": self.settings.agent, "error": str(exc)})
        for tp in offsets:
            self.committed.pop((tp.topic, tp.partition), None)


def _both(first: Callable[[KafkaError], None], then: Callable[[KafkaError], None]) -> Callable[[KafkaError], None]:
    def both(err: KafkaError) -> None:
        first(err)
        then(err)

    return both


def open_committer(
    guarantee: Guarantee,
    clients: AgentClients,
    consumer: Consumer,
    settings: CommitSettings,
    transaction_timeout_ms: int,
    watch: CallWatch | None = None,
    error_cb: Callable[[KafkaError], None] | None = None,
) -> Committer:
    """The agent's producer and the commit protocol of ``guarantee`` around it, ready to send
    (under exactly-once the transactional id is registered, fencing older instances of it).
    Every failed delivery is recorded with its topic: at-least-once must see them before it
    commits offsets, and under exactly-once they say which record failed the transaction."""
    errors: list[DeliveryError] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append((err, msg.topic() if msg is not None else None))

    exactly_once = guarantee is Guarantee.EXACTLY_ONCE
    config = clients.producer(exactly_once, transaction_timeout_ms, on_delivery)
    if error_cb is not None:
        theirs = config.get("error_cb")  # the settings' client logging runs first
        config["error_cb"] = error_cb if theirs is None else _both(theirs, error_cb)
    producer = Producer(config)
    if exactly_once:
        committer = ExactlyOnceCommitter(producer, consumer, settings, errors, watch)
        committer.initialize()
        return committer
    return AtLeastOnceCommitter(producer, consumer, settings, errors, watch)
