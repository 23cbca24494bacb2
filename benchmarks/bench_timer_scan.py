"""How long a look for due timers takes on a store whose timer index is full of cancelled timers
(what every completed order leaves: its timeout timer, deleted, a tombstone until compaction).

`python benchmarks/bench_timer_scan.py [--timers 20000] [--looks 200]`: schedules the timers,
cancels them, keeps one live timer past them, then times `due_timers` with the tombstones in the
memtable, and again after the store is closed (flushed to SST files) and reopened. The worker makes
such a look every loop, for every partition."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from processors.runtime.state import RocksStore, keys


def _timer(n: int) -> bytes:
    return keys.timer_key(b"order-%08d" % n, "timeout")


def _per_look_us(store: RocksStore, now_ms: int, looks: int) -> float:
    start = time.perf_counter()
    for _ in range(looks):
        store.due_timers(now_ms, 1000)
    return (time.perf_counter() - start) / looks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=20_000)
    parser.add_argument("--looks", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = RocksStore(Path(tmp) / "p0")
        now = int(time.time() * 1000)
        for lo in range(0, args.timers, 500):
            batch = range(lo, min(lo + 500, args.timers))
            store.apply({_timer(n): keys.pack_u64(now + 30_000 + n) + b"{}" for n in batch})
        for lo in range(0, args.timers, 500):
            store.apply({_timer(n): None for n in range(lo, min(lo + 500, args.timers))})
        store.apply({_timer(args.timers + 1): keys.pack_u64(now + 30_000 + 2 * args.timers) + b"{}"})
        look_at = now + 31_000  # a look 31 s on: past a thousand of the cancelled timers' due times
        memtable_us = _per_look_us(store, look_at, args.looks)
        store.close()  # flushes the memtables: the tombstones are in SST files when it reopens
        store = RocksStore(Path(tmp) / "p0")
        flushed_us = _per_look_us(store, look_at, args.looks)
        store.close()
    print(f"{args.timers:,} cancelled timers, memtable: {memtable_us:,.1f} µs per look")
    print(f"{args.timers:,} cancelled timers, flushed and reopened: {flushed_us:,.1f} µs per look")


if __name__ == "__main__":
    main()
