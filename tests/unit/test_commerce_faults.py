"""The judge of the commerce fault run (tests/engine/commerce_faults.py): a clean set of ledgers
passes, and each kind of bad ledger (a double charge, a refund of nothing, a charged-then-cancelled
order left unrefunded, a notification delivered twice ...) is caught and counted."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.engine.commerce_faults import Figures, Judged, OrderOutcome, judge


def _orders() -> dict[str, OrderOutcome]:
    return {
        "ord-a": OrderOutcome("confirmed", "confirmed", shipped=True),
        "ord-b": OrderOutcome("out_of_stock", "cancelled_out_of_stock"),  # charged, then cancelled
        "ord-c": OrderOutcome("payment_declined", "cancelled_payment_declined"),
        "ord-d": OrderOutcome("timeout", "cancelled_timeout"),
    }


def _psp() -> dict[str, Any]:
    return {
        "charges": [
            {"order_id": "ord-a", "payment_id": "pay_a", "status": "approved"},
            {"order_id": "ord-b", "payment_id": "pay_b", "status": "approved", "created_ms": 61_250},
            {"order_id": "ord-c", "payment_id": "pay_c", "status": "declined"},
            {"order_id": "ord-d", "payment_id": "pay_d", "status": "pending"},
        ],
        "refunds": [{"order_id": "ord-b", "payment_id": "pay_b", "refund_id": "re_b"}],
    }


def _sink() -> dict[str, Any]:
    notices = [
        ("ord-a", "ORDER_CONFIRMED"),
        ("ord-a", "ORDER_SHIPPED"),
        ("ord-b", "ORDER_CANCELLED"),
        ("ord-c", "ORDER_CANCELLED"),
        ("ord-d", "ORDER_CANCELLED"),
    ]
    return {"deliveries": [{"order_id": o, "kind": k, "replays": 0} for o, k in notices]}


def test_clean_ledgers_pass_with_the_charged_then_cancelled_order_refunded_once():
    judged = judge(_orders(), _psp(), _sink())
    assert judged.failures() == {}, judged.notes
    assert (judged.charged_then_cancelled, judged.refunded_once) == (1, 1)
    assert (judged.approved, judged.charges, judged.refunds, judged.deliveries) == (2, 4, 1, 5)


Spoil = Callable[[dict[str, OrderOutcome], dict[str, Any], dict[str, Any]], None]


def _second_charge(orders, psp, sink) -> None:
    psp["charges"].append({"order_id": "ord-a", "payment_id": "pay_a2", "status": "approved"})


def _refund_of_nothing(orders, psp, sink) -> None:
    psp["refunds"].append({"order_id": "ord-c", "payment_id": "pay_c", "refund_id": "re_c"})


def _lost_refund(orders, psp, sink) -> None:
    psp["refunds"].clear()


def _second_refund(orders, psp, sink) -> None:
    # a second charge refunded too: each refund is of an approved charge, the order is refunded twice
    psp["charges"].append({"order_id": "ord-b", "payment_id": "pay_b2", "status": "approved"})
    psp["refunds"].append({"order_id": "ord-b", "payment_id": "pay_b2", "refund_id": "re_b2"})


def _refund_of_confirmed(orders, psp, sink) -> None:
    psp["refunds"].append({"order_id": "ord-a", "payment_id": "pay_a", "refund_id": "re_a"})


def _confirmed_free(orders, psp, sink) -> None:
    psp["charges"] = [c for c in psp["charges"] if c["order_id"] != "ord-a"]


def _notified_twice(orders, psp, sink) -> None:
    sink["deliveries"].append({"order_id": "ord-b", "kind": "ORDER_CANCELLED", "replays": 0})


def _never_notified(orders, psp, sink) -> None:
    sink["deliveries"] = [d for d in sink["deliveries"] if d["kind"] != "ORDER_SHIPPED"]


def _stalled(orders, psp, sink) -> None:
    orders["ord-d"] = OrderOutcome("timeout", None)


def _wrong_outcome(orders, psp, sink) -> None:
    orders["ord-c"] = OrderOutcome("payment_declined", "cancelled_out_of_stock")


@pytest.mark.parametrize(
    ("spoil", "figure"),
    [
        (_second_charge, "double_charges"),
        (_refund_of_nothing, "orphan_refunds"),
        (_lost_refund, "unrefunded"),
        (_second_refund, "double_refunds"),
        (_refund_of_confirmed, "wrong_refunds"),
        (_confirmed_free, "confirmed_uncharged"),
        (_notified_twice, "duplicate_notifications"),
        (_never_notified, "missing_notifications"),
        (_stalled, "non_terminal"),
        (_wrong_outcome, "wrong_outcomes"),
    ],
)
def test_each_bad_ledger_is_caught_and_named(spoil: Spoil, figure: str):
    orders, psp, sink = _orders(), copy.deepcopy(_psp()), copy.deepcopy(_sink())
    spoil(orders, psp, sink)
    judged = judge(orders, psp, sink)
    assert judged.failures().get(figure) == 1, (judged.failures(), judged.notes)
    assert any("ord-" in note for note in judged.notes)  # the order is named


def test_a_charged_order_that_timed_out_is_context_but_must_still_be_refunded():
    orders = _orders()
    orders["ord-b"] = OrderOutcome("out_of_stock", "cancelled_timeout")
    judged = judge(orders, _psp(), _sink())
    assert judged.failures() == {} and judged.timed_out_instead == 1
    psp = copy.deepcopy(_psp())
    psp["refunds"].clear()
    unrefunded = judge(orders, psp, _sink())
    assert unrefunded.failures() == {"unrefunded": 1}
    assert "ord-b (charged 00:01:01.250 UTC)" in unrefunded.notes[-1]  # set beside the kill lines


def _figures(**kwargs: Any) -> Figures:
    base: dict[str, Any] = {"verify_ok": True, "settled": True, "sigkills": 5, "judged": Judged()}
    return Figures("exactly_once", 2000, 5, 50.0, 0.03, **{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "failure"),
    [
        ({"verify_ok": False}, "verify_failed"),
        ({"settled": False}, "verify_failed"),
        ({"unexpected_exits": 1}, "unexpected_exits"),
        ({"sigkills": 3}, "kills_not_done"),
    ],
)
def test_the_run_fails_on_verify_a_stall_a_crash_or_kills_not_done(kwargs: dict[str, Any], failure: str):
    assert _figures().ok
    figures = _figures(**kwargs)
    assert not figures.ok and failure in figures.failures()
    assert figures.as_json()["ok"] is False and failure in figures.as_json()["failures"]


def test_the_json_figures_carry_the_ledger_counts_flat():
    judged = judge(_orders(), _psp(), _sink())
    data = _figures(judged=judged).as_json()
    assert data["ok"] is True and data["double_charges"] == 0 and data["refunded_once"] == 1
    assert "judged" not in data
