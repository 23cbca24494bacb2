"""The payments agent: authorizes orders against the payment gateway, refunds cancelled ones.

Keyed by order id, so one order's payment has one writer. The state records what was done, so
an order is charged at most once and refunded at most once, whatever arrives twice or out of
order (a cancellation that overtakes its order means the order is never charged). Gateway calls
go through ``ctx.call`` within the limits of the ``payment-gateway`` dependency (timeout,
bulkhead, in-place retries, circuit breaker; settings may change them), and carry the call's
derived idempotency key: a handler replayed after a crash between the PSP's charge and the
commit sends the same key, and the PSP answers with its first answer instead of charging again.
Retries that are still transient after the in-place ones are retried by the engine with backoff.

The request bodies are functions of the input only (no clock), so a replay's body matches the
first and the PSP never refuses it as a reused key.
"""

from __future__ import annotations

from processors.agents.gateway import GatewayUnavailable, PaymentGateway
from processors.agents.rules import order_problems, refund_reason
from processors.runtime import App, Context, Event, RetryPolicy
from processors.runtime.dependencies import DependencyPolicy

GATEWAY = "payment-gateway"
CONSUMES = ("order.created", "order.cancelled")
PRODUCES = ("payment.authorized", "payment.declined", "payment.refunded")
# The client's own timeout (CHOREO_PSP_TIMEOUT_S, default 5 s) answers first; this one is the
# backstop for a call that hangs anyway. Three quick in-place tries with the same key, then the
# engine's backoff.
GATEWAY_POLICY = DependencyPolicy(
    timeout_s=10.0,
    max_concurrency=16,
    retry=RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, max_elapsed_s=5.0),
    retry_on=(GatewayUnavailable,),
)


def register(app: App, gateway: PaymentGateway) -> None:
    @app.agent(
        "payments",
        consumes=CONSUMES,
        produces=PRODUCES,
        version="1.0",
        transient=(GatewayUnavailable,),
        dependencies={GATEWAY: GATEWAY_POLICY},
    )
    def payments(event: Event, ctx: Context) -> None:
        if event.type == "order.created":
            _authorize(event, ctx, gateway)
        else:
            _refund_if_charged(event, ctx, gateway)


def _authorize(event: Event, ctx: Context, gateway: PaymentGateway) -> None:
    state, order = ctx.state, event.value
    if state.get("status") is not None or order_problems(order):
        return  # already handled, cancelled before it came, or invalid (the orders agent cancels it)
    answer = ctx.call(
        GATEWAY, gateway.authorize, order["order_id"], order["total_minor"], order["card_token"], order["currency"]
    )
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


def _refund_if_charged(event: Event, ctx: Context, gateway: PaymentGateway) -> None:
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
