"""The commerce choreography as one engine App: `choreo worker --app processors.agents.app:app`.

No orchestrator: each agent reacts to the events it hears and emits its own. Settings come from
the environment so the same module serves the demo, the tests and a deployment:
`CHOREO_COMMERCE_TIMEOUT_S` (payment and stock answer timeout, default 30),
`CHOREO_GATEWAY_LATENCY_MS`, `CHOREO_GATEWAY_FAILURE_RATE`, `CHOREO_GATEWAY_DECLINE_ABOVE_MINOR`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from processors.agents import inventory, notifications, orders, payments, shipping, stock
from processors.agents.catalog import DEFAULT_CATALOG, Catalog
from processors.agents.gateway import GatewayRules, SimulatedPaymentGateway, payment_gateway
from processors.runtime import App

APP_ID = "commerce"
# The choreography has feedback loops by design: inventory ⇄ stock is request/response, and the
# orders agent hears the compensations (refund, release) its own cancellation causes. The longest
# legitimate chain is under 10 hops; one longer than this bound is a bug and is dead-lettered.
MAX_HOPS = 16


@dataclass(frozen=True)
class CommerceConfig:
    app_id: str = APP_ID
    timeout_s: float = 30.0
    gateway: GatewayRules = field(default_factory=GatewayRules)
    catalog: Catalog = DEFAULT_CATALOG

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CommerceConfig:
        env = os.environ if env is None else env
        rules = GatewayRules(
            decline_above_minor=int(env.get("CHOREO_GATEWAY_DECLINE_ABOVE_MINOR", GatewayRules.decline_above_minor)),
            latency_s=float(env.get("CHOREO_GATEWAY_LATENCY_MS", "0")) / 1000,
            transient_failure_rate=float(env.get("CHOREO_GATEWAY_FAILURE_RATE", "0")),
        )
        return cls(
            app_id=env.get("CHOREO_COMMERCE_APP_ID", APP_ID),
            timeout_s=float(env.get("CHOREO_COMMERCE_TIMEOUT_S", "30")),
            gateway=rules,
        )


def build_app(config: CommerceConfig | None = None, gateway: SimulatedPaymentGateway | None = None) -> App:
    """The commerce App; pass `gateway` to observe the payment ledger in tests."""
    config = config or CommerceConfig.from_env()
    app = App(config.app_id)
    orders.register(app, timeout_s=config.timeout_s, max_hops=MAX_HOPS)
    payments.register(app, gateway or payment_gateway(config.gateway))  # the PSP at CHOREO_PSP_URL, if set
    inventory.register(app, max_hops=MAX_HOPS)
    stock.register(app, config.catalog, max_hops=MAX_HOPS)
    shipping.register(app)
    notifications.register(app)
    return app


app = build_app()
