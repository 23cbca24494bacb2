"""The notifications agent: tells the customer once per order and kind (confirmed, cancelled,
shipped), never twice, whatever is redelivered.

The recipient comes from `order.created`; an outcome that overtakes its order waits in the state
until the address is known.
"""

from __future__ import annotations

from processors.runtime import App, Context, Event

CONSUMES = ("order.created", "order.confirmed", "order.cancelled", "shipment.requested")
PRODUCES = ("notification.sent",)
KIND_OF = {
    "order.confirmed": "ORDER_CONFIRMED",
    "order.cancelled": "ORDER_CANCELLED",
    "shipment.requested": "ORDER_SHIPPED",
}


def register(app: App) -> None:
    @app.agent("notifications", consumes=CONSUMES, produces=PRODUCES, version="1.0")
    def notifications(event: Event, ctx: Context) -> None:
        state = ctx.state
        if event.type == "order.created":
            state.setdefault("recipient", event.value["customer_email"])
        else:
            pending = state.setdefault("pending", [])
            kind = KIND_OF[event.type]
            if kind not in pending and kind not in state.get("sent", []):
                pending.append(kind)
        if state.get("recipient"):
            _send_pending(ctx)


def _send_pending(ctx: Context) -> None:
    state = ctx.state
    sent = state.setdefault("sent", [])
    for kind in state.pop("pending", []):
        if kind in sent:
            continue
        sent.append(kind)
        ctx.emit(
            "notification.sent",
            ctx.key,
            {
                "order_id": ctx.key,
                "notification_id": f"ntf_{ctx.key}_{kind.lower()}",
                "kind": kind,
                "channel": "EMAIL",
                "recipient": state["recipient"],
                "sent_at": ctx.now_ms,
            },
        )
