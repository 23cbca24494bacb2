"""The commerce choreography end to end without Kafka: happy path, each compensation path, the
timeout path, invalid orders and transitions, and once-only effects under redelivery."""

from __future__ import annotations

import pytest

from processors.agents import notifications
from processors.agents.catalog import PLENTY
from processors.agents.gateway import Authorization, GatewayRules, SimulatedPaymentGateway
from processors.runtime import App
from processors.runtime.testing import AgentDriver
from tests.unit.commerce_flow import CommerceFlow, order


def test_happy_path_confirms_ships_and_notifies_once():
    flow = CommerceFlow()
    flow.place(order())
    assert flow.of("order.confirmed") == [
        {
            "order_id": "ord-1",
            "total_minor": 5000,
            "currency": "EUR",
            "confirmed_at": flow.of("order.confirmed")[0]["confirmed_at"],
        }
    ]
    assert flow.of("order.cancelled") == []
    assert [s["shipment_id"] for s in flow.of("shipment.requested")] == ["shp_ord-1"]
    assert sorted(n["kind"] for n in flow.of("notification.sent")) == ["ORDER_CONFIRMED", "ORDER_SHIPPED"]
    assert flow.stored("orders", "ord-1")["status"] == "SHIPPED"
    assert flow.drivers["stock"].state("SKU-0001") == {"available": PLENTY - 2}
    assert flow.gateway.charges == {"ord-1": 1} and flow.gateway.refunds == {}
    assert flow.drivers["orders"].timers("ord-1") == {}
    assert flow.dead_letters() == []


def test_declined_payment_with_stock_reserved_releases_the_stock():
    flow = CommerceFlow()
    flow.place(order(card="tok_flagged_1"))
    [cancelled] = flow.of("order.cancelled")
    assert cancelled["reason"] == "PAYMENT_DECLINED"
    assert flow.of("payment.declined")[0]["reason"] == "FRAUD_SUSPECTED"
    assert [r["items"] for r in flow.of("inventory.released")] == [
        [{"sku": "SKU-0001", "qty": 2}, {"sku": "SKU-0002", "qty": 2}]
    ]
    assert flow.drivers["stock"].state("SKU-0001") == {"available": PLENTY}
    assert flow.of("payment.refunded") == [] and flow.gateway.charges == {}
    assert [n["kind"] for n in flow.of("notification.sent")] == ["ORDER_CANCELLED"]


def test_out_of_stock_with_payment_authorized_refunds_and_releases_held_lines():
    flow = CommerceFlow()
    flow.place(order(skus=("SKU-0001", "OOS-01")))
    [cancelled] = flow.of("order.cancelled")
    assert cancelled["reason"] == "OUT_OF_STOCK"
    assert flow.of("inventory.rejected")[0]["items"] == [{"sku": "OOS-01", "qty": 2}]
    assert [r["reason"] for r in flow.of("payment.refunded")] == ["OUT_OF_STOCK"]
    assert flow.gateway.charges == {"ord-1": 1} and flow.gateway.refunds == {"ord-1": 1}
    released = flow.of("stock.line.released")
    assert [(r["sku"], r["qty"], r["available_after"]) for r in released] == [("SKU-0001", 2, PLENTY)]
    assert flow.drivers["stock"].state("OOS-01") is None  # a refused line changes nothing


def test_silent_payment_times_out_cancels_and_compensates():
    flow = CommerceFlow(timeout_s=60)
    flow.place(order(card="tok_silent_1"))
    assert flow.of("order.cancelled") == []
    assert flow.stored("orders", "ord-1")["status"] == "AWAITING"
    flow.advance(59)
    assert flow.of("order.cancelled") == []
    flow.advance(2)
    [cancelled] = flow.of("order.cancelled")
    assert cancelled["reason"] == "TIMEOUT" and "payment: none, stock: reserved" in cancelled["detail"]
    assert len(flow.of("inventory.released")) == 1
    assert flow.drivers["stock"].state("SKU-0001") == {"available": PLENTY}
    flow.advance(3600)
    assert len(flow.of("order.cancelled")) == 1  # the timer fired once


def test_timeout_while_stock_answers_are_in_flight_releases_them_when_they_arrive():
    flow = CommerceFlow(timeout_s=5, hold={"stock.line.reserved"})
    flow.place(order(card="tok_silent_1"))
    flow.advance(6)
    assert [c["reason"] for c in flow.of("order.cancelled")] == ["TIMEOUT"]
    assert flow.of("stock.release.requested") == []
    flow.release_parked()
    assert sorted(r["sku"] for r in flow.of("stock.release.requested")) == ["SKU-0001", "SKU-0002"]
    assert flow.drivers["stock"].state("SKU-0002") == {"available": PLENTY}
    assert flow.stored("inventory", "ord-1")["status"] == "RELEASED"


def test_timeout_after_authorization_refunds():
    flow = CommerceFlow(timeout_s=5, hold={"stock.line.reserved", "stock.line.rejected"})
    flow.place(order())
    assert len(flow.of("payment.authorized")) == 1
    flow.advance(6)
    assert [c["reason"] for c in flow.of("order.cancelled")] == ["TIMEOUT"]
    assert [r["reason"] for r in flow.of("payment.refunded")] == ["TIMEOUT"]
    flow.release_parked()
    assert flow.of("order.confirmed") == []
    assert flow.stored("orders", "ord-1")["status"] == "CANCELLED"


def test_invalid_order_is_cancelled_and_never_charged_or_reserved():
    flow = CommerceFlow()
    flow.place(order(total_delta=1))
    [cancelled] = flow.of("order.cancelled")
    assert cancelled["reason"] == "INVALID"
    assert "total_minor: lines add up to 5000, order says 5001" in cancelled["detail"]
    assert flow.gateway.calls == 0 and flow.of("stock.reserve.requested") == []


def test_a_second_different_order_created_is_dead_lettered_as_invalid_transition():
    flow = CommerceFlow()
    flow.place(order())
    again = flow.drivers["orders"].send("order.created", order(), idempotency_key="another-key")
    assert again.outcome == "DEAD_LETTERED" and again.reason == "invalid_transition"
    assert "already created" in again.dlq_headers["choreo_dlq_error_message"]
    assert flow.stored("orders", "ord-1")["status"] == "SHIPPED"


def test_shipment_for_an_unconfirmed_order_is_dead_lettered():
    flow = CommerceFlow()
    result = flow.drivers["orders"].send(
        "shipment.requested",
        {"order_id": "ord-9", "shipment_id": "shp_ord-9", "items": [], "address": None, "requested_at": 0},
    )
    assert result.outcome == "DEAD_LETTERED" and result.reason == "invalid_transition"
    assert result.emitted == [] and flow.drivers["orders"].state("ord-9") is None


def test_redelivered_events_have_no_second_effect():
    flow = CommerceFlow()
    flow.place(order())
    delivered_once = list(flow.log)
    handled_before = len(flow.results)
    flow.deliver(delivered_once)
    redelivery = [r for _, r in flow.results[handled_before:]]
    assert redelivery and all(r.outcome == "DUPLICATE" and r.emitted == [] for r in redelivery)
    assert flow.gateway.charges == {"ord-1": 1}
    assert flow.drivers["stock"].state("SKU-0001") == {"available": PLENTY - 2}
    assert flow.stored("notifications", "ord-1")["sent"] == ["ORDER_CONFIRMED", "ORDER_SHIPPED"]


def test_cancellation_overtaking_its_order_means_no_charge_and_no_reservation():
    flow = CommerceFlow()
    flow.deliver([])
    payments, inventory = flow.drivers["payments"], flow.drivers["inventory"]
    cancel = {"order_id": "ord-1", "reason": "CUSTOMER_REQUEST", "detail": None, "cancelled_at": 0}
    assert payments.send("order.cancelled", cancel).outcome == "PROCESSED"
    assert inventory.send("order.cancelled", cancel).outcome == "PROCESSED"
    assert payments.send("order.created", order()).emitted == []
    assert inventory.send("order.created", order()).emitted == []
    assert flow.gateway.charges == {} and flow.gateway.refunds == {}
    assert flow.stored("payments", "ord-1")["status"] == "cancelled_before_payment"


CANCEL = {"order_id": "ord-1", "reason": "TIMEOUT", "detail": None, "cancelled_at": 0}


def _lost_attempts_charge(flow: CommerceFlow) -> str:
    """What a worker killed between the charge and its commit leaves: a charge at the PSP (under
    the key the handler's replay would send), nothing in the payments agent's state."""
    answer = flow.gateway.authorize("ord-1", 5000, "tok_ok", "EUR", idempotency_key="lost-attempt")
    assert answer is not None and answer.approved
    return answer.payment_id


def test_a_cancellation_overtaking_the_replay_of_a_charged_order_refunds_the_booked_charge_once():
    flow = CommerceFlow()
    payments = flow.drivers["payments"]
    payment_id = _lost_attempts_charge(flow)
    [refunded] = payments.send("order.cancelled", CANCEL).emitted_of("payment.refunded")
    assert refunded.value["payment_id"] == payment_id and refunded.value["amount_minor"] == 5000
    assert refunded.value["reason"] == "TIMEOUT"
    assert payments.send("order.created", order()).emitted == []  # the replay: never charged again
    assert flow.gateway.charges == {"ord-1": 1} and flow.gateway.refunds == {"ord-1": 1}
    assert flow.stored("payments", "ord-1")["status"] == "refunded"


def test_a_lost_charge_booked_after_the_cancellation_is_refunded_when_the_order_comes():
    flow = CommerceFlow()
    payments = flow.drivers["payments"]
    assert payments.send("order.cancelled", CANCEL).emitted == []  # nothing booked yet
    _lost_attempts_charge(flow)  # the PSP booked the lost attempt's charge after the look-up
    [refunded] = payments.send("order.created", order()).emitted_of("payment.refunded")
    assert refunded.value["reason"] == "TIMEOUT"
    assert flow.gateway.charges == {"ord-1": 1} and flow.gateway.refunds == {"ord-1": 1}


def test_a_charge_a_lost_attempt_refunded_already_is_announced_and_not_refunded_twice():
    flow = CommerceFlow()
    payment_id = _lost_attempts_charge(flow)
    assert flow.gateway.refund("ord-1", payment_id, 5000, idempotency_key="lost-refund") is True
    [refunded] = flow.drivers["payments"].send("order.cancelled", CANCEL).emitted_of("payment.refunded")
    assert refunded.value["payment_id"] == payment_id
    assert flow.gateway.refunds == {"ord-1": 1}


def test_an_invalid_orders_cancellation_needs_no_look_up_at_the_psp():
    flow = CommerceFlow()
    payments = flow.drivers["payments"]
    payments.send("order.created", order(total_delta=1))
    calls = flow.gateway.calls
    assert payments.send("order.cancelled", {**CANCEL, "reason": "INVALID"}).emitted == []
    assert flow.gateway.calls == calls


def test_transient_gateway_failures_are_retried_then_dead_lettered_when_exhausted():
    flaky = SimulatedPaymentGateway(GatewayRules(transient_failure_rate=1.0, seed=1))
    flow = CommerceFlow(gateway=flaky)
    result = flow.drivers["payments"].send("order.created", order())
    assert result.outcome == "DEAD_LETTERED" and result.reason == "retries_exhausted"
    assert int(result.dlq_headers["choreo_dlq_attempts"]) > 1
    assert flow.drivers["payments"].sleeps, "no backoff between attempts"
    assert flaky.charges == {}


@pytest.mark.parametrize("card,reason", [("tok_flagged_x", "FRAUD_SUSPECTED"), ("tok_expired_x", "CARD_EXPIRED")])
def test_gateway_decline_rules(card: str, reason: str):
    flow = CommerceFlow()
    flow.place(order(card=card))
    assert [d["reason"] for d in flow.of("payment.declined")] == [reason]


def test_amount_above_the_limit_is_declined_for_insufficient_funds():
    flow = CommerceFlow(gateway=SimulatedPaymentGateway(GatewayRules(decline_above_minor=4999)))
    flow.place(order())
    assert [d["reason"] for d in flow.of("payment.declined")] == ["INSUFFICIENT_FUNDS"]


def test_stock_never_goes_negative_and_refuses_unknown_skus():
    flow = CommerceFlow()
    stock = flow.drivers["stock"]
    ask = {"order_id": "o", "sku": "NOPE-1", "qty": 1, "line_index": 0, "line_count": 1, "requested_at": 0}
    [rejected] = stock.send("stock.reserve.requested", ask, key="NOPE-1").emitted
    assert rejected.value["reason"] == "UNKNOWN_SKU"
    [rejected] = stock.send("stock.reserve.requested", {**ask, "sku": "OOS-02"}, key="OOS-02").emitted
    assert rejected.value["reason"] == "OUT_OF_STOCK" and rejected.value["available"] == 0
    assert stock.state("OOS-02") is None


class OverlapGateway(SimulatedPaymentGateway):
    """Records how many authorizations are awaited at once (the PSP's latency is awaited)."""

    def __init__(self) -> None:
        super().__init__(GatewayRules(latency_s=0.02))
        self.inside = self.peak = 0

    async def authorize_async(
        self, order_id: str, amount_minor: int, card_token: str, currency: str = "EUR", idempotency_key: str = ""
    ) -> Authorization | None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            return await super().authorize_async(order_id, amount_minor, card_token, currency, idempotency_key)
        finally:
            self.inside -= 1


def test_payments_of_different_orders_are_awaited_at_once_and_each_order_is_charged_and_refunded_once():
    gateway = OverlapGateway()
    flow = CommerceFlow(gateway=gateway)
    payments = flow.drivers["payments"]
    orders = [order(f"ord-{i}") for i in range(12)]
    cancel = {"reason": "CUSTOMER_REQUEST", "detail": None, "cancelled_at": 0}
    events = [("order.created", o) for o in orders]
    events += [("order.cancelled", {**cancel, "order_id": f"ord-{i}"}) for i in range(4)]  # each after its order
    results = payments.send_many(events, max_in_flight=8)
    assert [r.outcome for r in results] == ["PROCESSED"] * 16
    assert 2 <= gateway.peak <= 8  # concurrent, within the bound
    assert gateway.charges == {f"ord-{i}": 1 for i in range(12)}
    assert gateway.refunds == {f"ord-{i}": 1 for i in range(4)}
    refunded = [e.value["order_id"] for r in results for e in r.emitted_of("payment.refunded")]
    assert sorted(refunded) == [f"ord-{i}" for i in range(4)]
    assert flow.stored("payments", "ord-0")["status"] == "refunded"
    assert flow.stored("payments", "ord-11")["status"] == "authorized"


def _answers_in(order_of_answers: list[str]) -> tuple[list, list]:
    """An order of two lines, the first reservable and the second not, its stock answers handed to
    a fresh inventory agent in the given order (as a killed worker's attempt and its replay may see
    them: they are on two topics). Its release requests and its inventory.rejected events."""
    flow = CommerceFlow()
    inventory = flow.drivers["inventory"]
    placed = order(skus=("SKU-0001", "OOS-01"))
    [line0, line1] = inventory.send("order.created", placed).emitted_of("stock.reserve.requested")
    answers = {
        "reserved": ("stock.line.reserved", {**line0.value, "available_after": 10, "reserved_at": 0}),
        "rejected": (
            "stock.line.rejected",
            {**line1.value, "available": 0, "reason": "OUT_OF_STOCK", "rejected_at": 0},
        ),
    }
    for name in order_of_answers:
        event_type, value = answers[name]
        value = {k: v for k, v in value.items() if k != "requested_at"}
        last = inventory.send(event_type, value)
    return last.emitted_of("stock.release.requested"), last.emitted_of("inventory.rejected")


def test_an_order_lines_release_has_one_key_whichever_answer_completes_the_order():
    releases_a, rejected_a = _answers_in(["reserved", "rejected"])
    releases_b, rejected_b = _answers_in(["rejected", "reserved"])
    assert len(releases_a) == len(releases_b) == 1 and len(rejected_a) == len(rejected_b) == 1
    assert releases_a[0].envelope.idempotency_key == releases_b[0].envelope.idempotency_key
    assert rejected_a[0].envelope.idempotency_key == rejected_b[0].envelope.idempotency_key
    # so the stock agent returns the units once, though both attempts asked
    stock = CommerceFlow().drivers["stock"]
    before = stock.state("SKU-0001")
    first = stock.send("stock.release.requested", releases_a[0].value, key="SKU-0001",
                       envelope=releases_a[0].envelope)  # fmt: skip
    second = stock.send("stock.release.requested", releases_b[0].value, key="SKU-0001",
                        envelope=releases_b[0].envelope)  # fmt: skip
    assert first.outcome == "PROCESSED" and second.outcome == "DUPLICATE"
    assert before != stock.state("SKU-0001")


def test_a_reservation_for_an_order_cancelled_before_it_came_is_returned():
    """at_least_once: a killed worker's attempt asked the stock agent for a line, and its replay
    saw the order's cancellation first (two topics) and never asked. The answer must give the
    units back, under the line's release key."""
    flow = CommerceFlow()
    inventory = flow.drivers["inventory"]
    cancel = {"order_id": "ord-1", "reason": "PAYMENT_DECLINED", "detail": None, "cancelled_at": 0}
    assert inventory.send("order.cancelled", cancel).emitted == []
    asked = {"order_id": "ord-1", "sku": "SKU-0001", "qty": 2, "line_index": 0, "line_count": 2}
    [release] = inventory.send("stock.line.reserved", {**asked, "available_after": 10, "reserved_at": 0}).emitted_of(
        "stock.release.requested"
    )
    assert (release.value["sku"], release.value["qty"], release.value["line_index"]) == ("SKU-0001", 2, 0)
    assert release.envelope.idempotency_key == "stock.release.requested:ord-1:0"
    rejected = {**asked, "available": 0, "reason": "OUT_OF_STOCK", "rejected_at": 0}
    assert inventory.send("stock.line.rejected", rejected).emitted == []  # nothing held: nothing to return


def _early_answers(inventory) -> None:
    """Both lines of order() answered "reserved" before the inventory agent's state has the order
    (a killed attempt's requests, answered; its replay sees the answers first)."""
    for index, sku in enumerate(("SKU-0001", "SKU-0002")):
        asked = {"order_id": "ord-1", "sku": sku, "qty": 2, "line_index": index, "line_count": 2}
        assert inventory.send("stock.line.reserved", {**asked, "available_after": 10, "reserved_at": 0}).emitted == []


def test_answers_that_came_before_their_order_complete_it_when_it_comes():
    inventory = CommerceFlow().drivers["inventory"]
    _early_answers(inventory)
    result = inventory.send("order.created", order())
    [reserved] = result.emitted_of("inventory.reserved")
    assert reserved.value["items"] == [{"sku": "SKU-0001", "qty": 2}, {"sku": "SKU-0002", "qty": 2}]
    assert "early" not in (inventory.state("ord-1") or {})


def test_reservations_that_came_before_a_cancelled_order_are_returned_on_the_cancellation():
    inventory = CommerceFlow().drivers["inventory"]
    _early_answers(inventory)
    cancel = {"order_id": "ord-1", "reason": "PAYMENT_DECLINED", "detail": None, "cancelled_at": 0}
    releases = inventory.send("order.cancelled", cancel).emitted_of("stock.release.requested")
    assert sorted((r.value["sku"], r.value["line_index"]) for r in releases) == [("SKU-0001", 0), ("SKU-0002", 1)]
    assert inventory.send("order.created", order()).emitted == []  # cancelled first: never reserved again


class RecordingSink:
    """A delivery sink that records the key of each delivery (as the sink service keys its ledger)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def deliver(self, order_id: str, kind: str, channel: str, recipient: str, idempotency_key: str = "") -> None:
        self.keys.append(idempotency_key)

    async def deliver_async(
        self, order_id: str, kind: str, channel: str, recipient: str, idempotency_key: str = ""
    ) -> None:
        self.keys.append(idempotency_key)


def _cancellation_notice(first: str) -> tuple[list[str], list[str]]:
    """The ORDER_CANCELLED notice of one order, its order and its cancellation handed to a fresh
    notifications agent in the given order: the sink's keys and the notification.sent keys."""
    sink = RecordingSink()
    app = App("notify-test")
    notifications.register(app, sink=sink)
    driver = AgentDriver(app, "notifications", now_ms=0)
    cancel = {"order_id": "ord-1", "reason": "TIMEOUT", "detail": None, "cancelled_at": 0}
    inputs = [("order.created", order()), ("order.cancelled", cancel)]
    sent = []
    for event_type, value in inputs if first == "order" else inputs[::-1]:
        sent += [e.envelope.idempotency_key for e in driver.send(event_type, value).emitted_of("notification.sent")]
    return sink.keys, sent


def test_a_notice_has_one_key_whichever_input_makes_it_due():
    """A killed attempt and its replay may see the order and its cancellation in either order
    (at_least_once sends the first attempt's delivery): the sink must see one notice."""
    assert _cancellation_notice("order") == _cancellation_notice("cancellation")
    keys, sent = _cancellation_notice("order")
    assert len(keys) == len(sent) == 1


def test_answers_before_their_order_are_kept_once_per_line_and_bounded():
    inventory = CommerceFlow().drivers["inventory"]
    asked = {"order_id": "ord-1", "sku": "SKU-0001", "qty": 1, "line_count": 2, "available_after": 1, "reserved_at": 0}
    for index in [0, 0, *range(1, 300)]:  # a repeat, then far more lines than any order has
        inventory.send("stock.line.reserved", {**asked, "line_index": index})
    kept = (inventory.state("ord-1") or {})["early"]
    assert len(kept) == 100 and sorted(k["line_index"] for k in kept) == list(range(100))
