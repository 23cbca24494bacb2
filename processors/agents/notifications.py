"""The notifications agent: tells the customer once per order and kind (confirmed, cancelled,
shipped), never twice, whatever is redelivered.

The recipient comes from `order.created`; an outcome that overtakes its order waits in the state
until the address is known. With a delivery sink configured (``CHOREO_SINK_URL``, ``choreo sink
serve``), each notification is delivered there through ``await ctx.call_async`` before
``notification.sent`` is emitted, both under a key of the notice itself (:func:`notice_key`: the
order and the kind, not the input that made it due), so a replayed handler delivers under the same
key, whichever input it sees first, and the sink, not our own state, shows that nothing was sent
twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

import httpx

from processors.errors import ChoreoError
from processors.runtime import App, Context, Event, RetryPolicy
from processors.runtime.agent import DEFAULT_MAX_IN_FLIGHT
from processors.runtime.dependencies import DependencyPolicy
from processors.services.client import LoopSessions, post_idempotent, post_idempotent_async, session_factory

CONSUMES = ("order.created", "order.confirmed", "order.cancelled", "shipment.requested")
PRODUCES = ("notification.sent",)
KIND_OF = {
    "order.confirmed": "ORDER_CONFIRMED",
    "order.cancelled": "ORDER_CANCELLED",
    "shipment.requested": "ORDER_SHIPPED",
}
SINK = "delivery-sink"
SINK_URL_ENV = "CHOREO_SINK_URL"


class SinkUnavailable(Exception):
    """The sink did not answer in time, answered 5xx or is still handling the key: transient."""


class SinkRejected(ChoreoError):
    """The sink refused the delivery (4xx): a bug, not worth a retry; the message never quotes it."""


# As many calls at once as the handler has inputs in flight by default: the bulkhead then never
# refuses a call of one agent session (settings can lower either).
SINK_POLICY = DependencyPolicy(
    timeout_s=10.0,
    max_concurrency=DEFAULT_MAX_IN_FLIGHT,
    retry=RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.5, max_elapsed_s=5.0),
    retry_on=(SinkUnavailable,),
)


class DeliverySink(Protocol):
    def deliver(self, order_id: str, kind: str, channel: str, recipient: str, idempotency_key: str = ...) -> None: ...

    async def deliver_async(
        self, order_id: str, kind: str, channel: str, recipient: str, idempotency_key: str = ...
    ) -> None: ...


class HttpDeliverySink:
    """The delivery sink over HTTP: a pooled keep-alive client for :meth:`deliver`, one per event
    loop for :meth:`deliver_async` (made on the loop's first call), a timeout per request."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, max_connections: int = 64) -> None:
        base_url = base_url.rstrip("/")
        timeout = httpx.Timeout(timeout_s)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.Client(base_url=base_url, timeout=timeout, limits=limits)
        self._async = LoopSessions(session_factory(base_url, timeout_s, max_connections))

    def deliver(self, order_id: str, kind: str, channel: str, recipient: str, idempotency_key: str = "") -> None:
        body = _delivery(order_id, kind, channel, recipient)
        post_idempotent(self._client, DELIVERIES, body, idempotency_key, SinkUnavailable, SinkRejected)

    async def deliver_async(
        self, order_id: str, kind: str, channel: str, recipient: str, idempotency_key: str = ""
    ) -> None:
        body = _delivery(order_id, kind, channel, recipient)
        await post_idempotent_async(self._async.get(), DELIVERIES, body, idempotency_key, SinkUnavailable, SinkRejected)

    async def aclose(self) -> None:
        """Close the running loop's async session (the sync client stays open)."""
        await self._async.aclose()

    def close(self) -> None:
        self._client.close()
        self._async.close()


DELIVERIES = "/v1/deliveries"


def _delivery(order_id: str, kind: str, channel: str, recipient: str) -> dict[str, str]:
    return {"order_id": order_id, "kind": kind, "channel": channel, "recipient": recipient}


def delivery_sink(env: Mapping[str, str] | None = None) -> DeliverySink | None:
    """The sink at ``CHOREO_SINK_URL`` when set (timeout ``CHOREO_SINK_TIMEOUT_S``, default 5)."""
    env = os.environ if env is None else env
    url = env.get(SINK_URL_ENV)
    return HttpDeliverySink(url, float(env.get("CHOREO_SINK_TIMEOUT_S", "5"))) if url else None


def register(app: App, sink: DeliverySink | None = None) -> None:
    """``sink`` defaults to :func:`delivery_sink` (none: ``notification.sent`` is the delivery). An
    ``async def`` handler, as the payments agent's: deliveries to the sink are awaited."""
    sink = sink if sink is not None else delivery_sink()

    @app.agent(
        "notifications",
        consumes=CONSUMES,
        produces=PRODUCES,
        version="1.0",
        transient=(SinkUnavailable,) if sink is not None else (),
        dependencies={SINK: SINK_POLICY} if sink is not None else None,
    )
    async def notifications(event: Event, ctx: Context) -> None:
        for kind in _due(event, ctx):
            if sink is not None:
                recipient, key = ctx.state["recipient"], notice_key("delivery", ctx.key, kind)
                await ctx.call_async(SINK, sink.deliver_async, ctx.key, kind, "EMAIL", recipient, idempotency_key=key)
            _record_sent(ctx, kind)


def notice_key(what: str, order_id: str, kind: str) -> str:
    """The key of one notice of one kind for one order: whichever input makes it due (the order,
    or the event of its kind, whichever comes last), the sink and the topic see one notice. Under
    at_least_once a killed attempt and its replay may see those inputs in different orders, and a
    key derived from the input would then deliver it twice."""
    return f"{what}:{order_id}:{kind}"


def _due(event: Event, ctx: Context) -> list[str]:
    """Take the event into the state; the kinds to send now (none until the recipient is known)."""
    state = ctx.state
    if event.type == "order.created":
        state.setdefault("recipient", event.value["customer_email"])
    else:
        pending = state.setdefault("pending", [])
        kind = KIND_OF[event.type]
        if kind not in pending and kind not in state.get("sent", []):
            pending.append(kind)
    if not state.get("recipient"):
        return []
    sent = state.setdefault("sent", [])
    return [kind for kind in state.pop("pending", []) if kind not in sent]


def _record_sent(ctx: Context, kind: str) -> None:
    state = ctx.state
    state["sent"].append(kind)
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
        idempotency_key=notice_key("notification.sent", ctx.key, kind),
    )
