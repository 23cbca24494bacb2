"""A pure, Kafka-free run of the whole commerce choreography for unit tests: one AgentDriver per
agent, and every emitted event routed to each agent that consumes its type, breadth first, the
way topics would carry it. The engine's real processing path runs for every hop."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from processors.agents.app import CommerceConfig, build_app
from processors.agents.gateway import SimulatedPaymentGateway
from processors.runtime.emitter import Emitted
from processors.runtime.testing import AgentDriver, DriverResult

NOW_MS = 1_790_000_000_000


@dataclass
class CommerceFlow:
    timeout_s: float = 30.0
    gateway: SimulatedPaymentGateway = field(default_factory=SimulatedPaymentGateway)
    hold: set[str] = field(default_factory=set)  # event types parked instead of delivered

    def __post_init__(self) -> None:
        self.app = build_app(CommerceConfig(timeout_s=self.timeout_s), gateway=self.gateway)
        self.drivers = {name: AgentDriver(self.app, name, now_ms=NOW_MS) for name in self.app.agents}
        self.log: list[Emitted] = []
        self.results: list[tuple[str, DriverResult]] = []
        self.parked: list[Emitted] = []

    def place(self, order: dict) -> None:
        """Publish an order.created as a producer would and let the flow settle."""
        driver = self.drivers["orders"]
        env = driver.envelope("order.created", idempotency_key=f"create-{order['order_id']}")
        first = Emitted(
            "order.created",
            "order.created",
            order["order_id"],
            order,
            env,
            self.app.codec.encode("order.created", order),
        )
        self.deliver([first])

    def deliver(self, events: list[Emitted]) -> None:
        queue = deque(events)
        while queue:
            event = queue.popleft()
            if event.event_type in self.hold:
                self.parked.append(event)
                continue
            self.log.append(event)
            for name, driver in self.drivers.items():
                if event.event_type in driver.spec.consumes:
                    result = driver.send_emitted(event)
                    self.results.append((name, result))
                    queue.extend(result.emitted)

    def release_parked(self) -> None:
        parked, self.parked = self.parked, []
        self.hold.clear()
        self.deliver(parked)

    def advance(self, seconds: float) -> None:
        """Move every agent's clock and deliver what the fired timers emit."""
        fired = []
        for name, driver in self.drivers.items():
            for result in driver.advance(seconds):
                self.results.append((name, result))
                fired.extend(result.emitted)
        self.deliver(fired)

    def of(self, event_type: str) -> list[dict]:
        return [e.value for e in self.log if e.event_type == event_type]

    def stored(self, agent: str, key: str) -> dict[str, Any]:
        """The agent's state for ``key`` when the test expects one: a missing state fails by name
        instead of as a TypeError on ``None``."""
        state = self.drivers[agent].state(key)
        assert state is not None, f"{agent} holds no state for {key!r}"
        return state

    def dead_letters(self) -> list[tuple[str, DriverResult]]:
        return [(name, r) for name, r in self.results if r.outcome == "DEAD_LETTERED"]


def order(
    order_id: str = "ord-1",
    *,
    card: str = "tok_ok",
    skus: tuple[str, ...] = ("SKU-0001", "SKU-0002"),
    qty: int = 2,
    total_delta: int = 0,
) -> dict:
    items: list[dict[str, Any]] = [{"sku": sku, "qty": qty, "unit_price_minor": 1250} for sku in skus]
    return {
        "order_id": order_id,
        "customer_id": "cust-1",
        "customer_email": "ada@example.com",
        "card_token": card,
        "items": items,
        "total_minor": sum(i["qty"] * i["unit_price_minor"] for i in items) + total_delta,
        "currency": "EUR",
        "created_at": NOW_MS,
    }
