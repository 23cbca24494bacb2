"""The shipping agent: requests one shipment for each confirmed order.

It keeps the order's lines and address from `order.created` (the confirmation carries only
totals) and asks for the shipment when the confirmation comes, once per order.
"""

from __future__ import annotations

from processors.runtime import App, Context, Event

CONSUMES = ("order.created", "order.confirmed")
PRODUCES = ("shipment.requested",)


def register(app: App) -> None:
    @app.agent("shipping", consumes=CONSUMES, produces=PRODUCES, version="1.0")
    def shipping(event: Event, ctx: Context) -> None:
        state = ctx.state
        if event.type == "order.created":
            if "items" not in state:
                state["items"] = [{"sku": it["sku"], "qty": it["qty"]} for it in event.value["items"]]
                state["address"] = event.value.get("shipping_address")
            if state.get("confirmed") and not state.get("requested"):
                _request(ctx)
            return
        state["confirmed"] = True
        if "items" in state and not state.get("requested"):
            _request(ctx)


def _request(ctx: Context) -> None:
    ctx.state["requested"] = True
    ctx.emit(
        "shipment.requested",
        ctx.key,
        {
            "order_id": ctx.key,
            "shipment_id": f"shp_{ctx.key}",
            "items": ctx.state["items"],
            "address": ctx.state.get("address"),
            "requested_at": ctx.now_ms,
        },
    )
