"""The stock agent: units on hand per SKU, keyed by SKU, so each SKU has exactly one writer.

It hears the order lines repartitioned by SKU (`stock.reserve.requested`) and the releases
(`stock.release.requested`) and answers each line on the order's key. Stock never goes negative:
a line that does not fit is refused whole. Every answer carries the units available afterwards,
so conservation can be checked from the topics alone.
"""

from __future__ import annotations

from processors.agents.catalog import Catalog
from processors.runtime import App, Context, Event

CONSUMES = ("stock.reserve.requested", "stock.release.requested")
PRODUCES = ("stock.line.reserved", "stock.line.rejected", "stock.line.released")


def register(app: App, catalog: Catalog, max_hops: int) -> None:
    @app.agent("stock", consumes=CONSUMES, produces=PRODUCES, version="1.0", max_hops=max_hops)
    def stock(event: Event, ctx: Context) -> None:
        opening = catalog.opening_stock(ctx.key)
        available = ctx.state.get("available", opening)
        line = event.value
        if event.type == "stock.reserve.requested":
            _reserve(ctx, line, available)
        else:
            _release(ctx, line, available)


def _reserve(ctx: Context, line: dict, available: int | None) -> None:
    answer = {
        "order_id": line["order_id"],
        "sku": line["sku"],
        "qty": line["qty"],
        "line_index": line["line_index"],
        "line_count": line["line_count"],
    }
    if available is None or line["qty"] < 1 or line["qty"] > available:
        reason = "UNKNOWN_SKU" if available is None else ("INVALID" if line["qty"] < 1 else "OUT_OF_STOCK")
        ctx.emit(
            "stock.line.rejected",
            line["order_id"],
            {**answer, "available": available or 0, "reason": reason, "rejected_at": ctx.now_ms},
        )
        return
    ctx.state["available"] = available - line["qty"]
    ctx.emit(
        "stock.line.reserved",
        line["order_id"],
        {**answer, "available_after": ctx.state["available"], "reserved_at": ctx.now_ms},
    )


def _release(ctx: Context, line: dict, available: int | None) -> None:
    if available is None:
        return  # nothing was ever reserved of an unknown SKU
    ctx.state["available"] = available + line["qty"]
    ctx.emit(
        "stock.line.released",
        line["order_id"],
        {
            "order_id": line["order_id"],
            "sku": line["sku"],
            "qty": line["qty"],
            "line_index": line["line_index"],
            "available_after": ctx.state["available"],
            "released_at": ctx.now_ms,
        },
    )
