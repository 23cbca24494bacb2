"""The invariants `choreo verify` checks, each shown to catch the breach it names."""

from __future__ import annotations

from processors.agents.catalog import PLENTY
from processors.agents.ledger import FlowLedger, percentiles


def created(ledger: FlowLedger, order_id: str, lines: int = 1, at: int = 0) -> None:
    ledger.add_event("order.created", {"order_id": order_id, "items": [{}] * lines}, at)


def test_a_clean_flow_has_no_violations_and_summarises():
    ledger = FlowLedger()
    created(ledger, "o1", at=1000)
    ledger.add_event("payment.authorized", {"order_id": "o1"}, 1010)
    ledger.add_event(
        "stock.line.reserved",
        {"order_id": "o1", "line_index": 0, "sku": "SKU-0001", "qty": 2, "available_after": PLENTY - 2},
        1020,
    )
    ledger.add_event("order.confirmed", {"order_id": "o1"}, 1100)
    ledger.add_event("notification.sent", {"order_id": "o1", "kind": "ORDER_CONFIRMED"}, 1200)
    created(ledger, "o2", at=2000)
    ledger.add_event("order.cancelled", {"order_id": "o2", "reason": "PAYMENT_DECLINED"}, 2300)
    ledger.add_input("orders", "order.created", 0, 5)
    ledger.add_audit(
        {"outcome": "PROCESSED", "agent_name": "orders", "topic": "order.created", "partition": 0, "offset": 5}
    )
    ledger.add_audit(
        {"outcome": "DUPLICATE", "agent_name": "orders", "topic": "order.created", "partition": 0, "offset": 6}
    )
    ledger.add_dead_letter("undecodable")
    summary = ledger.summary()
    assert summary["invariant_violations"] == []
    assert summary["terminal"] == {"cancelled_payment_declined": 1, "confirmed": 1}
    assert summary["non_terminal"] == 0 and summary["orders"] == 2
    assert summary["duplicates_dropped"] == 1 and summary["dead_lettered"] == {"undecodable": 1}
    assert summary["audit_completeness"] == 1.0
    assert summary["flow_time_ms"]["p50"] == 200.0


def test_each_breach_is_named():
    ledger = FlowLedger()
    created(ledger, "twice")
    ledger.add_event("order.confirmed", {"order_id": "twice"}, 1)
    ledger.add_event("order.cancelled", {"order_id": "twice", "reason": "TIMEOUT"}, 2)
    created(ledger, "open")
    ledger.add_event("order.confirmed", {"order_id": "ghost"}, 1)
    created(ledger, "charged")
    ledger.add_event("payment.authorized", {"order_id": "charged"}, 1)
    ledger.add_event("payment.authorized", {"order_id": "charged"}, 2)
    ledger.add_event("order.cancelled", {"order_id": "charged", "reason": "TIMEOUT"}, 3)
    ledger.add_event("payment.refunded", {"order_id": "free"}, 1)
    ledger.add_event("notification.sent", {"order_id": "twice", "kind": "ORDER_CONFIRMED"}, 1)
    ledger.add_event("notification.sent", {"order_id": "twice", "kind": "ORDER_CONFIRMED"}, 2)
    created(ledger, "held")
    ledger.add_event(
        "stock.line.reserved",
        {"order_id": "held", "line_index": 0, "sku": "OOS-01", "qty": 1, "available_after": -1},
        1,
    )
    ledger.add_event("order.cancelled", {"order_id": "held", "reason": "OUT_OF_STOCK"}, 2)
    ledger.add_input("orders", "order.created", 0, 1)
    violations = ledger.violations()
    expected = [
        "order twice: 2 terminal events (order.confirmed, order.cancelled)",
        "order open: no terminal event",
        "order ghost: terminal event for an order that was never created",
        "order charged: charged 2 times",
        "order charged: charged but neither confirmed nor refunded",
        "order free: refunded without an authorized payment, and not cancelled",
        "SKU OOS-01: stock went negative (-1) reserving for order held",
        "order held line 0: cancelled but OOS-01 x1 still held",
        "SKU OOS-01: 1 units held, more than the opening stock 0",
        "order twice: 2 notifications of kind ORDER_CONFIRMED",
        "1 handled inputs have no audit record: orders order.created[0]@1",
    ]
    for line in expected:
        assert line in violations, line
    assert len(violations) == len(expected)
    assert "order open: no terminal event" not in ledger.violations(settled=False)


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert percentiles([7]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert percentiles(list(range(1, 101)))["p50"] == 50.5
