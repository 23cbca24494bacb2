"""The payments agent: authorizes orders against the payment gateway, refunds cancelled ones.

Keyed by order id, so one order's payment has one writer. The state records what was done, so
an order is charged at most once and refunded at most once, whatever arrives twice or out of
order (a cancellation that overtakes its order means the order is never charged, and what a lost
attempt may have charged is found at the PSP and refunded). Gateway calls
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
CANCELLED_FIRST = "cancelled_before_payment"
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
            await _on_created(event, ctx, gateway)
        else:
            await _on_cancelled(event, ctx, gateway)


async def _on_created(event: Event, ctx: Context, gateway: PaymentGateway) -> None:
    """Charge the order once. An order whose cancellation came first is never charged; but the
    cancellation may have overtaken a *replay* of the order (a worker killed between the charge and
    its commit: order.created and order.cancelled are on two topics, and nothing orders them), so
    what the PSP booked for it is refunded."""
    if ctx.state.get("status") == CANCELLED_FIRST:
        await _refund_booked(ctx, gateway, ctx.state["cancel_reason"])
        return
    charge = _charge_of(event, ctx)
    if charge is not None:
        _record_answer(ctx, event.value, await ctx.call_async(GATEWAY, gateway.authorize_async, *charge))


async def _on_cancelled(event: Event, ctx: Context, gateway: PaymentGateway) -> None:
    """Refund a charged order once. A cancellation that finds no payment is remembered, so the order
    is never charged, and reconciled: a lost attempt may have charged it (see :func:`_on_created`)."""
    state = ctx.state
    status, reason = state.get("status"), event.value["reason"]
    if status is None:
        state.update(status=CANCELLED_FIRST, cancel_reason=reason)
        await _refund_booked(ctx, gateway, reason)
    elif status == "authorized":
        await ctx.call_async(GATEWAY, gateway.refund_async, ctx.key, state["payment_id"], state["amount_minor"])
        _record_refund(ctx, reason)


async def _refund_booked(ctx: Context, gateway: PaymentGateway, reason: str) -> None:
    """Look up the order's charges at the PSP (never charging) and refund each approved one. A
    charge refunded already (by a lost attempt of this handling) is refunded once all the same: the
    PSP answers that it is, and the refund is announced, since the lost attempt's announcement was
    not committed."""
    for charge in await ctx.call_async(GATEWAY, gateway.charges_of_async, ctx.key):
        if charge.approved:
            await ctx.call_async(GATEWAY, gateway.refund_async, ctx.key, charge.payment_id, charge.amount_minor)
            ctx.state.update(payment_id=charge.payment_id, amount_minor=charge.amount_minor, currency=charge.currency)
            _record_refund(ctx, reason)


def _charge_of(event: Event, ctx: Context) -> tuple[str, int, str, str] | None:
    """The authorize call's arguments, or None when the order is not to be charged: handled
    already, or invalid (the orders agent cancels it; remembered, so its cancellation needs no
    reconciliation)."""
    order = event.value
    if ctx.state.get("status") is not None:
        return None
    if order_problems(order):
        ctx.state["status"] = "invalid"
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


def _record_refund(ctx: Context, cancel_reason: str) -> None:
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
            "reason": refund_reason(cancel_reason),
            "refunded_at": ctx.now_ms,
        },
    )
