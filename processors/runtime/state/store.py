"""Partition stores and the per-batch overlay.

Writes of a batch never touch the store while the batch is in flight: handlers write into a
:class:`BatchView` (reads see the batch's own writes first), the worker sends the batch's final
records to the changelog with the outputs, and only once Kafka has accepted them (transaction
committed, or flushed under at-least-once) are they applied to the store, in one atomic RocksDB
write that also records the changelog offset they reached. An aborted batch is simply dropped.
"""

from __future__ import annotations

import bisect
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from processors.errors import ChoreoError
from processors.runtime.state import keys
from processors.settings import Settings

_OFFSET = keys.meta_key("changelog_offset")
_CLOSED_AT = keys.meta_key("closed_at")
_RESTORING = keys.meta_key("restoring")
_NO_ENTRY = b"\xff" * 8  # the floor of an empty time index: above every due time


class StoreLockedError(ChoreoError, RuntimeError):
    """Another process holds the RocksDB lock of this store directory."""


DEFAULT_STORE_MEMORY_MB: int = Settings.state_memory_mb  # for stores opened outside a worker
_MAX_WRITE_BUFFER = 16 << 20
_SHARED: dict[int, StoreMemory] = {}
_SHARED_LOCK = threading.Lock()


class StoreMemory:
    """One RocksDB memory limit shared by every store of a process: a block cache that the
    memtables are charged to (half of it at most), with index and filter blocks inside it too.

    Without it each store, one per agent and partition, took RocksDB's defaults: up to two 64 MiB
    memtables and its own caches. A worker's memory then grew with its partition count and with
    how much it had written since the last flush, rather than being a setting an operator sizes a
    container by. Memtables past their share are flushed to SST files early; the limit is soft
    (writers never stall on it), so a flush that falls behind may overshoot it briefly."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"store memory must be positive, got {total_bytes} bytes")
        self.total_bytes = total_bytes
        self.cache = Cache(total_bytes)
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(total_bytes // 2, False, self.cache)
        # each memtable is small enough that several stores share the memtable half between them
        self.write_buffer_size = max(1 << 20, min(_MAX_WRITE_BUFFER, total_bytes // 16))

    @staticmethod
    def shared(total_mb: int = DEFAULT_STORE_MEMORY_MB) -> StoreMemory:
        """The process's budget of ``total_mb`` MiB: stores opened with the same setting share it.
        Agent threads open their stores concurrently, hence the lock: two budgets would double it."""
        with _SHARED_LOCK:
            memory = _SHARED.get(total_mb)
            if memory is None:
                memory = _SHARED[total_mb] = StoreMemory(total_mb << 20)
            return memory

    def usage(self) -> int:
        """Bytes held now: block cache contents plus the memtables charged to it."""
        return self.cache.get_usage()

    def configure(self, options: Options, table: BlockBasedOptions) -> None:
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(3)


class KeyValueStore:
    """Primary records plus derived indexes; subclasses give get/range/write primitives.

    The two time indexes (timers by due time, seen keys by expiry) are queues: entries are added
    ahead of now and deleted once due, most timers long before (an order that completes cancels its
    timeout). In RocksDB a deleted entry stays as a tombstone until compaction, and a scan from the
    start of the index steps over every one of them: 20,000 cancelled timers made each look for due
    timers cost 3–9 ms, and the worker looks every loop, per partition, so the cost grew with every
    order handled (benchmarks/RESULTS.md, "Timer scans over tombstones"). Each index therefore keeps
    a floor, a due time no live entry is below, and scans start there. A scan raises the floor to
    the earliest entry it found due or, when none was, to the first entry not due yet, so that no
    look scans before then; :meth:`apply` lowers it for an entry put below it. A store just opened
    has no floor yet and scans from the start once. So the tombstones between the floor and the
    next live entry are stepped over once, not on every look."""

    def __init__(self) -> None:
        self._floors: dict[bytes, bytes] = {}  # index prefix -> packed due time no live entry is below

    # primitives ---------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def range(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:  # pragma: no cover
        raise NotImplementedError

    def _write(self, puts: dict[bytes, bytes], deletes: set[bytes]) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def changelog_offset(self) -> int | None:
        raw = self.get(_OFFSET)
        return None if raw is None else keys.unpack_u64(raw)

    # applying ------------------------------------------------------------------------------
    def apply(
        self,
        writes: Mapping[bytes, bytes | None],
        changelog_offset: int | None = None,
        known: Mapping[bytes, bytes | None] | None = None,
    ) -> None:
        """Apply primary records (``None`` deletes) and their index entries atomically, and remember
        the highest changelog offset they came from.

        ``known``: values of keys as this store holds them now (a batch view's reads, see
        :attr:`BatchView.reads`), so the index upkeep need not read again what the batch already
        read (every input reads its seen key, nearly always a miss, before writing it)."""
        puts: dict[bytes, bytes] = {}
        deletes: set[bytes] = set()
        if known is None:
            known = {}
        for key, value in writes.items():
            prefix = key[:2]
            if prefix == keys.SEEN:
                old = known[key] if key in known else self.get(key)
                if old is not None:
                    idx = keys.SEEN_EXPIRY + old[:8] + key[2:]
                    deletes.add(idx)
                    puts.pop(idx, None)
                if value is not None:
                    idx = keys.SEEN_EXPIRY + value[:8] + key[2:]
                    puts[idx] = b""
                    deletes.discard(idx)
                    self._lower_floor(keys.SEEN_EXPIRY, value[:8])
            elif prefix == keys.TIMER:
                old = known[key] if key in known else self.get(key)
                if old is not None:
                    idx = keys.TIMER_DUE + old[:8] + key[2:]
                    deletes.add(idx)
                    puts.pop(idx, None)
                if value is not None:
                    idx = keys.TIMER_DUE + value[:8] + key[2:]
                    puts[idx] = b""
                    deletes.discard(idx)
                    self._lower_floor(keys.TIMER_DUE, value[:8])
            if value is None:
                deletes.add(key)
                puts.pop(key, None)
            else:
                puts[key] = value
                deletes.discard(key)
        if changelog_offset is not None:
            puts[_OFFSET] = keys.pack_u64(changelog_offset)
        self._write(puts, deletes)

    # queries -------------------------------------------------------------------------------
    def due_timers(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """(due ms, timer store key) of timers due at ``now_ms``, earliest first."""
        return [
            (keys.unpack_u64(idx, 2), keys.TIMER + idx[10:]) for idx in self._due_entries(keys.TIMER_DUE, now_ms, limit)
        ]

    def expired_seen_keys(self, now_ms: int, limit: int) -> list[bytes]:
        """Seen-key store keys whose TTL ran out at ``now_ms``."""
        return [keys.SEEN + idx[10:] for idx in self._due_entries(keys.SEEN_EXPIRY, now_ms, limit)]

    def _due_entries(self, index: bytes, now_ms: int, limit: int) -> list[bytes]:
        """Entries of a time index due at ``now_ms`` (at most ``limit``, earliest first), scanned from
        the index's floor. The floor then rises to the earliest entry returned (it stays live until
        its caller deletes it) or, when none was due, to the first entry not due yet: until then a
        look needs no scan at all (the worker looks every loop, per partition)."""
        end = keys.pack_u64(now_ms + 1)
        floor = self._floors.get(index)
        if floor is not None and floor >= end:
            return []
        out: list[bytes] = []
        upcoming = _NO_ENTRY
        for idx, _ in self.range(index if floor is None else index + floor, keys.prefix_end(index)):
            due = idx[2:10]
            if due >= end:
                upcoming = due
                break
            out.append(idx)
            if len(out) >= limit:
                break
        self._floors[index] = out[0][2:10] if out else upcoming
        return out

    def _lower_floor(self, index: bytes, due: bytes) -> None:
        floor = self._floors.get(index)
        if floor is not None and due < floor:
            self._floors[index] = due

    def timers_of(self, key: bytes) -> Iterator[tuple[bytes, bytes]]:
        prefix = keys.TIMER + key + b"\x00"
        return self.range(prefix, keys.prefix_end(prefix))

    def close(self) -> None:
        pass


class MemoryStore(KeyValueStore):
    """Dict-backed store for the pure test driver (same layout and semantics as RocksDB)."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def range(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        ordered = self._sorted
        i = bisect.bisect_left(ordered, lo)
        snapshot = []
        while i < len(ordered) and ordered[i] < hi:
            snapshot.append((ordered[i], self._data[ordered[i]]))
            i += 1
        return iter(snapshot)

    def _write(self, puts: dict[bytes, bytes], deletes: set[bytes]) -> None:
        for key in deletes:
            self._data.pop(key, None)
        self._data.update(puts)
        self._sorted = None

    def items(self) -> list[tuple[bytes, bytes]]:
        return sorted(self._data.items())


class RocksStore(KeyValueStore):
    """One RocksDB per (agent, partition). The write-ahead log is off: the changelog is the log,
    and every write carries the changelog offset it reached, so a crash loses at most a suffix that
    the next restore replays."""

    def __init__(
        self, path: Path, max_age_ms: int | None = None, lock_wait_s: float = 20.0, memory: StoreMemory | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.memory = memory or StoreMemory.shared()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._options = Options(raw_mode=True)
        self._options.create_if_missing(True)
        # Bloom filters (10 bits a key, ~1% false positives): most reads are misses, the seen key of
        # every new input, and a miss then skips the SST files' index and data blocks (measured
        # 2.8 -> 0.5 µs on a store of 200k seen keys). Files written before keep working without.
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        self.memory.configure(self._options, table)
        self._options.set_block_based_table_factory(table)
        self._write_opts = WriteOptions()
        self._write_opts.disable_wal = True  # type: ignore[method-assign,assignment] # a property, stubbed as a method
        self._db = self._open(lock_wait_s)
        self.wiped_reason: str | None = None
        if self._db.get(_RESTORING) is not None:
            # A restore was interrupted: records past the last marker may have been applied.
            self.wipe()
            self.wiped_reason = "interrupted restore"
        if max_age_ms is not None:
            closed_at = self._db.get(_CLOSED_AT)
            if closed_at is not None and int(time.time() * 1000) - keys.unpack_u64(closed_at) > max_age_ms:
                # Tombstones older than the changelog's delete.retention.ms may be compacted away: a
                # store this old could keep keys that were deleted meanwhile. Start over.
                self.wipe()
                self.wiped_reason = "older than max_age_ms"

    def _open(self, lock_wait_s: float) -> Rdict:
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                return Rdict(str(self.path), options=self._options)
            except Exception as exc:  # rocksdict raises a plain Exception for "lock held"
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLockedError(f"{self.path}: locked by another process: {exc}") from exc
                time.sleep(0.2)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def range(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        # The upper bound is given to RocksDB, not only checked here: without it the iterator looks
        # for the first live key at or past ``lo`` before the check sees it, stepping over every
        # tombstone beyond ``hi`` up to that key (a timer index full of cancelled timers).
        bounds = ReadOptions()
        bounds.set_iterate_upper_bound(hi)
        for key, value in self._db.items(from_key=lo, read_opt=bounds):
            if key >= hi:  # type: ignore[operator] # raw_mode: keys are bytes
                return
            yield key, value  # type: ignore[misc]

    def _write(self, puts: dict[bytes, bytes], deletes: set[bytes]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key in deletes:
            batch.delete(key)
        for key, value in puts.items():
            batch.put(key, value)
        self._db.write(batch, self._write_opts)

    def set_restoring(self, restoring: bool) -> None:
        """Mark the store as being restored (a store found marked at open is wiped)."""
        if restoring:
            self._db.put(_RESTORING, b"1", self._write_opts)
        else:
            self._db.delete(_RESTORING, self._write_opts)
            self._db.flush(True)

    def wipe(self) -> None:
        self._db.close()
        Rdict.destroy(str(self.path), self._options)
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = Rdict(str(self.path), options=self._options)

    def close(self) -> None:
        if self._db is None:
            return
        try:
            self._db.put(_CLOSED_AT, keys.pack_u64(int(time.time() * 1000)), self._write_opts)
            self._db.flush(True)
        finally:
            self._db.close()
            self._db = None  # type: ignore[assignment]


class StateView(Protocol):
    """What handling an input needs of the state: reads and staged writes (``None`` deletes).
    A :class:`BatchView` in the worker and the driver; a bare store in a test that applies at once."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes | None) -> None: ...


class BatchView:
    """A batch's writes over a store: reads see them first; nothing reaches the store until
    :meth:`KeyValueStore.apply` is called with :attr:`writes` after the batch is durable.

    :attr:`reads` remembers what the store answered (the store does not change while the batch is in
    flight: it is written only by that apply), for :meth:`KeyValueStore.apply`'s ``known``."""

    __slots__ = ("store", "writes", "reads")

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self.writes: dict[bytes, bytes | None] = {}
        self.reads: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        writes = self.writes
        if key in writes:
            return writes[key]
        value = self.reads[key] = self.store.get(key)
        return value

    def put(self, key: bytes, value: bytes | None) -> None:
        self.writes[key] = value
