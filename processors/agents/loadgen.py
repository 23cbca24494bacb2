"""Realistic `order.created` payloads with a known expected outcome, for the demo, tests and
benchmarks.

Each generated order says what the choreography must make of it (confirmed, declined,
out of stock, timed out, invalid), so a run can be checked order by order, not only in totals.
Keys are uniform or Zipf-skewed over a customer population, to load hot partitions the way real
traffic does.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from processors.agents.catalog import DEFAULT_CATALOG, Catalog


class Expected(enum.Enum):
    CONFIRMED = "confirmed"
    PAYMENT_DECLINED = "payment_declined"
    OUT_OF_STOCK = "out_of_stock"
    TIMEOUT = "timeout"
    INVALID = "invalid"


@dataclass(frozen=True)
class OrderMix:
    """Shares of each outcome among generated orders; the rest are expected to be confirmed."""

    declined: float = 0.1
    out_of_stock: float = 0.1
    timeout: float = 0.0
    invalid: float = 0.0

    def __post_init__(self) -> None:
        total = self.declined + self.out_of_stock + self.timeout + self.invalid
        if any(share < 0 for share in (self.declined, self.out_of_stock, self.timeout, self.invalid)) or total > 1:
            raise ValueError(f"order mix shares must be >= 0 and sum to at most 1, got {self}")


@dataclass(frozen=True)
class GeneratedOrder:
    order_id: str
    value: dict
    expected: Expected


@dataclass
class OrderGenerator:
    """Deterministic for a given seed: the same run publishes the same orders."""

    seed: int = 7
    mix: OrderMix = field(default_factory=OrderMix)
    catalog: Catalog = DEFAULT_CATALOG
    customers: int = 10_000
    skew: float = 0.0  # 0 = uniform; ~1.1 = Zipf-like hot customers
    run_id: str = ""

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._in_stock = self.catalog.in_stock_skus()
        self._out_of_stock = self.catalog.out_of_stock_skus()
        self._counter = itertools.count(1)
        self._cdf = _zipf_cdf(self.customers, self.skew) if self.skew > 0 else None

    def __iter__(self) -> Iterator[GeneratedOrder]:
        while True:
            yield self.next()

    def next(self) -> GeneratedOrder:
        expected = self._pick_outcome()
        seq = next(self._counter)
        order_id = f"ord-{self.run_id}{seq:08d}" if self.run_id else f"ord-{seq:08d}"
        items = self._items(expected)
        total = sum(item["qty"] * item["unit_price_minor"] for item in items)
        value = {
            "order_id": order_id,
            "customer_id": self._customer(),
            "customer_email": f"customer{seq}@example.com",
            "card_token": self._card_token(expected),
            "items": items,
            "total_minor": total,
            "currency": "EUR",
            "created_at": int(time.time() * 1000),
        }
        if expected is Expected.INVALID:
            value["total_minor"] = total + 1  # a total that does not add up: refused by the orders agent
        return GeneratedOrder(order_id, value, expected)

    def _pick_outcome(self) -> Expected:
        roll, mix = self._random.random(), self.mix
        for share, outcome in (
            (mix.declined, Expected.PAYMENT_DECLINED),
            (mix.out_of_stock, Expected.OUT_OF_STOCK),
            (mix.timeout, Expected.TIMEOUT),
            (mix.invalid, Expected.INVALID),
        ):
            if roll < share:
                return outcome
            roll -= share
        return Expected.CONFIRMED

    def _items(self, expected: Expected) -> list[dict]:
        count = self._random.randint(1, 4)
        skus = self._random.sample(self._in_stock, count)
        if expected is Expected.OUT_OF_STOCK:
            skus[-1] = self._random.choice(self._out_of_stock)
        return [
            {
                "sku": sku,
                "qty": self._random.randint(1, 3),
                "unit_price_minor": self.catalog.products[sku].unit_price_minor,
            }
            for sku in skus
        ]

    def _card_token(self, expected: Expected) -> str:
        suffix = f"{self._random.getrandbits(48):012x}"
        if expected is Expected.PAYMENT_DECLINED:
            return f"tok_flagged_{suffix}"
        if expected is Expected.TIMEOUT:
            return f"tok_silent_{suffix}"
        return f"tok_{suffix}"

    def _customer(self) -> str:
        if self._cdf is None:
            index = self._random.randrange(self.customers)
        else:
            index = bisect.bisect_left(self._cdf, self._random.random())
        return f"cust-{index:07d}"


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (rank**s) for rank in range(1, n + 1)]
    total = sum(weights)
    cdf, running = [], 0.0
    for weight in weights:
        running += weight
        cdf.append(running / total)
    return cdf
