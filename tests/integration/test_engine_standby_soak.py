"""Warm standbys at a SIGKILL, between two worker processes (soak: about a minute). The survivor
takes the killed worker's partition over from its standby copy, and its restore reads only the
changelog's tail; without standbys it reads the whole changelog. Judged from the survivor's log
(the hand-over and the restore's record count), never from wall time: the time to resume is the
benchmark's (benchmarks/failover.py, figures in benchmarks/RESULTS.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from processors.localbroker.broker import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import failover as bench  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(600)]

EVENTS = 5_000  # a partition: about 7,000 changelog records each


def test_a_standby_takes_over_after_a_sigkill_reading_only_the_tail(kafka_bootstrap):
    warm = bench.failover(kafka_bootstrap, 1, EVENTS, "exactly_once", (free_port(), free_port()))
    assert warm.handed_over, "the survivor started from its standby copy"
    assert warm.changelog_records > EVENTS
    assert warm.restore_records <= warm.changelog_records // 20, "the restore read only the tail"


def test_without_standbys_the_survivor_replays_the_changelog(kafka_bootstrap):
    cold = bench.failover(kafka_bootstrap, 0, EVENTS, "exactly_once", (free_port(), free_port()))
    assert not cold.handed_over
    assert cold.restore_records >= cold.changelog_records * 9 // 10, "the survivor's copy was a stale one"
