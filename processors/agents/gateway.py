"""A simulated payment service provider, deterministic where the flow needs predictability.

Rules: a card token starting with `tok_flagged` is declined as fraud, an amount above the limit is
declined for insufficient funds, `tok_expired` cards are expired, and `tok_silent` cards never get
an answer (the order's timeout must cancel the order). Latency and a transient failure rate are
configurable so retries and the circuit breaker have something real to do.

The gateway keys charges by order id, like a PSP's idempotency key, and keeps a ledger so tests
can prove that no order is ever charged twice.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field


class GatewayUnavailable(Exception):
    """The PSP did not answer in time or answered 5xx: transient, worth a retry."""


@dataclass(frozen=True)
class GatewayRules:
    decline_above_minor: int = 500_000
    latency_s: float = 0.0
    transient_failure_rate: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Authorization:
    approved: bool
    payment_id: str
    decline_reason: str | None = None


@dataclass
class SimulatedPaymentGateway:
    rules: GatewayRules = field(default_factory=GatewayRules)
    charges: dict[str, int] = field(default_factory=dict)
    refunds: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.rules.seed)
        self._lock = threading.Lock()

    def authorize(self, order_id: str, amount_minor: int, card_token: str) -> Authorization | None:
        """Authorize and capture `amount_minor` for `order_id`. Returns None when the PSP never
        answers (silent cards); raises GatewayUnavailable on a simulated transient failure."""
        self._call()
        payment_id = f"pay_{order_id}"
        if card_token.startswith("tok_silent"):
            return None
        if card_token.startswith("tok_flagged"):
            return Authorization(False, payment_id, "FRAUD_SUSPECTED")
        if card_token.startswith("tok_expired"):
            return Authorization(False, payment_id, "CARD_EXPIRED")
        if amount_minor > self.rules.decline_above_minor:
            return Authorization(False, payment_id, "INSUFFICIENT_FUNDS")
        with self._lock:
            self.charges[order_id] = self.charges.get(order_id, 0) + 1
        return Authorization(True, payment_id)

    def refund(self, order_id: str, payment_id: str, amount_minor: int) -> None:
        self._call()
        with self._lock:
            self.refunds[order_id] = self.refunds.get(order_id, 0) + 1

    def _call(self) -> None:
        with self._lock:
            self.calls += 1
            failing = self._random.random() < self.rules.transient_failure_rate
        if self.rules.latency_s:
            time.sleep(self.rules.latency_s)
        if failing:
            raise GatewayUnavailable("payment gateway timed out (simulated)")
