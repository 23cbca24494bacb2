"""The payments agent: authorizes orders against the payment gateway, refunds cancelled ones.

Keyed by order id, so one order's payment has one writer. The state records what was done, so
an order is charged at most once and refunded at most once, whatever arrives twice or out of
order (a cancellation that overtakes its order means the order is never charged). Gateway calls
go through the engine's circuit breaker; the gateway's transient failures are retried by the
engine with backoff.
"""

from __future__ import annotations

from processors.agents.gateway import GatewayUnavailable, SimulatedPaymentGateway
from processors.agents.rules import order_problems, refund_reason
from processors.runtime import App, Context, Event

GATEWAY = "payment-gateway"
CONSUMES = ("order.created", "order.cancelled")
PRODUCES = ("payment.authorized", "payment.declined", "payment.refunded")


def register(app: App, gateway: SimulatedPaymentGateway) -> None:
    @app.agent(
        "payments",
        consumes=CONSUMES,
        produces=PRODUCES,
        version="1.0",
        transient=(GatewayUnavailable,),
        dependencies=[GATEWAY],
    )
    def payments(event: Event, ctx: Context) -> None:
        if event.type == "order.created":
            _authorize(event, ctx, gateway)
        else:
            _refund_if_charged(event, ctx, gateway)


def _authorize(event: Event, ctx: Context, gateway: SimulatedPaymentGateway) -> None:
    state, order = ctx.state, event.value
    if state.get("status") is not None or order_problems(order):
        return  # already handled, cancelled before it came, or invalid (the orders agent cancels it)
    answer = ctx.call(GATEWAY, gateway.authorize, order["order_id"], order["total_minor"], order["card_token"])
    if answer is None:
        state["status"] = "no_answer"  # the PSP never answered: the order's timeout cancels it
        return
    common = {
        "order_id": order["order_id"],
        "payment_id": answer.payment_id,
        "amount_minor": order["total_minor"],
        "currency": order["currency"],
    }
    state.update(payment_id=answer.payment_id, amount_minor=order["total_minor"], currency=order["currency"])
    if answer.approved:
        state["status"] = "authorized"
        ctx.emit("payment.authorized", ctx.key, {**common, "authorized_at": ctx.now_ms})
    else:
        state["status"] = "declined"
        ctx.emit("payment.declined", ctx.key, {**common, "reason": answer.decline_reason, "declined_at": ctx.now_ms})


def _refund_if_charged(event: Event, ctx: Context, gateway: SimulatedPaymentGateway) -> None:
    state = ctx.state
    status = state.get("status")
    if status is None:
        state["status"] = "cancelled_before_payment"
        return
    if status != "authorized":
        return
    ctx.call(GATEWAY, gateway.refund, ctx.key, state["payment_id"], state["amount_minor"])
    state["status"] = "refunded"
    ctx.emit(
        "payment.refunded",
        ctx.key,
        {
            "order_id": ctx.key,
            "payment_id": state["payment_id"],
            "amount_minor": state["amount_minor"],
            "currency": state["currency"],
            "reason": refund_reason(event.value["reason"]),
            "refunded_at": ctx.now_ms,
        },
    )
