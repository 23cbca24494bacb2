"""The simulated product catalogue and its opening stock.

Stock is deliberately two-tier so that outcomes are predictable in demos, tests and benchmarks:
ordinary SKUs hold far more than any run can sell, and the `OOS-` SKUs hold none, so an order
is out of stock exactly when it contains an `OOS-` line. `choreo verify` uses the same opening
stock to check conservation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PLENTY = 1_000_000_000


@dataclass(frozen=True)
class Product:
    sku: str
    unit_price_minor: int
    opening_stock: int


def _default_products() -> dict[str, Product]:
    products = {
        f"SKU-{i:04d}": Product(f"SKU-{i:04d}", unit_price_minor=199 + (i * 137) % 9_800, opening_stock=PLENTY)
        for i in range(1, 201)
    }
    for i in range(1, 6):
        products[f"OOS-{i:02d}"] = Product(f"OOS-{i:02d}", unit_price_minor=4_999, opening_stock=0)
    return products


@dataclass(frozen=True)
class Catalog:
    products: dict[str, Product] = field(default_factory=_default_products)

    def opening_stock(self, sku: str) -> int | None:
        """Units on hand before any order; None for a SKU the catalogue does not know."""
        product = self.products.get(sku)
        return None if product is None else product.opening_stock

    def in_stock_skus(self) -> list[str]:
        return sorted(sku for sku, p in self.products.items() if p.opening_stock > 0)

    def out_of_stock_skus(self) -> list[str]:
        return sorted(sku for sku, p in self.products.items() if p.opening_stock == 0)


DEFAULT_CATALOG = Catalog()
