"""Per-partition state: a RocksDB store (or an in-memory one for the pure test driver) holding the
agent's per-key state, its seen idempotency keys and its timers, all backed by a compacted
changelog topic so that the local directory is only a cache."""

from processors.runtime.state import keys
from processors.runtime.state.store import (
    BatchView,
    KeyValueStore,
    MemoryStore,
    RocksStore,
    StateView,
    StoreLockedError,
    StoreMemory,
)

__all__ = [
    "BatchView",
    "KeyValueStore",
    "MemoryStore",
    "RocksStore",
    "StateView",
    "StoreLockedError",
    "StoreMemory",
    "keys",
]
