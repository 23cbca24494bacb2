"""Key-ordered concurrency: the handlers of one agent's inputs of different keys run at once (up to
``max_in_flight``), those of one key one after another in offset order.

The shape is the Confluent Parallel Consumer's, over the engine's phases of one input
(:class:`~processors.runtime._processor.Processor`: admit, start, invoke, finish):

* **Admission** (the agent's thread, offset order): the checks that need no state. A record they
  decide (a dead letter, an ignored type) needs no handler: it is finished at once.
* **Lanes.** A handled input waits until it is first in the lane of its state key and in the lane
  of its seen key (two inputs with one idempotency key are one input delivered twice: the second
  must see the first's seen key). A finished input hands its lanes on to the next input of its
  own topic partition at once (that one reads its staged writes), to an input of another topic
  (co-partitioned, the same store) only once released (that one reads the open work, and is
  released in its own offset order). Then it starts: its dedupe check, then its handler on the
  agent's event loop (``async def``) or on a thread of the executor's pool (``threads=True``).
* **Finish** (the agent's thread, in completion order): its records and store writes, staged in
  the executor, where the next input of the key reads them.
* **Release** (per partition, in offset order): a finished input is handed to the agent's open
  work (its writes put into the batch's overlay; then its records sent, its offset counted) only when
  every earlier input of its partition is released. So a commit covers a prefix of each partition
  with no gap: nothing past an unfinished input is ever committed, and outputs leave in the
  partition's offset order. A failure (abort, lost partition, stop) drops what is not released and
  the inputs are handled again from the committed offset: once, since none of them was committed.

Everything here but the handler runs on the agent's thread; the handlers' threads and the loop
only run :meth:`Processor.invoke` / :meth:`Processor.invoke_async` and report back through a queue.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from processors.runtime._processor import Admitted, HandleResult, Outcome, Processor
from processors.runtime.state.store import KeyValueStore, StateView

InputPartition = tuple[str, int]

# How many inputs the executor may hold in all (running, waiting, finished and not released yet), as
# a multiple of max_in_flight. Why not max_in_flight itself: a finished input waits for every earlier
# input of its partition before it is released; counted against max_in_flight, it kept a handler's
# slot idle behind a slow head (or behind a key's later input waiting for its earlier one), and at
# 50 ms and 64 in flight only ~32 handlers ran on average (benchmarks/RESULTS.md, issue 14). Finished
# inputs hold no connection, only their result: bounded by this, not by the dependency's concurrency.
HELD_PER_SLOT = 4


class _Phase(Enum):
    WAITING = 1  # admitted, its lanes not free yet
    RUNNING = 2  # its handler runs
    FINISHED = 3  # its result is staged, waiting for earlier inputs of its partition
    DROPPED = 4  # abandoned: never released


@dataclass(eq=False, slots=True)
class Job:
    """One input in the executor."""

    topic: str
    partition: int
    offset: int
    admitted: Admitted | None  # None: decided at admission (``result`` is set)
    message: Any = None  # what the caller passed along (the consumed record), handed back at release
    result: HandleResult | None = None
    phase: _Phase = _Phase.WAITING
    lanes: tuple[tuple[int, bytes], ...] = ()
    view: _JobView | None = None
    future: Future[Outcome] | None = None
    started: float = 0.0
    seconds: float = 0.0  # how long its handler ran (observed in the agent's metrics at release)


@dataclass(frozen=True, slots=True)
class Released:
    """A finished input handed to the agent's open work, in its partition's offset order."""

    topic: str
    partition: int
    offset: int
    result: HandleResult
    message: Any
    handler_seconds: float | None


class _JobView:
    """The state one job sees: its own writes, then the staged writes of finished, unreleased jobs
    of its partition (an earlier input of the same key among them), then the partition's current
    open work and the store (``_Partition.base``). Its own writes are what release hands on.

    The base is the partition's, not the one of the job's start: a commit may replace the open work
    while the job runs, and the key's earlier input may be released into the new one meanwhile
    (leaving the staged writes). Reads run on the handler's thread while the agent's thread
    releases, so each is one dict operation: release puts into the base, then unstages."""

    __slots__ = ("part", "own")

    def __init__(self, part: _Partition) -> None:
        self.part = part
        self.own: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        own = self.own.get(key, _MISSING)
        if own is not _MISSING:
            return own  # type: ignore[return-value]
        staged = self.part.staged.get(key, _MISSING)
        if staged is not _MISSING:
            return staged  # type: ignore[return-value]
        return self.part.base.get(key)  # type: ignore[union-attr]

    def put(self, key: bytes, value: bytes | None) -> None:
        self.own[key] = value

    @property
    def store(self) -> KeyValueStore:
        """The store under it (``ctx.timers()`` lists a key's timers from the store)."""
        base = self.part.base
        store: KeyValueStore = getattr(base, "store", None) or base  # type: ignore[assignment]
        return store

    @property
    def writes(self) -> dict[bytes, bytes | None]:
        """Every write above the store, the newest winning (``ctx.timers()`` overlays them)."""
        return {**getattr(self.part.base, "writes", {}), **self.part.staged, **self.own}


_MISSING = object()


@dataclass
class _Partition:
    """The executor's inputs of one input partition, in offset order, and the writes of its
    finished, unreleased jobs (``owner``: which job wrote each key last)."""

    jobs: deque[Job] = field(default_factory=deque)
    staged: dict[bytes, bytes | None] = field(default_factory=dict)
    owner: dict[bytes, Job] = field(default_factory=dict)
    keys: Counter[bytes] = field(default_factory=Counter)  # state keys of its unreleased handled inputs
    base: StateView | None = None  # the open work's overlay of the partition, as of the last start or release


class KeyedExecutor:
    """Runs one agent's inputs with key-ordered concurrency (see the module's docstring).

    ``view_of(partition)`` gives the open work's overlay of a partition (None: the partition is
    not processed here now); it is asked when a job starts (what the dedupe check and the handler
    read under the staged writes) and never kept past the job."""

    def __init__(
        self,
        processor: Processor,
        max_in_flight: int,
        view_of: Callable[[int], StateView | None],
        threads: bool = False,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.processor = processor
        self.max_in_flight = max_in_flight
        self.view_of = view_of
        self._async = processor.is_async
        self._pool = None if self._async else ThreadPoolExecutor(max_in_flight, f"agent-{processor.spec.name}")
        if not (self._async or threads):
            raise ValueError("a sync handler runs concurrently only on threads (threads=True)")
        self._done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lanes: dict[tuple[int, bytes], deque[Job]] = {}
        self._parts: dict[InputPartition, _Partition] = {}
        self._count = 0  # jobs admitted and not yet released or dropped
        self._held_done = 0  # of those, the finished ones (waiting for release)
        self.max_held = HELD_PER_SLOT * max_in_flight
        self._running = 0
        self._released: list[Released] = []
        self._ready: deque[Job] = deque()  # jobs first in all their lanes, to start
        self._held: set[int] | None = set()  # partitions whose waiting jobs must not start (None: all)

    # ------------------------------------------------------------------ state
    @property
    def capacity(self) -> int:
        """How many more inputs may be submitted now: up to ``max_in_flight`` unfinished (running
        or waiting for their key), and up to ``max_held`` in all (finished ones waiting for an
        earlier input of their partition included)."""
        unfinished = self._count - self._held_done
        return max(0, min(self.max_in_flight - unfinished, self.max_held - self._count))

    @property
    def busy(self) -> bool:
        """Whether any input is in the executor (running, waiting or unreleased)."""
        return self._count > 0

    def in_flight(self) -> int:
        return self._count

    def holds(self, partition: int, state_key: bytes) -> bool:
        """Whether an input of ``state_key`` on ``partition`` is not released yet (a due timer of
        that key waits: it must not run beside, or before, the key's earlier input)."""
        return any(p == partition and part.keys.get(state_key) for (_, p), part in self._parts.items())

    def lowest_offsets(self, partitions: Iterable[int] | None = None) -> dict[InputPartition, int]:
        """The first unreleased offset of each input partition (of ``partitions``, or all): where a
        replay of what is in the executor starts."""
        wanted = None if partitions is None else set(partitions)
        return {
            tp: part.jobs[0].offset
            for tp, part in self._parts.items()
            if part.jobs and (wanted is None or tp[1] in wanted)
        }

    # ------------------------------------------------------------------ submit
    def submit(
        self, topic: str, partition: int, offset: int, admitted: Admitted | HandleResult, message: Any = None
    ) -> None:
        """Take one admitted input (or an input's final result, decided at admission), in offset
        order per partition. Released results are collected with :meth:`take_released`."""
        tp = (topic, partition)
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if isinstance(admitted, HandleResult):
            job = Job(topic, partition, offset, None, message, admitted, _Phase.FINISHED)
            part.jobs.append(job)
            self._count += 1
            self._held_done += 1
            self._release(tp, part)
            self._start_ready()
            return
        job = Job(topic, partition, offset, admitted, message)
        job.lanes = ((partition, b"s" + admitted.state_key), (partition, b"i" + admitted.seen_at))
        part.jobs.append(job)
        part.keys[admitted.state_key] += 1
        self._count += 1
        first = True
        for lane in job.lanes:
            waiting = self._lanes.get(lane)
            if waiting is None:
                self._lanes[lane] = deque((job,))
                continue
            waiting.append(job)
            head = waiting[0]
            if len(waiting) == 2 and head.phase is _Phase.FINISHED and head.topic == topic:
                waiting.popleft()  # a finished input's writes are staged where this one reads them
            else:
                first = False
        if first:
            self._ready.append(job)
        self._start_ready()

    def _start_ready(self) -> None:
        """Start the jobs whose lanes came free (a loop, not recursion: a duplicate finishes at once
        and frees the next job of its key, and a hot key may have hundreds waiting)."""
        ready, held = self._ready, self._held
        kept: list[Job] = []
        while ready:
            job = ready.popleft()
            if job.phase is not _Phase.WAITING:
                continue
            if held is None or job.partition in held:
                kept.append(job)  # draining: it stays waiting until dropped
                continue
            self._start(job)
        ready.extend(kept)

    def _start(self, job: Job) -> None:
        """The job's dedupe check and, unless it is a duplicate, its handler."""
        admitted = job.admitted
        assert admitted is not None
        base = self.view_of(job.partition)
        part = self._parts.get((job.topic, job.partition))
        if base is None or part is None:  # not processed here any more: left to whoever owns it
            self.drop({job.partition})
            return
        part.base = base
        view = job.view = _JobView(part)
        started = self.processor.start(view, admitted)
        if isinstance(started, HandleResult):
            self._finished(job, started)
            return
        job.phase = _Phase.RUNNING
        job.started = time.perf_counter()
        self._running += 1
        if self._async:
            job.future = self.processor.loop.submit(self.processor.invoke_async(view, admitted, started))
        else:
            assert self._pool is not None
            job.future = self._pool.submit(self.processor.invoke, view, admitted, started)
        job.future.add_done_callback(self._notifier(job))

    def _notifier(self, job: Job) -> Callable[[Future[Outcome]], None]:
        """The done callback of a job's future (run on the handler's thread or loop): queue it."""
        done = self._done

        def notify(_future: Future[Outcome]) -> None:
            done.put(job)

        return notify

    # ------------------------------------------------------------------ completions
    def collect(self, wait_s: float = 0.0) -> int:
        """Finish the jobs whose handlers returned (waiting up to ``wait_s`` for the first when none
        has), start the ones they free; returns how many finished."""
        finished = 0
        try:
            job = self._done.get(timeout=wait_s) if wait_s > 0 else self._done.get_nowait()
        except queue.Empty:
            return 0
        while True:
            if job.phase is _Phase.RUNNING:
                self._running -= 1
                self._complete(job)
                finished += 1
            try:
                job = self._done.get_nowait()
            except queue.Empty:
                self._start_ready()
                return finished

    def _complete(self, job: Job) -> None:
        future, admitted, view = job.future, job.admitted, job.view
        assert future is not None and admitted is not None and view is not None
        job.seconds = time.perf_counter() - job.started
        try:
            outcome: Outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - invoke returns its failures; this is the engine's own
            outcome = exc
        self._finished(job, self.processor.finish(view, admitted, outcome))

    def _finished(self, job: Job, result: HandleResult) -> None:
        """A handled job's result is in: stage its writes, free its lanes, release what can go."""
        job.result = result
        job.phase = _Phase.FINISHED
        self._held_done += 1
        tp = (job.topic, job.partition)
        part = self._parts[tp]
        view = job.view
        if view is not None and view.own:
            part.staged.update(view.own)
            for key in view.own:
                part.owner[key] = job
        for lane in job.lanes:
            self._pass_on(lane, job)
        self._release(tp, part)

    def _pass_on(self, lane: tuple[int, bytes], job: Job) -> None:
        """Free a finished job's lane for the next input of its key when that one reads the job's
        staged writes: an input of the same topic partition. An input of another topic (the same
        partition number: its state is the same store's) reads the open work, not this partition's
        staging, and is released in its own offset order: it waits until this job is released, and
        so does the lane while nobody waits in it (see :meth:`submit`)."""
        waiting = self._lanes.get(lane)
        if waiting and waiting[0] is job and len(waiting) > 1 and waiting[1].topic == job.topic:
            self._free(lane, job)

    def _free(self, lane: tuple[int, bytes], job: Job) -> None:
        waiting = self._lanes.get(lane)
        if not waiting or waiting[0] is not job:
            return
        waiting.popleft()
        if not waiting:
            del self._lanes[lane]
            return
        nxt = waiting[0]
        if nxt.phase is _Phase.WAITING and all(self._lanes[other][0] is nxt for other in nxt.lanes):
            self._ready.append(nxt)

    def _release(self, tp: InputPartition, part: _Partition) -> None:
        """Hand the finished jobs at the head of the partition to the open work: their writes put
        into its overlay at once (the next input of a key reads them there), their results kept
        for :meth:`take_released`."""
        jobs = part.jobs
        if not (jobs and jobs[0].phase is _Phase.FINISHED):
            return
        base = self.view_of(tp[1])
        if base is None:  # not processed here any more: left to whoever owns it
            self.drop({tp[1]})
            return
        part.base = base  # before the puts: a concurrent read that misses the staged write finds it there
        while jobs and jobs[0].phase is _Phase.FINISHED:
            job = jobs.popleft()
            self._count -= 1
            self._held_done -= 1
            writes: dict[bytes, bytes | None] = {}
            if job.view is not None:
                writes = job.view.own
                for key, value in writes.items():
                    base.put(key, value)
                    if part.owner.get(key) is job:
                        del part.owner[key]
                        del part.staged[key]
            for lane in job.lanes:
                self._free(lane, job)  # a lane it still holds (see _pass_on)
            if job.admitted is not None:
                keys = part.keys
                keys[job.admitted.state_key] -= 1
                if keys[job.admitted.state_key] <= 0:
                    del keys[job.admitted.state_key]
            assert job.result is not None
            seconds = job.seconds if job.future is not None else None
            self._released.append(Released(tp[0], tp[1], job.offset, job.result, job.message, seconds))
        if not jobs and not part.staged:
            del self._parts[tp]

    def take_released(self) -> list[Released]:
        """The results released since the last call, in each partition's offset order."""
        out, self._released = self._released, []
        return out

    # ------------------------------------------------------------------ drain, drop
    def drain(self, partitions: Iterable[int] | None, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until no handler of ``partitions`` (None: any) runs, finishing
        and releasing what returns; no waiting job of those partitions starts meanwhile. True when
        none is left running. The caller then drops what is left (:meth:`drop`), which ends the hold."""
        if partitions is None:
            self._held = None
        elif self._held is not None:
            self._held.update(partitions)
        wanted = None if partitions is None else set(partitions)
        deadline = time.monotonic() + timeout_s
        while self._running_in(wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.collect(min(left, 0.05))
        return True

    def _running_in(self, wanted: set[int] | None) -> bool:
        return any(
            job.phase is _Phase.RUNNING
            for (_, p), part in self._parts.items()
            if wanted is None or p in wanted
            for job in part.jobs
        )

    def drop(self, partitions: Iterable[int] | None = None) -> dict[InputPartition, int]:
        """Abandon every unreleased job of ``partitions`` (None: all): handlers still running are
        cancelled where they can be (a coroutine) and their end ignored. Returns the first dropped
        offset per input partition, where they must be handled again."""
        wanted = None if partitions is None else set(partitions)
        first = self.lowest_offsets(wanted)
        for tp, part in list(self._parts.items()):
            if wanted is not None and tp[1] not in wanted:
                continue
            for job in list(part.jobs):
                if job.phase is _Phase.RUNNING:
                    self._running -= 1
                    self._cancel(job)
                self._drop_job(job, part)
            del self._parts[tp]
        if wanted is None:
            self._held = set()
        elif self._held is not None:
            self._held -= wanted
        return first

    def _drop_job(self, job: Job, part: _Partition) -> None:
        was, job.phase = job.phase, _Phase.DROPPED
        try:
            part.jobs.remove(job)
        except ValueError:
            return
        self._count -= 1
        if was is _Phase.FINISHED:
            self._held_done -= 1
        for lane in job.lanes:
            waiting = self._lanes.get(lane)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(job)
                if not waiting:
                    del self._lanes[lane]
        if job.admitted is not None:
            key = job.admitted.state_key
            part.keys[key] -= 1
            if part.keys[key] <= 0:
                del part.keys[key]
        if job.view is not None:
            for key in job.view.own:
                if part.owner.get(key) is job:
                    del part.owner[key]
                    part.staged.pop(key, None)

    @staticmethod
    def _cancel(job: Job) -> None:
        if job.future is not None:
            job.future.cancel()

    def close(self) -> None:
        """Drop everything and stop the pool's threads (a running sync handler runs to its end)."""
        self.drop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[Job]:
        for part in self._parts.values():
            yield from part.jobs


__all__ = ["Job", "KeyedExecutor", "Released"]
