"""PNG plots of a results.json: throughput by system, latency percentiles by offered load, growth.
Needs matplotlib (the `bench` extra); run.py skips plots when it is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import report  # noqa: E402


def render(results: dict[str, Any], out_dir: Path) -> list[Path]:
    made: list[Path] = []
    comp = results.get("comparison")
    if comp:
        made.append(_throughput(comp, out_dir / "throughput.png"))
    fl = results.get("flow")
    if fl and fl.get("points"):
        made.append(_latency(fl, out_dir / "flow_latency.png"))
    grow = results.get("growth")
    if grow and (grow.get("keys") or grow.get("partitions")):
        made.append(_growth(grow, out_dir / "growth.png"))
    return made


def _throughput(comp: dict[str, Any], path: Path) -> Path:
    summary = comp["summary"]
    rows = [
        (label, summary[case])
        for case, label in report.CASES
        if case in summary and summary[case]["events_per_s"] is not None
    ]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.6))
    labels = [label for label, _ in rows]
    medians = [row["events_per_s"] for _, row in rows]
    lo = [m - row["min_events_per_s"] for m, (_, row) in zip(medians, rows, strict=True)]
    hi = [row["max_events_per_s"] - m for m, (_, row) in zip(medians, rows, strict=True)]
    colors = ["#9e9e9e" if "raw" in label else "#1f77b4" if "choreo" in label else "#ff7f0e" for label in labels]
    y = range(len(rows))
    ax.barh(list(y), medians, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("events/s (log scale; median, whiskers: min–max of the runs)")
    for i, (m, (_, row)) in enumerate(zip(medians, rows, strict=True)):
        ax.text(row["max_events_per_s"] * 1.1, i, f"{m:,.0f}", va="center", fontsize=8)
    ax.set_xlim(right=max(row["max_events_per_s"] for _, row in rows) * 3)
    load = comp["load"]
    ax.set_title(
        f"One process, same pre-loaded topic ({load['mean_event_bytes']:.0f} B/event, "
        f"{load['spec']['partitions']} partitions, {load['spec']['keys']:,} keys)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency(fl: dict[str, Any], path: Path) -> Path:
    points = fl["points"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [p["load_pct"] for p in points]
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        ax.plot(x, [p.get(key) for p in points], style, label=key.removesuffix("_ms"))
    ax.set_xlabel("offered load, % of the measured maximum")
    ax.set_ylabel("flow time, ms (order.created → terminal state)")
    ax.set_title(f"Full commerce flow (max {fl.get('max_orders_per_s', 0):,.0f} orders/s)", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _growth(grow: dict[str, Any], path: Path) -> Path:
    panels = [(axis, grow[axis]) for axis in ("keys", "partitions") if grow.get(axis)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (axis, points) in zip(axes[0], panels, strict=True):
        x = [p[axis] for p in points]
        ax.plot(x, [p.get("events_per_s") for p in points], "o-", color="#1f77b4")
        ax.set_xlabel(axis)
        ax.set_ylabel("events/s", color="#1f77b4")
        if axis == "keys":
            ax.set_xscale("log")
        ax2 = ax.twinx()
        ax2.plot(x, [p.get("peak_rss_mb") for p in points], "s--", color="#d62728")
        ax2.set_ylabel("peak RSS, MiB", color="#d62728")
        ax2.set_ylim(bottom=0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"ours at_least_once as {axis} grow", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
