"""`benchmarks/broker_requests.py`: a flow point can say how many requests of each type the broker
served per order (its JMX request counts, read before and after the point)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import broker_requests  # noqa: E402


def test_counts_are_read_from_the_readers_lines_and_other_lines_are_skipped() -> None:
    text = "Produce\t120\nFetch\t40\nnot a count\nEndTxn\tx\nrecords_in\t900\n"
    assert broker_requests.parse_counts(text) == {"Produce": 120, "Fetch": 40, "records_in": 900}


def test_requests_per_order_rank_what_moved_and_leave_out_what_did_not() -> None:
    before = {"Produce": 100, "Fetch": 50, "Metadata": 7, "records_in": 1_000}
    after = {"Produce": 2_600, "Fetch": 810, "Metadata": 7, "EndTxn": 186, "records_in": 11_000}
    per_order = broker_requests.per_order(before, after, orders=100)
    assert per_order == {"records_in": 100.0, "Produce": 25.0, "Fetch": 7.6, "EndTxn": 1.86}
    assert list(per_order) == ["records_in", "Produce", "Fetch", "EndTxn"]  # most first
    line = broker_requests.describe_requests(per_order, top=2)
    assert line == "broker requests per order: Produce 25, Fetch 7.6; records appended 100"
    assert broker_requests.per_order(None, after, 100) is None
    assert broker_requests.per_order(before, after, 0) is None
    assert broker_requests.describe_requests(None) == "broker requests not counted"


def test_no_broker_process_means_no_counts() -> None:
    assert broker_requests.BrokerRequests.attach(None) is None
