"""The inventory agent: reserves all lines of an order or none, keyed by order id.

Stock lives per SKU in the stock agent (one writer per SKU), so an order's lines are
repartitioned by SKU (`stock.reserve.requested`) and the answers come back on the order's key.
When every line has answered: all held → `inventory.reserved`; any refused → the held lines are
given back and `inventory.rejected`. A cancelled order gives back whatever it holds
(`inventory.released`), including lines whose answers arrive after the cancellation.
"""

from __future__ import annotations

from processors.agents.rules import order_problems, release_reason, stock_release_reason
from processors.runtime import App, Context, Event

CONSUMES = ("order.created", "order.cancelled", "stock.line.reserved", "stock.line.rejected", "stock.line.released")
PRODUCES = (
    "stock.reserve.requested",
    "stock.release.requested",
    "inventory.reserved",
    "inventory.rejected",
    "inventory.released",
)
PENDING, RESERVED, REJECTED, RELEASED = "PENDING", "RESERVED", "REJECTED", "RELEASED"
MAX_EARLY_ANSWERS = 100  # answers kept for an order not seen yet (an order has far fewer lines)


def register(app: App, max_hops: int) -> None:
    @app.agent("inventory", consumes=CONSUMES, produces=PRODUCES, version="1.0", max_hops=max_hops)
    def inventory(event: Event, ctx: Context) -> None:
        if event.type == "order.created":
            _request_lines(event, ctx)
        elif event.type == "order.cancelled":
            _on_cancelled(event, ctx)
        elif event.type == "stock.line.released":
            _on_line_returned(event, ctx)
        else:
            _on_line_answer(event, ctx)


def _request_lines(event: Event, ctx: Context) -> None:
    state, order = ctx.state, event.value
    if state.get("status") is not None or state.get("cancelled") or order_problems(order):
        return  # handled already, cancelled before it came, or invalid (the orders agent cancels it)
    items = order["items"]
    state["status"] = PENDING
    state["lines"] = [{"sku": it["sku"], "qty": it["qty"], "answer": None} for it in items]
    for index, item in enumerate(items):
        ctx.emit(
            "stock.reserve.requested",
            item["sku"],
            {
                "order_id": ctx.key,
                "sku": item["sku"],
                "qty": item["qty"],
                "line_index": index,
                "line_count": len(items),
                "requested_at": ctx.now_ms,
            },
        )
    for early in state.pop("early", []):  # answers a killed attempt's requests got before this replay
        _take_answer(ctx, early["type"], early["line_index"])


def _on_line_answer(event: Event, ctx: Context) -> None:
    if ctx.state.get("lines"):
        _take_answer(ctx, event.type, event.value["line_index"])
    else:
        _answer_before_lines(event, ctx)


def _answer_before_lines(event: Event, ctx: Context) -> None:
    """An answer to a line this state never asked for. Under at_least_once a killed worker's
    attempt may have sent the requests (they went out before its commit) and its replay seen the
    answer before the order, or the order's cancellation first. The stock agent drops the replay's
    requests as duplicates, so the answer is all there will be: kept for the order, or, when the
    order was cancelled, a reservation is returned."""
    state, answer = ctx.state, event.value
    if state.get("cancelled"):
        if event.type == "stock.line.reserved":
            _return_unasked(ctx, answer, state["cancel_reason"])
        return
    kept = state.setdefault("early", [])
    if len(kept) >= MAX_EARLY_ANSWERS or any(k["line_index"] == answer["line_index"] for k in kept):
        return  # one per line, and bounded: a foreign producer's answers must not grow the state
    kept.append({"type": event.type, "sku": answer["sku"], "qty": answer["qty"], "line_index": answer["line_index"]})


def _take_answer(ctx: Context, event_type: str, index: int) -> None:
    state = ctx.state
    lines = state["lines"]
    if index >= len(lines) or lines[index]["answer"] is not None:
        return  # a line we did not ask for, or already answered
    line = lines[index]
    line["answer"] = "reserved" if event_type == "stock.line.reserved" else "rejected"
    if any(line["answer"] is None for line in lines):
        return
    if state.get("cancelled"):
        _release_held(ctx, state["cancel_reason"])
        _emit_released(ctx, state["cancel_reason"])
    elif all(line["answer"] == "reserved" for line in lines):
        state["status"] = RESERVED
        value = {"order_id": ctx.key, "items": _held(lines), "reserved_at": ctx.now_ms}
        ctx.emit("inventory.reserved", ctx.key, value, idempotency_key=_effect_key("inventory.reserved", ctx.key))
    else:
        _release_held(ctx, "OUT_OF_STOCK")
        state["status"] = REJECTED
        refused = [{"sku": ln["sku"], "qty": ln["qty"]} for ln in lines if ln["answer"] == "rejected"]
        ctx.emit(
            "inventory.rejected",
            ctx.key,
            {
                "order_id": ctx.key,
                "items": refused,
                "reason": "OUT_OF_STOCK",
                "rejected_at": ctx.now_ms,
            },
            idempotency_key=_effect_key("inventory.rejected", ctx.key),
        )


def _return_unasked(ctx: Context, answer: dict, cancel_reason: str) -> None:
    """A reservation for an order cancelled before it came here: a killed worker's attempt asked
    for it (at_least_once had sent its requests), and its replay saw the cancellation first and
    never asked. Nothing else would give the units back: ask for their release, under the
    line's release key (once, whichever path asks)."""
    index = answer["line_index"]
    ctx.emit(
        "stock.release.requested",
        answer["sku"],
        {
            "order_id": ctx.key,
            "sku": answer["sku"],
            "qty": answer["qty"],
            "line_index": index,
            "reason": stock_release_reason(cancel_reason),
            "requested_at": ctx.now_ms,
        },
        idempotency_key=_effect_key("stock.release.requested", ctx.key, index),
    )


def _on_cancelled(event: Event, ctx: Context) -> None:
    state = ctx.state
    if state.get("cancelled"):
        return
    reason = event.value["reason"]
    state.update(cancelled=True, cancel_reason=reason)
    for early in state.pop("early", []):  # reservations made before the order came: returned
        if early["type"] == "stock.line.reserved":
            _return_unasked(ctx, early, reason)
    if state.get("status") == RESERVED:
        _release_held(ctx, reason)
        _emit_released(ctx, reason)
    # PENDING: released when the last line answers; REJECTED: nothing is held; no state: never reserve.


def _on_line_returned(event: Event, ctx: Context) -> None:
    """The stock agent confirms a release: the line's units are back on the shelf."""
    lines = ctx.state.get("lines") or []
    index = event.value["line_index"]
    if index < len(lines) and lines[index]["answer"] == "released":
        lines[index]["answer"] = "returned"


def _release_held(ctx: Context, cancel_reason: str) -> None:
    for index, line in enumerate(ctx.state["lines"]):
        if line["answer"] == "reserved":
            line["answer"] = "released"
            ctx.emit(
                "stock.release.requested",
                line["sku"],
                {
                    "order_id": ctx.key,
                    "sku": line["sku"],
                    "qty": line["qty"],
                    "line_index": index,
                    "reason": stock_release_reason(cancel_reason),
                    "requested_at": ctx.now_ms,
                },
                idempotency_key=_effect_key("stock.release.requested", ctx.key, index),
            )


def _emit_released(ctx: Context, cancel_reason: str) -> None:
    released = [
        {"sku": ln["sku"], "qty": ln["qty"]} for ln in ctx.state["lines"] if ln["answer"] in ("released", "returned")
    ]
    ctx.state["status"] = RELEASED
    if released:
        ctx.emit(
            "inventory.released",
            ctx.key,
            {
                "order_id": ctx.key,
                "items": released,
                "reason": release_reason(cancel_reason),
                "released_at": ctx.now_ms,
            },
            idempotency_key=_effect_key("inventory.released", ctx.key),
        )


def _effect_key(event_type: str, order_id: str, *parts: object) -> str:
    """The idempotency key of an effect that happens once per order (or order line), whichever
    input leads to it. The default key derives from the input, and which input completes an
    order's lines depends on the order the answers arrive in: under at_least_once, a killed
    worker's attempt and its replay can see them in different orders and both emit, and only a key
    of the effect's own identity lets the stock agent (and the orders agent) drop the second."""
    return ":".join((event_type, order_id, *map(str, parts)))


def _held(lines: list[dict]) -> list[dict]:
    return [{"sku": ln["sku"], "qty": ln["qty"]} for ln in lines if ln["answer"] == "reserved"]
