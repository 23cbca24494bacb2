"""Restoring partition stores from their changelogs, a step at a time, from the worker loop.

Owns the agent's restore consumer and the stores of partitions that are assigned but not yet
ready. The rebalance callback only queues partitions (and the loop pauses them on the agent's
consumer); each loop iteration then calls :meth:`ChangelogRestorer.step`, which opens queued
stores, reads one bounded chunk of their changelogs and hands back the stores that caught up. So
a long restore does not hold the rebalance callback, partitions that are ready keep processing
while others restore, a stop request is seen between steps, and a restore error is an ordinary
exception raised in the loop.

Opening is cheap when there is nothing to restore: a store whose changelog offset is the end of
its changelog partition (or both empty) is handed back at once, with no read at all; one whose
changelog ends with what read_committed never delivers (the transaction marker after an
exactly-once store's last batch) is read to the end, which the restore consumer's short fetch
wait and a poll that returns at the first event keep to milliseconds. Each open is counted by
its outcome (``up_to_date``, ``caught_up``, ``restored``, ``rebuilt``) with its phases timed (store
open, watermark query, changelog read), so a slow open says where its time went.

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
from processors.runtime.metrics import AgentMetrics, restore_finished, store_opened
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
    phases: dict[str, float] = field(default_factory=dict)  # seconds: open, watermarks (before the read)
    rebuilt: bool = False  # the local store was wiped first
    chunk: dict[bytes, ChangelogValue] = field(default_factory=dict)
    undo: dict[bytes, ChangelogValue] = field(default_factory=dict)  # values before the unmarked run
    last: int | None = None
    applied: int = 0  # changelog records of complete batches applied (what the metric counts)
    unmarked: int = 0  # records read since the last marker (applied only once a marker closes them)

    def add(self, key: bytes, value: ChangelogValue, offset: int) -> None:
        self.last = offset
        self.position = offset + 1
        self.unmarked += 1
        if key not in self.undo:
            self.undo[key] = self.chunk[key] if key in self.chunk else self.store.get(key)
        self.chunk[key] = value

    def mark(self, offset: int) -> int:
        """A batch marker: everything up to it is a complete batch. Returns its changelog records
        (every record read, also one that a later record of the same key overwrote)."""
        self.last = offset
        self.position = offset + 1
        self.store.apply(self.chunk, offset)
        applied, self.unmarked = self.unmarked, 0
        self.applied += applied
        self.chunk = {}
        self.undo = {}
        return applied

    def spill(self, limit: int) -> None:
        """Apply a long unmarked run in pieces (its undo values are kept); it counts as restored
        once its marker comes (a run that never gets one is undone)."""
        if len(self.chunk) >= limit:
            self.store.apply(self.chunk)
            self.chunk = {}

    def remaining(self) -> int:
        """Changelog offsets left up to the end seen when the restore started."""
        return max(0, self.high - self.position)


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
            log.info(
                "restore dropped",
                extra={"agent": self.agent, "partition": progress.partition, "records": progress.applied},
            )
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
        t0 = time.monotonic()
        store = self.open_store(p)
        opened = time.monotonic()
        try:
            return self._position(p, store, t0, {"open": opened - t0})
        except BaseException:
            store.close()
            raise

    def _position(
        self, p: int, store: RocksStore, t0: float, phases: dict[str, float]
    ) -> tuple[RocksStore, _Progress | None]:
        rebuilt = bool(store.wiped_reason)
        if store.wiped_reason:
            log.info("local store wiped", extra={"agent": self.agent, "partition": p, "reason": store.wiped_reason})
        t1 = time.monotonic()
        with self.watch.watch("get_watermark_offsets", 30 + self.grace_s):
            low, high = watermarks(self.consumer, self.changelog, p)
        phases["watermarks"] = time.monotonic() - t1
        stored = store.changelog_offset
        if stored is not None and not (low <= stored + 1 <= high):
            log.warning(
                "store does not match its changelog, rebuilding it",
                extra={"agent": self.agent, "partition": p, "stored_offset": stored, "low": low, "high": high},
            )
            store.wipe()
            stored = None
            rebuilt = True
        start = low if stored is None else stored + 1
        if start >= high:
            self.metrics.restore_remaining(p, 0)
            self._opened(p, "rebuilt" if rebuilt else "up_to_date", 0, time.monotonic() - t0, phases)
            return store, None
        store.set_restoring(True)
        self._last_progress = time.monotonic()
        self.metrics.restore_remaining(p, high - start)
        return store, _Progress(p, store, start, high, start, t0, phases, rebuilt)

    def _opened(self, p: int, outcome: str, records: int, seconds: float, phases: dict[str, float]) -> None:
        """Count one store open by its outcome and say where its time went."""
        store_opened(self.agent, outcome, seconds)
        log.info(
            "store opened",
            extra={
                "agent": self.agent,
                "partition": p,
                "outcome": outcome,
                "records": records,
                "ms": round(seconds * 1000, 1),
                "phases_ms": {k: round(v * 1000, 1) for k, v in phases.items()},
            },
        )

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
            msgs = self._consume()
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

    def _consume(self) -> list:
        """Up to 1000 changelog records or end-of-partition events: waits up to ``poll_s`` for the
        first only (``consume(n, timeout)`` waits its whole timeout unless ``n`` arrive, which
        cost every catching-up open a full poll), then takes what is already fetched."""
        first = self.consumer.poll(self.options.poll_s)
        if first is None:
            return []
        return records([first, *self.consumer.consume(999, 0)])

    def _report_progress(self) -> None:
        for p, progress in self.restoring.items():
            progress.spill(self.options.chunk)
            self.metrics.restore_remaining(p, progress.remaining())

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
        seconds = time.monotonic() - progress.started
        read_s = seconds - sum(progress.phases.values())
        restore_finished(self.agent, progress.applied, seconds)
        outcome = _outcome(progress)
        self._opened(p, outcome, progress.applied, seconds, {**progress.phases, "read": read_s})
        log.info(
            "store restored",
            extra={
                "agent": self.agent,
                "partition": p,
                "from_offset": progress.start,
                "to_offset": progress.last,
                "records": progress.applied,
                "seconds": round(seconds, 3),
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


def _outcome(progress: _Progress) -> str:
    """How an open that read the changelog ended (the label of ``choreo_store_opens_total``)."""
    if progress.rebuilt:
        return "rebuilt"
    return "restored" if progress.applied or progress.undo else "caught_up"
