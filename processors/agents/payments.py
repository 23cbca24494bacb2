"""The payments agent: authorizes orders against the payment gateway, refunds cancelled ones.

Keyed by order id, so one order's payment has one writer. The state records what was done, so
an order is charged at most once and refunded at most once, whatever arrives twice or out of
order (a cancellation that overtakes its order means the order is never charged). Gateway calls
are awaited through ``ctx.call_async`` (the handler is ``async def``) within the limits of the
``payment-gateway`` dependency (timeout, bulkhead, in-place retries, circuit breaker; settings may
change them), and carry the call's derived idempotency key: a handler replayed after a crash
between the PSP's charge and the commit sends the same key, and the PSP answers with its first
answer instead of charging again.
Retries that are still transient after the in-place ones are retried by the engine with backoff.

The request bodies are functions of the input only (no clock), so a replay's body matches the
first and the PSP never refuses it as a reused key.
"""

from __future__ import annotations

from typing import Any

from processors.agents.gateway import Authorization, GatewayUnavailable, PaymentGateway
from processors.agents.rules import order_problems, refund_reason
from processors.runtime import App, Context, Event, RetryPolicy
from processors.runtime.agent import DEFAULT_MAX_IN_FLIGHT
from processors.runtime.dependencies import DependencyPolicy

GATEWAY = "payment-gateway"
CONSUMES = ("order.created", "order.cancelled")
PRODUCES = ("payment.authorized", "payment.declined", "payment.refunded")
# The client's own timeout (CHOREO_PSP_TIMEOUT_S, default 5 s) answers first; this one is the
# backstop for a call that hangs anyway. Three quick in-place tries with the same key, then the
# engine's backoff.
# As many calls at once as the handler has inputs in flight by default: the bulkhead then never
# refuses a call of one agent session (settings can lower either).
GATEWAY_POLICY = DependencyPolicy(
    timeout_s=10.0,
    max_concurrency=DEFAULT_MAX_IN_FLIGHT,
    retry=RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, max_elapsed_s=5.0),
    retry_on=(GatewayUnavailable,),
)


def register(app: App, gateway: PaymentGateway) -> None:
    """An ``async def`` handler: the gateway's answer is awaited (``ctx.call_async``), so the
    payments of other orders go on while one waits on the PSP (``max_in_flight`` of them at once;
    ``[agents.payments] max_in_flight = 1`` handles one at a time). One order's events stay in order."""

    @app.agent(
        "payments",
        consumes=CONSUMES,
        produces=PRODUCES,
        version="1.0",
        transient=(GatewayUnavailable,),
        dependencies={GATEWAY: GATEWAY_POLICY},
    )
    async def payments(event: Event, ctx: Context) -> None:
        if event.type == "order.created":
            charge = _charge_of(event, ctx)
            if charge is not None:
                _record_answer(ctx, event.value, await ctx.call_async(GATEWAY, gateway.authorize_async, *charge))
        else:
            refund = _refund_of(ctx)
            if refund is not None:
                await ctx.call_async(GATEWAY, gateway.refund_async, *refund)
                _record_refund(event, ctx)


def _charge_of(event: Event, ctx: Context) -> tuple[str, int, str, str] | None:
    """The authorize call's arguments, or None when the order is not to be charged: handled
    already, cancelled before it came, or invalid (the orders agent cancels it)."""
    order = event.value
    if ctx.state.get("status") is not None or order_problems(order):
        return None
    return order["order_id"], order["total_minor"], order["card_token"], order["currency"]


def _record_answer(ctx: Context, order: dict[str, Any], answer: Authorization | None) -> None:
    state = ctx.state
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


def _refund_of(ctx: Context) -> tuple[str, str, int] | None:
    """The refund call's arguments when the order was charged; a cancellation that overtook its
    order is remembered, so the order is never charged."""
    state = ctx.state
    status = state.get("status")
    if status is None:
        state["status"] = "cancelled_before_payment"
        return None
    if status != "authorized":
        return None
    return ctx.key, state["payment_id"], state["amount_minor"]


def _record_refund(event: Event, ctx: Context) -> None:
    state = ctx.state
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
