"""`choreo roundtrip`'s percentiles lie within what was measured: with few records the default
(exclusive) quantile method extrapolates, and printed a p99 above the max (18.0 vs 17.2 ms)."""

from __future__ import annotations

import random

from processors.cli.roundtrip import latency_figures


def test_percentiles_never_exceed_the_measured_extremes() -> None:
    rng = random.Random(7)
    for size in (2, 3, 10, 50, 99, 1000):
        values = [rng.uniform(1, 20) for _ in range(size)]
        figures = latency_figures(values)
        assert figures["p50"] is not None and figures["p99"] is not None and figures["max"] is not None
        assert min(values) - 0.01 <= figures["p50"] <= figures["p99"] <= figures["max"] + 1e-9, (size, figures)
