"""The orders agent: the order state machine, keyed by order id.

created → AWAITING (payment and stock) → CONFIRMED or CANCELLED → SHIPPED (from CONFIRMED).
Answers from payments and inventory may arrive before the order itself (they come on other
topics of the same partition), so they are recorded whatever the status and the decision is
taken when both the order and the answers needed are in. A durable timer cancels an order whose
answers do not come in time. An event that makes no sense for the order's status (a second,
different order.created; a shipment for an order that is not confirmed) is dead-lettered as an
invalid transition, never silently applied.
"""

from __future__ import annotations

from typing import Any

from processors.agents.rules import order_problems
from processors.runtime import App, Context, Event, Reject, Timer

AWAITING, CONFIRMED, CANCELLED, SHIPPED = "AWAITING", "CONFIRMED", "CANCELLED", "SHIPPED"
TIMEOUT_TIMER = "flow-timeout"
INVALID_TRANSITION = "invalid_transition"

CONSUMES = (
    "order.created",
    "payment.authorized",
    "payment.declined",
    "inventory.reserved",
    "inventory.rejected",
    "shipment.requested",
    "payment.refunded",
    "inventory.released",
)
PRODUCES = ("order.confirmed", "order.cancelled")


def register(app: App, timeout_s: float, max_hops: int) -> None:
    """Declare the orders agent on `app`; orders still awaiting answers after `timeout_s` are cancelled."""

    def on_timer(timer: Timer, ctx: Context) -> None:
        if timer.name == TIMEOUT_TIMER and ctx.state.get("status") == AWAITING:
            _cancel(
                ctx,
                "TIMEOUT",
                f"no answer within {timeout_s:g}s "
                f"(payment: {ctx.state.get('payment') or 'none'}, stock: {ctx.state.get('stock') or 'none'})",
            )

    # an order confirmed or cancelled ends its flow: the engine observes the flow time there
    @app.agent(
        "orders",
        consumes=CONSUMES,
        produces=PRODUCES,
        version="1.0",
        on_timer=on_timer,
        max_hops=max_hops,
        terminal=PRODUCES,
    )
    def orders(event: Event, ctx: Context) -> None:
        handler = _HANDLERS[event.type]
        handler(event, ctx, timeout_s)


def _on_created(event: Event, ctx: Context, timeout_s: float) -> None:
    state = ctx.state
    if state.get("created"):
        raise Reject(
            INVALID_TRANSITION,
            f"order {event.key} was already created (status {state.get('status')}); "
            f"a second order.created with idempotency key {event.idempotency_key} is refused",
        )
    order = event.value
    state.update(created=True, total_minor=order["total_minor"], currency=order["currency"])
    problems = order_problems(order)
    if problems:
        _cancel(ctx, "INVALID", "; ".join(problems))
        return
    state["status"] = AWAITING
    ctx.schedule_timer(TIMEOUT_TIMER, delay_s=timeout_s)
    _decide(ctx)


def _on_answer(event: Event, ctx: Context, timeout_s: float) -> None:
    field, outcome = _ANSWERS[event.type]
    ctx.state[field] = outcome
    if ctx.state.get("status") == AWAITING:
        _decide(ctx)


def _on_compensated(event: Event, ctx: Context, timeout_s: float) -> None:
    """Refunds and releases close the books on a cancelled order; record them for the audit trail."""
    ctx.state.setdefault("compensations", []).append(event.type)


def _on_shipment(event: Event, ctx: Context, timeout_s: float) -> None:
    status = ctx.state.get("status")
    if status == SHIPPED:
        return
    if status != CONFIRMED:
        raise Reject(
            INVALID_TRANSITION,
            f"shipment.requested for order {event.key} in status {status or 'unknown'}; only a confirmed order ships",
        )
    ctx.state["status"] = SHIPPED
    ctx.state["shipment_id"] = event.value["shipment_id"]


def _decide(ctx: Context) -> None:
    state = ctx.state
    if state.get("payment") == "declined":
        _cancel(ctx, "PAYMENT_DECLINED", "the payment was declined")
    elif state.get("stock") == "rejected":
        _cancel(ctx, "OUT_OF_STOCK", "a line could not be reserved")
    elif state.get("payment") == "authorized" and state.get("stock") == "reserved":
        state["status"] = CONFIRMED
        ctx.cancel_timer(TIMEOUT_TIMER)
        ctx.emit(
            "order.confirmed",
            ctx.key,
            {
                "order_id": ctx.key,
                "total_minor": state["total_minor"],
                "currency": state["currency"],
                "confirmed_at": ctx.now_ms,
            },
        )


def _cancel(ctx: Context, reason: str, detail: str) -> None:
    ctx.state["status"] = CANCELLED
    ctx.state["cancel_reason"] = reason
    ctx.cancel_timer(TIMEOUT_TIMER)
    ctx.emit(
        "order.cancelled",
        ctx.key,
        {
            "order_id": ctx.key,
            "reason": reason,
            "detail": detail[:500],
            "cancelled_at": ctx.now_ms,
        },
    )


_ANSWERS: dict[str, tuple[str, str]] = {
    "payment.authorized": ("payment", "authorized"),
    "payment.declined": ("payment", "declined"),
    "inventory.reserved": ("stock", "reserved"),
    "inventory.rejected": ("stock", "rejected"),
}
_HANDLERS: dict[str, Any] = {
    "order.created": _on_created,
    "payment.authorized": _on_answer,
    "payment.declined": _on_answer,
    "inventory.reserved": _on_answer,
    "inventory.rejected": _on_answer,
    "shipment.requested": _on_shipment,
    "payment.refunded": _on_compensated,
    "inventory.released": _on_compensated,
}
