"""Restoring partition stores from their changelogs, a step at a time, from the worker loop.

Owns the agent's restore consumer and the stores of partitions that are assigned but not yet
ready. The rebalance callback only queues partitions (and the loop pauses them on the agent's
consumer); each loop iteration then calls :meth:`ChangelogRestorer.step`, which opens queued
stores, reads one bounded chunk of their changelogs and hands back the stores that caught up. So
a long restore does not hold the rebalance callback, partitions that are ready keep processing
while others restore, a stop request is seen between steps, and a restore error is an ordinary
exception raised in the loop.

Records are applied in chunks; the store's offset moves only at batch markers. A trailing run of
records with no marker (an at-least-once worker died mid-flush) is undone in the store and rolled
back on the changelog, through the agent's commit protocol, before the partition is processed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processors.kafka_errors import ErrorKind, KafkaFailure, classify
from processors.kafka_types import records
from processors.runtime._commit import Batch, BatchAborted, Committer
from processors.runtime._recovery import TransientFailure
from processors.runtime._watchdog import CallWatch
from processors.runtime.metrics import AgentMetrics
from processors.runtime.state import BatchView, RocksStore
from processors.runtime.state.keys import MARKER
from processors.runtime.topics import watermarks

log = logging.getLogger("choreo.worker")

ChangelogValue = bytes | None


@dataclass(frozen=True)
class RestoreOptions:
    chunk: int = 10_000  # records applied to the store at once between markers
    stall_s: float = 120.0  # no changelog record for this long while behind: give up
    poll_s: float = 0.2  # how long one step waits for changelog records


@dataclass
class _Progress:
    """One partition being restored: where it started and ends, and the run since its last marker."""

    partition: int
    store: RocksStore
    start: int
    high: int
    position: int
    started: float
    chunk: dict[bytes, ChangelogValue] = field(default_factory=dict)
    undo: dict[bytes, ChangelogValue] = field(default_factory=dict)  # values before the unmarked run
    last: int | None = None
    applied: int = 0

    def add(self, key: bytes, value: ChangelogValue, offset: int) -> None:
        self.last = offset
        self.position = offset + 1
        if key not in self.undo:
            self.undo[key] = self.chunk[key] if key in self.chunk else self.store.get(key)
        self.chunk[key] = value

    def mark(self, offset: int) -> int:
        """A batch marker: everything up to it is a complete batch. Returns the records applied."""
        self.last = offset
        self.position = offset + 1
        applied = len(self.chunk)
        self.store.apply(self.chunk, offset)
        self.applied += applied
        self.chunk = {}
        self.undo = {}
        return applied

    def spill(self, limit: int) -> int:
        """Apply a long unmarked run in pieces (its undo values are kept); returns records applied."""
        if len(self.chunk) < limit:
            return 0
        applied = len(self.chunk)
        self.store.apply(self.chunk)
        self.applied += applied
        self.chunk = {}
        return applied


class ChangelogRestorer:
    """Brings the stores of newly assigned partitions up to date with their changelog."""

    def __init__(
        self,
        consumer: Consumer,
        changelog: str,
        open_store: Callable[[int], RocksStore],
        committer: Committer,
        metrics: AgentMetrics,
        agent: str,
        options: RestoreOptions | None = None,
        watch: CallWatch | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.watch = watch or CallWatch()
        self.grace_s = grace_s
        self.consumer = consumer
        self.changelog = changelog
        self.open_store = open_store
        self.committer = committer
        self.metrics = metrics
        self.agent = agent
        self.options = options or RestoreOptions()
        self.queued: list[int] = []
        self.restoring: dict[int, _Progress] = {}
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------------ from the rebalance callback
    def queue(self, partitions: Iterable[int]) -> None:
        """Partitions just assigned: restore them on the next steps (bookkeeping only)."""
        for p in sorted(set(partitions)):
            if p not in self.queued and p not in self.restoring:
                self.queued.append(p)

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions revoked or lost before they were ready: forget them, close their stores."""
        gone = set(partitions)
        self.queued = [p for p in self.queued if p not in gone]
        dropped = [self.restoring.pop(p) for p in sorted(gone & set(self.restoring))]
        for progress in dropped:
            progress.store.close()
            self.metrics.restore_remaining(progress.partition, 0)
        if dropped:
            self._assign()

    # ------------------------------------------------------------------ from the loop
    @property
    def busy(self) -> bool:
        return bool(self.queued or self.restoring)

    def step(self) -> dict[int, RocksStore]:
        """Start queued partitions, apply one chunk of changelog records; returns the stores that
        are now up to date (their partitions may be processed)."""
        ready: dict[int, RocksStore] = {}
        try:
            started = False
            while self.queued:
                p = self.queued[0]
                store, progress = self._start(p)
                self.queued.pop(0)
                if progress is None:
                    ready[p] = store
                else:
                    self.restoring[p] = progress
                    started = True
            if started:
                self._assign()
            if self.restoring:
                ready.update(self._read_chunk())
        except BaseException:
            for store in ready.values():  # not handed over: nobody else would close them
                store.close()
            raise
        return ready

    def close(self) -> None:
        self.drop(list(self.restoring))
        with self.watch.watch("close", 10 + self.grace_s):
            self.consumer.close()

    # ------------------------------------------------------------------ internals
    def _start(self, p: int) -> tuple[RocksStore, _Progress | None]:
        """Open the store of ``p`` and decide where its restore starts (no progress: up to date).
        A failure (the broker away while the watermarks are read) closes the store again: the
        session that replaces this one opens it anew (RocksDB locks it while it is open)."""
        store = self.open_store(p)
        try:
            return self._position(p, store)
        except BaseException:
            store.close()
            raise

    def _position(self, p: int, store: RocksStore) -> tuple[RocksStore, _Progress | None]:
        if store.wiped_reason:
            log.info("local store wiped", extra={"agent": self.agent, "partition": p, "reason": store.wiped_reason})
        with self.watch.watch("get_watermark_offsets", 30 + self.grace_s):
            low, high = watermarks(self.consumer, self.changelog, p)
        stored = store.changelog_offset
        if stored is not None and not (low <= stored + 1 <= high):
            log.warning(
                "store does not match its changelog, rebuilding it",
                extra={"agent": self.agent, "partition": p, "stored_offset": stored, "low": low, "high": high},
            )
            store.wipe()
            stored = None
        start = low if stored is None else stored + 1
        if start >= high:
            self.metrics.restore_remaining(p, 0)
            return store, None
        store.set_restoring(True)
        self._last_progress = time.monotonic()
        return store, _Progress(p, store, start, high, start, time.monotonic())

    def _assign(self) -> None:
        """Point the restore consumer at every partition being restored, each at its position."""
        positions = [
            TopicPartition(self.changelog, p, progress.position if progress.position > 0 else OFFSET_BEGINNING)
            for p, progress in sorted(self.restoring.items())
        ]
        if positions:
            self.consumer.assign(positions)
        else:
            self.consumer.unassign()

    def _read_chunk(self) -> dict[int, RocksStore]:
        done: list[int] = []
        with self.watch.watch("consume", self.options.poll_s + self.grace_s):
            msgs = records(self.consumer.consume(1000, self.options.poll_s))
        for msg in msgs:
            p = msg.partition()
            progress = self.restoring.get(p)
            if progress is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.append(p)
                elif classify(err) is ErrorKind.FATAL:
                    raise KafkaFailure(err, topic=self.changelog, action=f"restore of partition {p}")
                elif err.fatal():
                    raise TransientFailure("restore consumer cannot go on", str(err))
                continue  # the broker is away or the partition moving: the client retries
            key = msg.key()
            if key is None:  # never the engine's; a compacted topic refuses keyless records anyway
                continue
            if key == MARKER:
                self.metrics.restored(progress.mark(msg.offset()))
            else:
                progress.add(key, msg.value(), msg.offset())
        if msgs:
            self._last_progress = time.monotonic()
        self._report_progress()
        ready: dict[int, RocksStore] = {}
        try:
            for p in dict.fromkeys(done):
                if p in self.restoring:
                    ready[p] = self._finish(self.restoring[p])
                    del self.restoring[p]  # only once finished: a failed finish is closed by drop
        except BaseException:
            for store in ready.values():
                store.close()
            raise
        if ready:
            self._assign()
        self._check_stalled()
        return ready

    def _report_progress(self) -> None:
        for p, progress in self.restoring.items():
            self.metrics.restored(progress.spill(self.options.chunk))
            if progress.last is not None:
                self.metrics.restore_remaining(p, max(0, progress.high - progress.last - 1))

    def _check_stalled(self) -> None:
        if not self.restoring or time.monotonic() - self._last_progress <= self.options.stall_s:
            return
        p, progress = next(iter(self.restoring.items()))
        raise TransientFailure("restore stalled", f"{self.changelog}[{p}] at offset {progress.last}")

    def _finish(self, progress: _Progress) -> RocksStore:
        p, store = progress.partition, progress.store
        if progress.undo:
            # Undo what was applied of the unmarked run, then make the changelog say the same.
            store.apply(progress.undo)
            self._roll_back_changelog(p, progress.undo, store)
            log.warning(
                "rolled back an incomplete changelog batch",
                extra={"agent": self.agent, "partition": p, "records": len(progress.undo)},
            )
        store.set_restoring(False)
        self.metrics.restore_remaining(p, 0)
        log.info(
            "store restored",
            extra={
                "agent": self.agent,
                "partition": p,
                "from_offset": progress.start,
                "to_offset": progress.last,
                "records": progress.applied,
                "seconds": round(time.monotonic() - progress.started, 3),
            },
        )
        return store

    def _roll_back_changelog(self, p: int, undo: dict[bytes, ChangelogValue], store: RocksStore) -> None:
        """Write the undo values as a batch of their own, so the changelog ends where the store
        does; the store records the offset of that batch's marker."""
        view = BatchView(store)
        view.writes = dict(undo)
        try:
            self.committer.commit(Batch(stores={p: store}, views={p: view}))
        except BatchAborted as exc:
            if exc.kind is ErrorKind.TRANSIENT:
                raise TransientFailure("cannot roll back changelog", f"{self.changelog}[{p}]: {exc}") from exc
            if exc.error is not None:
                raise KafkaFailure(exc.error, topic=self.changelog, action="roll back") from exc
            raise
