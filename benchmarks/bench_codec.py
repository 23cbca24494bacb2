"""Codec speed for order.created: encode (with and without validation), validation alone, decode
(same version, and a v1 writer resolved against the v2 reader), and the per-event envelope work
(CloudEvents headers read and written, a child envelope derived).

    .venv/bin/python benchmarks/bench_codec.py [--events 20000] [--runs 7] [--json PATH]

Each figure is the median of ``--runs`` timed loops over ``--events`` events, after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from processors.contracts import AvroCodec, ContractRegistry, Envelope  # noqa: E402

ORDER = {
    "order_id": "ord-7f3a9c1e-0001",
    "customer_id": "cus-000042",
    "customer_email": "ada.lovelace@example.com",
    "card_token": "tok_1NXk2b2eZvKYlo2C",
    "items": [
        {"sku": "SKU-RED-MUG", "qty": 2, "unit_price_minor": 1299},
        {"sku": "SKU-BLUE-TEE", "qty": 1, "unit_price_minor": 2499},
        {"sku": "SKU-GIFT-BOX", "qty": 1, "unit_price_minor": 350},
    ],
    "total_minor": 5447,
    "currency": "EUR",
    "created_at": dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=dt.UTC),
    "shipping_address": {
        "name": "Ada Lovelace",
        "line1": "12 St James's Square",
        "line2": None,
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    },
    "promo_code": None,
}
ORDER_V1 = {k: v for k, v in ORDER.items() if k not in ("shipping_address", "promo_code")}


def measure(fn: Callable[[], Any], events: int, runs: int) -> dict[str, float]:
    for _ in range(min(events, 2000)):
        fn()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(events):
            fn()
        timings.append(time.perf_counter() - start)
    median = statistics.median(timings)
    return {"us_per_event": median / events * 1e6, "events_per_s": events / median}


def run(events: int, runs: int) -> dict[str, Any]:
    codec = AvroCodec(ContractRegistry.load())
    v2_bytes = codec.encode("order.created", ORDER)
    v1_bytes = codec.encode("order.created", ORDER_V1, version=1)
    envelope = Envelope.new(
        "order.created",
        "/shop/checkout",
        tenant="acme",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ).child("payment.authorized", "/payments")
    headers = envelope.to_headers()
    header_bytes = sum(len(k) + len(v) for k, v in headers)
    cases: list[tuple[str, Callable[[], Any], int]] = [
        ("encode v2, validated", lambda: codec.encode("order.created", ORDER), len(v2_bytes)),
        ("encode v2, validate=False", lambda: codec.encode("order.created", ORDER, validate=False), len(v2_bytes)),
        ("validate only", lambda: codec.validate("order.created", ORDER), len(v2_bytes)),
        ("decode v2 -> v2", lambda: codec.decode("order.created", v2_bytes), len(v2_bytes)),
        ("decode v1 -> v2 (resolution)", lambda: codec.decode("order.created", v1_bytes), len(v1_bytes)),
        ("envelope from_headers", lambda: Envelope.from_headers(headers), header_bytes),
        ("envelope to_headers", envelope.to_headers, header_bytes),
        ("envelope child", lambda: envelope.child("payment.captured", "/payments"), header_bytes),
    ]
    results = [{"case": name, "payload_bytes": size, **measure(fn, events, runs)} for name, fn, size in cases]
    return {
        "benchmark": "codec order.created",
        "events": events,
        "runs": runs,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    args = parser.parse_args()
    report = run(args.events, args.runs)
    table = Table(title=f"order.created codec, median of {args.runs} runs x {args.events} events")
    for column in ("case", "µs/event", "events/s", "payload bytes"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for r in report["results"]:
        table.add_row(r["case"], f"{r['us_per_event']:.2f}", f"{r['events_per_s']:,.0f}", str(r["payload_bytes"]))
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
