"""Business rules the commerce agents share, kept free of Kafka and of the engine.

The agents are independent services in spirit: each applies the same order validity rule on its
own, so an invalid order is neither charged nor reserved, and the orders agent cancels it.
"""

from __future__ import annotations

from typing import Any

MAX_LINES = 50


def order_problems(order: dict[str, Any]) -> list[str]:
    """Why an `order.created` cannot be fulfilled, with field paths; empty when it is valid."""
    problems: list[str] = []
    items = order.get("items") or []
    if not items:
        problems.append("items: at least one line is required")
    if len(items) > MAX_LINES:
        problems.append(f"items: at most {MAX_LINES} lines, got {len(items)}")
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item["qty"] < 1:
            problems.append(f"items[{i}].qty: must be at least 1, got {item['qty']}")
        if item["unit_price_minor"] < 0:
            problems.append(f"items[{i}].unit_price_minor: must not be negative, got {item['unit_price_minor']}")
        if item["sku"] in seen:
            problems.append(f"items[{i}].sku: {item['sku']} appears on more than one line")
        seen.add(item["sku"])
    computed = sum(item["qty"] * item["unit_price_minor"] for item in items)
    if order.get("total_minor") != computed:
        problems.append(f"total_minor: lines add up to {computed}, order says {order.get('total_minor')}")
    if len(order.get("currency") or "") != 3:
        problems.append(f"currency: expected an ISO 4217 code, got {order.get('currency')!r}")
    return problems


# order.cancelled reason -> the reason enums of the compensating events.
REFUND_REASON = {
    "OUT_OF_STOCK": "OUT_OF_STOCK",
    "TIMEOUT": "TIMEOUT",
    "CUSTOMER_REQUEST": "CUSTOMER_REQUEST",
    "INVALID": "INVALID",
}
RELEASE_REASON = {"PAYMENT_DECLINED": "PAYMENT_DECLINED", "TIMEOUT": "TIMEOUT", "INVALID": "INVALID"}


def refund_reason(cancel_reason: str) -> str:
    return REFUND_REASON.get(cancel_reason, "UNKNOWN")


def release_reason(cancel_reason: str) -> str:
    """inventory.released has ORDER_CANCELLED for reasons it has no symbol of its own for."""
    return RELEASE_REASON.get(cancel_reason, "ORDER_CANCELLED")


def stock_release_reason(cancel_reason: str) -> str:
    return (
        cancel_reason
        if cancel_reason in {"PAYMENT_DECLINED", "OUT_OF_STOCK", "TIMEOUT", "INVALID"}
        else "ORDER_CANCELLED"
    )
