"""The stores' time indexes (timers by due time, seen keys by expiry) scan from a floor, not from
the start of the index: in RocksDB every cancelled or fired timer stays a tombstone until
compaction, and a scan from the start stepped over all of them on every loop of the worker.

The floor must never hide a live entry: checked against a plain scan of the whole index, on random
schedules, cancellations, firings and clocks that go back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.runtime.state import MemoryStore, RocksStore, keys


def _timer(n: int) -> bytes:
    return keys.timer_key(b"order-%d" % n, "timeout")


def _reference_due(store, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
    """The plain version: every entry of the index from its start."""
    hi = keys.TIMER_DUE + keys.pack_u64(now_ms + 1)
    out = [(keys.unpack_u64(idx, 2), keys.TIMER + idx[10:]) for idx, _ in store.range(keys.TIMER_DUE, hi)]
    return out[:limit]


def _reference_expired(store, now_ms: int, limit: int) -> list[bytes]:
    hi = keys.SEEN_EXPIRY + keys.pack_u64(now_ms + 1)
    return [keys.SEEN + idx[10:] for idx, _ in store.range(keys.SEEN_EXPIRY, hi)][:limit]


class ScanRecordingStore(MemoryStore):
    """A memory store that records where each range scan starts."""

    def __init__(self) -> None:
        super().__init__()
        self.scans_from: list[bytes] = []

    def range(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.scans_from.append(lo)
        return super().range(lo, hi)


def test_a_scan_starts_past_what_earlier_scans_found_gone():
    store = ScanRecordingStore()
    store.apply({_timer(n): keys.pack_u64(100 + n) + b"{}" for n in range(1000)})
    store.apply({_timer(n): None for n in range(1000)})  # every order completed: timers cancelled
    store.apply({_timer(5000): keys.pack_u64(90_000) + b"{}"})
    assert store.due_timers(60_000, 10) == []
    assert store.scans_from == [keys.TIMER_DUE]  # the first look scans from the start, once
    assert store.due_timers(60_010, 10) == []
    assert store.due_timers(89_999, 10) == []
    assert len(store.scans_from) == 1  # nothing is due before the first live entry: no scan
    assert store.due_timers(90_000, 10) == [(90_000, _timer(5000))]
    # the next scan starts at that entry: past the 1,000 cancelled ones
    assert store.scans_from[-1] == keys.TIMER_DUE + keys.pack_u64(90_000)
    store.apply({_timer(5000): None})
    assert store.due_timers(90_001, 10) == []
    store.apply({_timer(7): keys.pack_u64(95_000) + b"{}"})  # scheduled after the index was empty
    assert store.due_timers(95_000, 10) == [(95_000, _timer(7))]


def test_an_entry_put_below_the_floor_is_found():
    store = MemoryStore()
    assert store.due_timers(10_000, 10) == []  # floor now past 10,000
    store.apply({_timer(1): keys.pack_u64(500) + b"{}"})  # a clock that went back, or a timer due already
    assert store.due_timers(600, 10) == [(500, _timer(1))]
    assert store.expired_seen_keys(10_000, 10) == []
    seen = keys.seen_key("a")
    store.apply({seen: keys.pack_u64(700)})
    assert store.expired_seen_keys(800, 10) == [seen]


def test_a_due_entry_left_in_place_is_found_again():
    """A timer of a key with an input in flight is skipped and fired on a later turn."""
    store = MemoryStore()
    store.apply({_timer(1): keys.pack_u64(100) + b"{}", _timer(2): keys.pack_u64(200) + b"{}"})
    assert store.due_timers(300, 10) == [(100, _timer(1)), (200, _timer(2))]
    store.apply({_timer(2): None})  # only the second fired
    assert store.due_timers(300, 10) == [(100, _timer(1))]
    assert store.due_timers(300, 1) == [(100, _timer(1))]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 30), st.integers(0, 400)),
        st.tuples(st.just("cancel"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("fire"), st.integers(0, 400), st.integers(1, 4)),
        st.tuples(st.just("see"), st.integers(0, 30), st.integers(0, 400)),
        st.tuples(st.just("purge"), st.integers(0, 400), st.integers(1, 4)),
    ),
    max_size=60,
)


def _check_against_reference(store, ops) -> None:
    for op, a, b in ops:
        if op == "schedule":
            store.apply({_timer(a): keys.pack_u64(b) + b"{}"})
        elif op == "cancel":
            store.apply({_timer(a): None})
        elif op == "see":
            store.apply({keys.seen_key(str(a)): keys.pack_u64(b)})
        elif op == "fire":
            expected = _reference_due(store, a, b)
            assert store.due_timers(a, b) == expected
            # fire every other one; the rest stay (their key was busy)
            store.apply({key: None for _, key in expected[::2]})
        else:
            expected_seen = _reference_expired(store, a, b)
            assert store.expired_seen_keys(a, b) == expected_seen
            store.apply({key: None for key in expected_seen})


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_memory_store_scans_match_a_scan_from_the_start(ops):
    _check_against_reference(MemoryStore(), ops)


@pytest.fixture(scope="module")
def rocks_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("time-index")


@settings(max_examples=40, deadline=None)
@given(_ops)
def test_rocks_store_scans_match_a_scan_from_the_start(rocks_dir, ops):
    store = RocksStore(rocks_dir / "s")
    try:
        store.wipe()
        _check_against_reference(store, ops)
    finally:
        store.close()
