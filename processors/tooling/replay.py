"""Backfills and replays: copy a topic range or an exported file into a topic, throttled, in
batches, checkpointed, checksummed.

Idempotent by construction: records keep their key, value bytes and headers (so their original
idempotency keys), and agents drop what they already handled; a batch whose delivery was not
confirmed is not checkpointed, so `--resume` re-sends it rather than skipping it. Records get a new
Kafka timestamp (the event time stays in `ce_time`), so a replayed flow runs its timeouts from now.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, Message, Producer

from processors.kafka_errors import stop_on_access_error
from processors.kafka_types import coordinates, produce_headers, unreadable
from processors.kafka_types import headers as read_headers
from processors.settings import Settings
from processors.tooling.checkpoint import Checkpoint, default_checkpoint_path
from processors.tooling.checksums import ALGORITHM, StreamDigest
from processors.tooling.kafka_io import (
    Headers,
    PartitionRange,
    ProgressReporter,
    RateLimiter,
    ToolingError,
    plan_ranges,
    read_ranges,
    reader_config,
    topic_partitions,
)

FILE_PARTITION = -1
MAX_ERRORS = 20  # errors kept on a result (and printed); the counts say how many there were


@dataclass(frozen=True)
class SourceRecord:
    """One record to replay: `position` is the source offset (or the record index in a file)."""

    partition: int
    position: int
    key: bytes | None
    value: bytes | None
    headers: Headers


class ReplaySource(Protocol):
    def identity(self) -> dict[str, Any]: ...
    def label(self) -> str: ...
    def plan(self) -> dict[int, tuple[int, int]]: ...
    def records(self, ranges: dict[int, tuple[int, int]], stop: Callable[[], bool]) -> Iterator[SourceRecord]: ...
    def close(self) -> None: ...


class TopicSource:
    """A range of a topic: all partitions or one, bounded by times or offsets, snapshotted at plan."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        partition: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        from_offset: int | None = None,
        to_offset: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self._bounds = dict(since_ms=since_ms, until_ms=until_ms, from_offset=from_offset, to_offset=to_offset)
        self._settings = settings
        self._reader: Consumer | None = None

    @property
    def _consumer(self) -> Consumer:
        """Created on first use, so a source built for a replay that is refused holds no client."""
        if self._reader is None:
            self._reader = Consumer(reader_config(self._settings))
        return self._reader

    def identity(self) -> dict[str, Any]:
        return {"kind": "topic", "topic": self.topic, "partition": self.partition}

    def label(self) -> str:
        return self.topic if self.partition is None else f"{self.topic}[{self.partition}]"

    def plan(self) -> dict[int, tuple[int, int]]:
        ranges = plan_ranges(self._consumer, self.topic, self.partition, **self._bounds)
        return {r.partition: (r.start, r.end) for r in ranges}

    def records(self, ranges: dict[int, tuple[int, int]], stop: Callable[[], bool]) -> Iterator[SourceRecord]:
        planned = [PartitionRange(self.topic, p, start, end) for p, (start, end) in sorted(ranges.items())]
        for msg in read_ranges(self._consumer, planned, stop=stop):
            _, partition, offset = coordinates(msg)
            yield SourceRecord(partition, offset, msg.key(), msg.value(), read_headers(msg))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ReplayResult:
    """What a replay read and wrote; `match` is the check an operator trusts."""

    source: dict[str, Any]
    destination: str
    dry_run: bool
    read: StreamDigest
    written: StreamDigest
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    not_copied: int = 0  # read, but not produced: headers the client cannot read (so the sums differ)
    interrupted: bool = False
    completed: bool = False
    resumed: bool = False
    checkpoint: str | None = None
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    next: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def match(self) -> bool:
        return self.read.count == self.written.count and self.read.digest == self.written.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "completed": self.completed,
            "interrupted": self.interrupted,
            "resumed": self.resumed,
            "checkpoint": self.checkpoint,
            "read": {"count": self.read.count, "digest": self.read.digest},
            "written": None if self.dry_run else {"count": self.written.count, "digest": self.written.digest},
            "match": None if self.dry_run else self.match,
            "failed": self.failed,
            "not_copied": self.not_copied,
            "errors": self.errors,
            "algorithm": ALGORITHM,
            "partitions": {
                str(p): {
                    "start": s,
                    "end": e,
                    "next": self.next.get(p, s),
                    "read": self.read.counts.get(p, 0),
                    "written": self.written.counts.get(p, 0),
                }
                for p, (s, e) in sorted(self.ranges.items())
            },
            "elapsed_s": round(self.elapsed_s, 3),
        }


class Replayer:
    """Runs one replay from a source to a destination topic.

    `stop` is polled between records: the CLI sets it on SIGINT/SIGTERM, and the replay then
    confirms what it already produced, checkpoints it and returns with `interrupted=True`."""

    def __init__(
        self,
        settings: Settings,
        source: ReplaySource,
        destination: str,
        rate: float | None = None,
        batch: int = 500,
        dry_run: bool = False,
        resume: bool = False,
        checkpoint_path: Path | None = None,
        stop: Callable[[], bool] | None = None,
        progress: bool = True,
    ) -> None:
        if batch < 1:
            raise ToolingError(f"--batch must be at least 1, got {batch}")
        self.settings = settings
        self.source = source
        self.destination = destination
        self.batch = batch
        self.dry_run = dry_run
        self.resume = resume
        self.checkpoint_path = checkpoint_path or default_checkpoint_path(source.label(), destination)
        self._limiter = RateLimiter(rate)
        self._stop = stop or (lambda: False)
        self._progress = progress

    # ------------------------------------------------------------------ driver
    def run(self) -> ReplayResult:
        started = time.monotonic()
        try:
            result = self._run()
        finally:
            self.source.close()
        result.elapsed_s = time.monotonic() - started
        return result

    def _run(self) -> ReplayResult:
        state = self._initial_state()
        result = ReplayResult(
            source=self.source.identity(),
            destination=self.destination,
            dry_run=self.dry_run,
            read=state.read.copy(),
            written=state.written.copy(),
            resumed=self.resume,
            checkpoint=None if self.dry_run else str(self.checkpoint_path),
            ranges=dict(state.ranges),
        )
        if state.completed:
            result.completed = True
        else:
            self._copy(state, result)
        result.next = dict(state.next)
        return result

    def _initial_state(self) -> Checkpoint:
        if self.resume:
            state = Checkpoint.load(self.checkpoint_path)
            self._check_same_replay(state)
            return state
        if not self.dry_run and self.checkpoint_path.exists():
            existing = Checkpoint.load(self.checkpoint_path)
            if not existing.completed:
                raise ToolingError(
                    f"{self.checkpoint_path}: an unfinished replay of the same source and destination stopped at "
                    f"{existing.read.count} record(s): continue it with --resume, or delete the file to start over"
                )
        ranges = self.source.plan()
        return Checkpoint(self.source.identity(), self.destination, ranges, {p: s for p, (s, _) in ranges.items()})

    def _check_same_replay(self, state: Checkpoint) -> None:
        identity = self.source.identity()
        if state.source != identity or state.destination != self.destination:
            raise ToolingError(
                f"{self.checkpoint_path}: checkpoint is for {state.source} -> {state.destination!r}, "
                f"not {identity} -> {self.destination!r}"
            )

    def _copy(self, state: Checkpoint, result: ReplayResult) -> None:
        remaining = {p: (state.next.get(p, s), e) for p, (s, e) in state.ranges.items()}
        total = sum(max(0, e - s) for s, e in remaining.values())
        producer = None if self.dry_run else self._producer()
        records = self.source.records(remaining, self._stop)
        verb = "dry-run" if self.dry_run else "replay"
        with ProgressReporter(f"{verb} {self.source.label()} -> {self.destination}", total, self._progress) as progress:
            while True:
                batch = list(islice(records, self.batch))
                if not batch:
                    break
                if producer is None:
                    self._count_dry(state, batch, progress, result)
                elif not self._deliver(producer, state, batch, result, progress):
                    break
                if self._stop():
                    break
        result.interrupted = self._stop() and not result.failed
        if not result.interrupted and not result.failed:
            state.completed = True
            state.next = {p: e for p, (_, e) in state.ranges.items()}
            if producer is not None:
                state.save(self.checkpoint_path)
        result.completed = state.completed
        if not result.failed:  # on failure _record_failure already set what was read and confirmed
            result.read = state.read.copy()
            result.written = StreamDigest() if self.dry_run else state.written.copy()

    def _count_dry(
        self, state: Checkpoint, batch: list[SourceRecord], progress: ProgressReporter, result: ReplayResult
    ) -> None:
        for rec in batch:
            self._copyable(rec, result)  # says now what the real run would leave out
            state.read.add(rec.partition, rec.key, rec.value)
            state.next[rec.partition] = rec.position + 1
        progress.advance(len(batch))

    # ------------------------------------------------------------------ producing
    def _producer(self) -> Producer:
        consumer = Consumer(reader_config(self.settings))
        try:
            topic_partitions(consumer, self.destination)
        finally:
            consumer.close()
        if self.source.identity().get("topic") == self.destination:
            raise ToolingError(
                f"--to {self.destination!r} is the source topic: replaying a topic into itself duplicates it"
            )
        return Producer(self.settings.producer_config())

    def _deliver(
        self,
        producer: Producer,
        state: Checkpoint,
        batch: list[SourceRecord],
        result: ReplayResult,
        progress: ProgressReporter,
    ) -> bool:
        """Produce a batch, wait for every delivery report, then checkpoint. Returns False when the
        run must stop (a failed delivery), leaving the checkpoint at the last complete batch."""
        delivered: list[tuple[bytes | None, bytes | None] | None] = [None] * len(batch)
        failures: list[str] = []

        def report(index: int, err: KafkaError | None, msg: Message) -> None:
            stop_on_access_error(err, topic=msg.topic() if msg is not None else None)
            if err is not None:
                rec = batch[index]
                failures.append(f"source partition {rec.partition} offset {rec.position}: {err.str()}")
            else:
                delivered[index] = (msg.key(), msg.value())

        sent = 0
        for index, rec in enumerate(batch):
            if self._stop():
                break
            sent += 1
            progress.advance()
            if not self._copyable(rec, result):
                continue
            self._limiter.acquire()
            _produce(producer, self.destination, rec, partial(report, index))
        while producer.flush(1.0) > 0:
            pass
        handled = batch[:sent]
        if failures:
            self._record_failure(state, handled, delivered, failures, result)
            return False
        for rec, outcome in zip(handled, delivered[:sent], strict=True):
            state.read.add(rec.partition, rec.key, rec.value)
            if outcome is not None:  # None: not copyable, so not written
                state.written.add(rec.partition, outcome[0], outcome[1])
            state.next[rec.partition] = rec.position + 1
        state.save(self.checkpoint_path)
        return True

    def _copyable(self, rec: SourceRecord, result: ReplayResult) -> bool:
        """A record whose headers the Kafka client cannot read (a header name that is not UTF-8)
        cannot be copied with its headers: it is read (so the checksums differ and the replay
        exits 1) but not written, and named, rather than copied with a stand-in header."""
        if not unreadable(rec.headers):
            return True
        result.not_copied += 1
        if len(result.errors) < MAX_ERRORS:
            result.errors.append(
                f"source partition {rec.partition} offset {rec.position}: headers unreadable by the Kafka client "
                "(a header name that is not UTF-8), not copied"
            )
        return False

    def _record_failure(
        self,
        state: Checkpoint,
        handled: list[SourceRecord],
        delivered: list[Any],
        failures: list[str],
        result: ReplayResult,
    ) -> None:
        read, written = state.read.copy(), state.written.copy()
        for rec, outcome in zip(handled, delivered[: len(handled)], strict=True):
            read.add(rec.partition, rec.key, rec.value)
            if outcome is not None:
                written.add(rec.partition, outcome[0], outcome[1])
        result.read, result.written = read, written
        result.failed = len(failures)
        result.errors = (result.errors + failures)[:MAX_ERRORS]


def _produce(producer: Producer, topic: str, rec: SourceRecord, callback: Callable[..., None]) -> None:
    """Produce, waiting for queue space instead of failing when librdkafka's buffer is full."""
    while True:
        try:
            producer.produce(
                topic,
                key=rec.key,
                value=rec.value,
                # confluent-kafka's stub types produce(headers=) as an invariant List of
                # (str, str | bytes | None), refusing our read-only list of bytes pairs.
                headers=produce_headers(rec.headers or None),
                on_delivery=callback,
            )
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.2)
