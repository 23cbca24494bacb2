"""`receiver_violations`: the PSP's and the sink's own ledgers judged against the topics."""

from __future__ import annotations

from typing import Any

from processors.agents.ledger import FlowLedger, receiver_violations
from processors.services.psp import summarize


def psp(charges: list[tuple[str, str, str]], refunds: list[tuple[str, str]]) -> dict[str, Any]:
    c = [{"order_id": o, "payment_id": p, "status": s} for o, p, s in charges]
    r = [{"order_id": o, "payment_id": p} for o, p in refunds]
    return {"charges": c, "refunds": r, "summary": summarize(c, r)}


def flow() -> FlowLedger:
    ledger = FlowLedger(order_prefix="o-")
    ledger.add_event("order.created", {"order_id": "o-1", "items": [1]}, 1)
    ledger.add_event("payment.authorized", {"order_id": "o-1"}, 2)
    ledger.add_event("order.confirmed", {"order_id": "o-1"}, 3)
    ledger.add_event("notification.sent", {"order_id": "o-1", "kind": "ORDER_CONFIRMED"}, 4)
    return ledger


def test_receivers_that_agree_with_the_topics_show_nothing():
    sink = {
        "deliveries": [{"order_id": "o-1", "kind": "ORDER_CONFIRMED"}],
        "summary": {"duplicate_notifications": []},
    }
    assert receiver_violations(flow(), psp([("o-1", "pay_a", "approved")], []), sink) == []


def test_a_double_charge_a_lost_refund_and_a_duplicate_delivery_are_named():
    ledger = flow()
    ledger.add_event("order.created", {"order_id": "o-2", "items": [1]}, 1)
    ledger.add_event("payment.authorized", {"order_id": "o-2"}, 2)
    ledger.add_event("order.cancelled", {"order_id": "o-2", "reason": "OUT_OF_STOCK"}, 3)
    charges = [("o-1", "pay_a", "approved"), ("o-1", "pay_b", "approved"), ("o-2", "pay_c", "approved")]
    sink = {
        "deliveries": [{"order_id": "o-1", "kind": "ORDER_CONFIRMED"}] * 2,
        "summary": {"duplicate_notifications": ["o-1 ORDER_CONFIRMED x2"]},
    }
    found = receiver_violations(ledger, psp(charges, []), sink)
    assert "order o-1: charged 2 times at the PSP" in found
    assert "order o-2: charged at the PSP and cancelled, never refunded" in found
    assert "notification delivered twice: o-1 ORDER_CONFIRMED x2" in found


def test_a_reconciled_refund_of_a_charge_never_announced_holds_and_is_counted():
    """A killed worker's charge that no committed event records, found and refunded by the payments
    agent on the order's cancellation: the PSP shows the charge and its refund, the topics the
    cancellation and the refund only."""
    ledger = flow()
    ledger.add_event("order.created", {"order_id": "o-3", "items": [1]}, 1)
    ledger.add_event("order.cancelled", {"order_id": "o-3", "reason": "TIMEOUT"}, 2)
    ledger.add_event("payment.refunded", {"order_id": "o-3"}, 3)
    charges = [("o-1", "pay_a", "approved"), ("o-3", "pay_c", "approved")]
    assert receiver_violations(ledger, psp(charges, [("o-3", "pay_c")])) == []
    assert ledger.violations() == [] and ledger.summary()["reconciled_refunds"] == 1
    # without its refund at the PSP, the same topics are a refund of nothing
    found = receiver_violations(ledger, psp(charges, []))
    assert "order o-3: payment.refunded, no refund at the PSP" in found
    assert "order o-3: charged at the PSP, no payment.authorized" in found


def test_at_least_once_copies_of_one_event_are_repeats_and_two_keys_are_two_charges():
    ledger = FlowLedger(order_prefix="o-")
    ledger.add_event("order.created", {"order_id": "o-1", "items": [1]}, 1, "create-o-1")
    for copy in range(3):  # the same event, produced again by each replay
        ledger.add_event("payment.authorized", {"order_id": "o-1"}, 2 + copy, "pay-key-1")
    ledger.add_event("order.confirmed", {"order_id": "o-1"}, 9, "confirm-o-1")
    assert ledger.violations() == [] and ledger.summary()["repeated_copies"] == 2
    ledger.add_event("payment.authorized", {"order_id": "o-1"}, 10, "pay-key-2")  # another charge
    assert "order o-1: charged 2 times" in ledger.violations()
