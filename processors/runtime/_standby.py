"""Warm standbys: up-to-date copies of partition stores this worker does not own.

With ``standby_replicas`` > 0, each agent keeps, beside its active stores, copies of the stores
of the partitions it does not own, fed from their changelogs, so that a partition taken over after
its owner died (a SIGKILL, a lost node) restores only the changelog's tail instead of all of it.
librdkafka has no custom assignor, so the group cannot place standbys for us: each worker decides
itself, and the rule is the simplest one that needs nothing but the assignment it already has:
*every partition of the agent not owned here*. With two workers that is exactly one standby of
every partition; with n workers, n - 1 (each worker holds a copy of everything, the cost grows
with the worker count). A ring of k followers (each member's partitions shadowed by the k members
after it) needs the group's membership and assignment, which only an admin client's
``describe_consumer_groups`` gives a member; that call, made every few seconds, aborted the worker
process (``rd_kafka_enq_once_del_source_return: Assertion `eonce->refcnt > 0'``, librdkafka
2.16.0) when the broker went away while a request was in flight, so it is not used.

A standby copy is the same on-disk store the active path uses (same directory, same changelog
offset record), written the way a restore writes it: changelog records are gathered per partition
and applied, atomically with the offset of their batch marker, only when that marker arrives. So
the store always ends at a marker, and when the partition is assigned the restorer starts from its
offset and applies its own rules to the tail (an unmarked run left by a killed at-least-once
worker is rolled back by the restorer, not here). The consumer reads ``read_committed`` (aborted
exactly-once batches are never seen), with ``assign()`` and no group, and ``auto.offset.reset`` =
``error``: a store whose offset the changelog does not have (the topic was recreated) is wiped and
read from the start rather than patched with records of another history.

Safety of the hand-over: everything here runs in the agent's own loop thread, between the
restore step and the batch (a bounded step: at most ``max_records`` records, never a blocking
call but ``close``), so a store is never written by the standby and the active path at once. When
a shadowed partition is assigned, the worker's store opener asks :meth:`WarmStandby.take` first,
which stops reading it and hands over the open store (RocksDB admits one opener: the active path
could not open it while the standby holds it). A standby never serves reads. A copy that is
behind is only a later restore start. Any failure of the standby (broker away, a store locked by
another process) costs its copies, never the agent: it is logged and the standby retries on its
next refresh.

Why from the loop and not a thread of its own: the stores' single-writer rule then holds without
locks, the hand-over is ordered with the restore by construction, and Python's interpreter lock
would serialise a thread's applying with the handlers anyway. The cost is bounded per turn, and
an idle loop turns every ``poll_timeout_s``, so a standby follows a busy changelog within a few
turns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processors.kafka_types import records
from processors.runtime.metrics import report_standby_lag, report_standby_partitions
from processors.runtime.state import RocksStore
from processors.runtime.state.keys import MARKER

log = logging.getLogger("choreo.worker")

ChangelogValue = bytes | None


@dataclass(frozen=True)
class StandbyOptions:
    retry_s: float = 5.0  # a copy that failed (store locked, an error) is tried again after this
    max_records: int = 5_000  # changelog records applied per loop turn, at most
    # unmarked records held for one partition before its copy is reset (a batch of 500 inputs
    # writes a few records each; a longer run waits in the store's changelog for the restore)
    max_pending: int = 100_000


@dataclass
class _Copy:
    """One shadowed partition: its store, the next changelog offset, the run since its marker."""

    partition: int
    store: RocksStore
    position: int  # next offset to read (0 with no offset stored: from the beginning)
    pending: dict[bytes, ChangelogValue] = field(default_factory=dict)
    applied: int = 0  # records applied since shadowing began
    trust_eof: bool = True  # False from a wipe until a record of the new reading came

    def add(self, key: bytes, value: ChangelogValue, offset: int) -> None:
        self.pending[key] = value
        self.position = offset + 1
        self.trust_eof = True

    def caught_up(self, end: int) -> None:
        """The end of what a read_committed reader sees is ``end`` and nothing is held since the
        last marker: only transaction markers (or aborted records, which a restore skips as well)
        lie between, so the store may say it has everything up to ``end - 1``. A restore of the
        copy then starts at ``end`` and has nothing to read, instead of waiting for the end of
        a partition whose remaining offsets hold no record."""
        self.store.apply({}, end - 1)
        self.position = end

    def mark(self, offset: int) -> None:
        """A batch marker: apply the batch with the marker's offset, as the restorer does."""
        self.store.apply(self.pending, offset)
        self.applied += len(self.pending)
        self.pending = {}
        self.position = offset + 1
        self.trust_eof = True


class WarmStandby:
    """The standby copies of one agent in one worker (see the module docstring)."""

    def __init__(
        self,
        consumer: Consumer,
        changelog: str,
        partitions: int,
        owned: Callable[[], Iterable[int]],
        open_store: Callable[[int], RocksStore],
        agent: str,
        options: StandbyOptions,
    ) -> None:
        self.consumer = consumer
        self.changelog = changelog
        self.partitions = partitions
        self.owned = owned
        self.open_store = open_store
        self.agent = agent
        self.options = options
        self.copies: dict[int, _Copy] = {}
        self._not_before: dict[int, float] = {}  # partitions whose copy failed: not retried before
        self._assigned: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ from the loop
    def step(self) -> None:
        """One bounded turn: follow the group's plan, read and apply a chunk of changelog records.
        Never raises for a failure of its own: a standby is an optimisation, the agent goes on."""
        try:
            self._follow_plan()
            self._read()
        except Exception as exc:  # noqa: BLE001 - see the docstring: the copies go, the agent stays
            log.warning(
                "standby copies dropped after an error",
                extra={"agent": self.agent, "error": str(exc)[:300], "partitions": sorted(self.copies)},
            )
            retry = time.monotonic() + self.options.retry_s
            self._not_before.update(dict.fromkeys(self.copies, retry))
            try:
                self._drop(list(self.copies))
            except Exception:  # noqa: BLE001 - the consumer is gone too: close the stores at least
                self.release()

    def take(self, partition: int) -> RocksStore | None:
        """The partition is assigned to this worker: stop shadowing it and hand over its open store
        (it ends at a batch marker; the restorer reads the tail from there). None: not shadowed."""
        copy = self.copies.pop(partition, None)
        if copy is None:
            return None
        self._assign()
        report_standby_lag(self.agent, partition, None)
        report_standby_partitions(self.agent, len(self.copies))
        log.info(
            "standby store handed over",
            extra={
                "agent": self.agent,
                "partition": partition,
                "changelog_offset": copy.store.changelog_offset,
                "records": copy.applied,
            },
        )
        return copy.store

    def release(self) -> None:
        """Close the copies' stores only (the session was given up: its clients are not touched)."""
        for p, copy in sorted(self.copies.items()):
            copy.store.close()
            report_standby_lag(self.agent, p, None)
        self.copies.clear()
        self._assigned = []
        report_standby_partitions(self.agent, 0)

    def close(self) -> None:
        self._drop(list(self.copies))
        self.consumer.close()

    # ------------------------------------------------------------------ the plan
    def _follow_plan(self) -> None:
        """Open copies of the partitions not owned here, drop the ones now owned (handed over
        already, normally: see :meth:`take`)."""
        owned = set(self.owned())
        gone = [p for p in self.copies if p in owned]
        self._drop(gone)
        started = False
        now = time.monotonic()
        for p in range(self.partitions):
            if p in owned or p in self.copies or self._not_before.get(p, 0.0) > now:
                continue
            store = self._open(p)
            if store is None:
                continue
            offset = store.changelog_offset
            self.copies[p] = _Copy(p, store, 0 if offset is None else offset + 1)
            started = True
        if started or gone:
            self._assign()
            report_standby_partitions(self.agent, len(self.copies))

    def _open(self, p: int) -> RocksStore | None:
        try:
            store = self.open_store(p)
        except Exception as exc:  # noqa: BLE001 - locked by another process, a disk error: not now
            self._not_before[p] = time.monotonic() + self.options.retry_s
            log.warning(
                "standby store not opened", extra={"agent": self.agent, "partition": p, "error": str(exc)[:300]}
            )
            return None
        if store.wiped_reason:  # said here, where it happened, not again by the restorer at hand-over
            log.info("local store wiped", extra={"agent": self.agent, "partition": p, "reason": store.wiped_reason})
            store.wiped_reason = None
        return store

    def _drop(self, partitions: Iterable[int]) -> None:
        dropped = False
        for p in sorted(set(partitions)):
            copy = self.copies.pop(p, None)
            if copy is not None:
                copy.store.close()
                report_standby_lag(self.agent, p, None)
                dropped = True
        if dropped:
            self._assign()
            report_standby_partitions(self.agent, len(self.copies))

    def _assign(self) -> None:
        positions = sorted((p, c.position) for p, c in self.copies.items())
        if positions == self._assigned:
            return
        self._assigned = positions
        tps = [TopicPartition(self.changelog, p, pos if pos > 0 else OFFSET_BEGINNING) for p, pos in positions]
        if tps:
            self.consumer.assign(tps)
        else:
            self.consumer.unassign()

    # ------------------------------------------------------------------ reading
    def _read(self) -> None:
        if not self.copies:
            return
        caught_up: set[int] = set()
        for msg in records(self.consumer.consume(self.options.max_records, 0)):
            p = msg.partition()
            copy = self.copies.get(p)
            if copy is None:
                continue
            err = msg.error()
            if err is not None:
                self._error(copy, err, msg.offset(), caught_up)
                continue
            key = msg.key()
            if key is None:
                continue
            if key == MARKER:
                copy.mark(msg.offset())
            else:
                copy.add(key, msg.value(), msg.offset())
                if len(copy.pending) > self.options.max_pending:
                    self._reset(copy, "unmarked run too long")
        self._report_lag(caught_up)

    def _error(self, copy: _Copy, err: KafkaError, offset: int | None, caught_up: set[int]) -> None:
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            caught_up.add(copy.partition)
            if offset is not None and offset > copy.position and not copy.pending and copy.trust_eof:
                copy.caught_up(offset)
        elif code == KafkaError._AUTO_OFFSET_RESET:
            log.warning(
                "standby store does not match its changelog, rebuilding it",
                extra={"agent": self.agent, "partition": copy.partition, "position": copy.position},
            )
            copy.store.wipe()
            copy.pending = {}
            copy.position = 0
            copy.trust_eof = False  # an end reported for the old reading must not be taken as ours
            self._assigned = []
            self._assign()
        elif err.fatal():
            raise RuntimeError(f"standby consumer cannot go on: {err.str()}")
        # anything else: the broker away or the partition moving; the client retries by itself

    def _reset(self, copy: _Copy, why: str) -> None:
        """Drop what is held of an unmarked run and stop shadowing until the next refresh: the store
        still ends at its last marker, a valid restore start."""
        log.warning("standby copy reset", extra={"agent": self.agent, "partition": copy.partition, "reason": why})
        self._not_before[copy.partition] = time.monotonic() + self.options.retry_s
        self._drop([copy.partition])

    def _report_lag(self, caught_up: set[int]) -> None:
        for p, copy in self.copies.items():
            if p in caught_up:
                report_standby_lag(self.agent, p, 0)
                continue
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(self.changelog, p), cached=True)
            except Exception:  # noqa: BLE001 - not known yet
                continue
            if high is not None and high >= 0:
                report_standby_lag(self.agent, p, max(0, high - copy.position))


class NoStandby:
    """``standby_replicas`` = 0: nothing is shadowed."""

    def step(self) -> None:
        pass

    def take(self, partition: int) -> RocksStore | None:
        return None

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_standby(
    replicas: int,
    consumer_config: dict[str, Any],
    changelog: str,
    partitions: int,
    owned: Callable[[], Iterable[int]],
    open_store: Callable[[int], RocksStore],
    agent: str,
) -> WarmStandby | NoStandby:
    """The agent's standby: a :class:`NoStandby` when ``replicas`` is 0 (or the changelog's
    partition count is not known), else a :class:`WarmStandby` with its own group-less consumer
    (``consumer_config``: the restore consumer's settings)."""
    if replicas <= 0 or partitions <= 0:
        return NoStandby()
    config = {
        **consumer_config,
        "auto.offset.reset": "error",
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "client.id": f"{str(consumer_config.get('client.id', agent)).removesuffix('.restore')}.standby",
    }
    return WarmStandby(Consumer(config), changelog, partitions, owned, open_store, agent, StandbyOptions())
