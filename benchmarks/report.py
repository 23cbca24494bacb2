"""Pure parts of the load benchmarks: medians and ratios, the markdown table and the RESULTS.md
section, parsing a runner's result line. No Kafka, no plotting: unit-tested."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SECTION = "## Load benchmarks (make bench)"
RESULT_PREFIX = "BENCH_RESULT "

# Display order and labels of the comparison rows.
CASES: list[tuple[str, str]] = [
    ("raw/at_least_once", "raw confluent-kafka loop, at_least_once"),
    ("raw/exactly_once", "raw confluent-kafka loop, exactly_once"),
    ("hand/at_least_once", "hand-written confluent-kafka loop (same work), at_least_once"),
    ("hand/exactly_once", "hand-written confluent-kafka loop (same work), exactly_once"),
    ("ours/at_least_once", "choreo-streams agent, at_least_once"),
    ("ours/exactly_once", "choreo-streams agent, exactly_once"),
    ("quix/at_least_once", "Quix Streams, at-least-once"),
    ("quix/exactly_once", "Quix Streams, exactly-once"),
    ("faust/at_least_once", "faust-streaming, at_least_once"),
]

# (name, numerator case, denominator case, target or None). The targets are issue 16's: the fair
# baseline is the hand-written loop doing the same work (benchmarks/handwritten.py); the raw
# passthrough loop (no decoding, one produce per input) stays as an informational row.
RATIOS: list[tuple[str, str, str, float | None]] = [
    ("ours/hand-written (at_least_once)", "ours/at_least_once", "hand/at_least_once", 0.8),
    ("ours/hand-written (exactly_once)", "ours/exactly_once", "hand/exactly_once", 0.8),
    ("ours/Quix (at_least_once)", "ours/at_least_once", "quix/at_least_once", 3.0),
    ("ours/Quix (exactly_once)", "ours/exactly_once", "quix/exactly_once", 3.0),
    ("ours/faust (at_least_once)", "ours/at_least_once", "faust/at_least_once", 10.0),
    ("ours exactly_once / at_least_once", "ours/exactly_once", "ours/at_least_once", 0.85),
    ("ours/raw passthrough (at_least_once)", "ours/at_least_once", "raw/at_least_once", None),
    ("ours/raw passthrough (exactly_once)", "ours/exactly_once", "raw/exactly_once", None),
]


def parse_result(stdout: str) -> dict[str, Any]:
    """The last ``BENCH_RESULT {json}`` line of a runner's output."""
    for line in reversed(stdout.splitlines()):
        start = line.find(RESULT_PREFIX)
        if start >= 0:
            return json.loads(line[start + len(RESULT_PREFIX) :])
    raise ValueError("no BENCH_RESULT line in the runner's output")


def case_name(system: str, guarantee: str) -> str:
    return f"{system}/{guarantee.replace('-', '_')}"


def median_or_none(values: Iterable[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: the median events/s (and peak RSS) over the runs, with every run's figure kept."""
    by_case: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_case.setdefault(case_name(run["system"], run["guarantee"]), []).append(run)
    out: dict[str, dict[str, Any]] = {}
    for case, items in by_case.items():
        ok = [r for r in items if r.get("events_per_s") is not None and not r.get("error")]
        rates = [r["events_per_s"] for r in ok]
        out[case] = {
            "events_per_s": median_or_none(rates),
            "runs_events_per_s": rates,
            "min_events_per_s": min(rates) if rates else None,
            "max_events_per_s": max(rates) if rates else None,
            "peak_rss_mb": median_or_none(r.get("peak_rss_mb") for r in ok),
            "events": ok[0]["events"] if ok else None,
            "failures": [r.get("error") for r in items if r.get("error")],
        }
    return out


def ratios(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Within-run ratios of the medians, each with its target and whether it is met."""
    out = []
    for name, num, den, target in RATIOS:
        a = (summary.get(num) or {}).get("events_per_s")
        b = (summary.get(den) or {}).get("events_per_s")
        value = a / b if a is not None and b else None
        out.append(
            {
                "ratio": name,
                "value": value,
                "target": target,
                "met": None if value is None or target is None else value >= target,
            }
        )
    return out


def rss_spread(points: Sequence[Mapping[str, Any]], key: str = "peak_rss_mb") -> float | None:
    """Largest relative deviation of peak RSS from the first point (the smallest configuration):
    the "within ±10% from 1k to 1M keys" figure."""
    values = [p[key] for p in points if p.get(key) is not None]
    if len(values) < 2 or not values[0]:
        return None
    base = values[0]
    return max(abs(v - base) / base for v in values[1:])


def _fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def comparison_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| system | events/s (median) | runs | peak RSS MiB | events |", "|---|---:|---|---:|---:|"]
    for case, label in CASES:
        row = summary.get(case)
        if row is None:
            continue
        runs = ", ".join(f"{r:,.0f}" for r in row["runs_events_per_s"]) or "failed"
        rss = "—" if row.get("peak_rss_mb") is None else f"{row['peak_rss_mb']:.0f}"
        events = "—" if row.get("events") is None else f"{row['events']:,}"
        lines.append(f"| {label} | {_fmt_rate(row['events_per_s'])} | {runs} | {rss} | {events} |")
    return "\n".join(lines)


def ratio_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| ratio | value | target | met |", "|---|---:|---:|---|"]
    for r in rows:
        target = "—" if r["target"] is None else f"≥ {r['target']:g}×"
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        lines.append(f"| {r['ratio']} | {_fmt_ratio(r['value'])} | {target} | {met} |")
    return "\n".join(lines)


def growth_table(points: Sequence[Mapping[str, Any]], axis: str) -> str:
    lines = [f"| {axis} | events | distinct keys | events/s | peak RSS MiB |", "|---:|---:|---:|---:|---:|"]
    for p in points:
        distinct = "—" if p.get("distinct_keys") is None else f"{p['distinct_keys']:,}"
        rss = "—" if p.get("peak_rss_mb") is None else f"{p['peak_rss_mb']:.0f}"
        lines.append(f"| {p[axis]:,} | {p['events']:,} | {distinct} | {_fmt_rate(p.get('events_per_s'))} | {rss} |")
    return "\n".join(lines)


def flow_table(points: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| offered load | orders/s offered | orders/s completed | p50 ms | p95 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(p: Mapping[str, Any], key: str) -> str:
        return "—" if p.get(key) is None else f"{p[key]:,.0f}"

    for p in points:
        lines.append(
            f"| {p['load_pct']:.0f}% | {_fmt_rate(p.get('offered_per_s'))} | "
            f"{_fmt_rate(p.get('completed_per_s'))} | {ms(p, 'p50_ms')} | {ms(p, 'p95_ms')} | {ms(p, 'p99_ms')} |"
        )
    return "\n".join(lines)


FLOW_TARGETS = (
    ("sustained capacity / burst maximum", 0.9, "≥"),
    ("flow time p99 at 50% of the maximum, ms", 300.0, "≤"),
    ("default demo (300 orders, 2 workers) flow time p50, ms", 500.0, "≤"),
)


def flow_targets(flow: Mapping[str, Any] | None, demo: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 16's flow targets with this run's figures (None where the section did not run)."""
    flow = flow or {}
    sustained = (flow.get("sustained") or {}).get("sustained_share")
    half = next((p for p in flow.get("points") or [] if round(p.get("load_pct", 0)) == 50), None)
    p99 = None if half is None else half.get("p99_ms")
    p50 = ((demo or {}).get("flow_time_ms") or {}).get("p50")
    rows = []
    for (name, target, sense), value in zip(FLOW_TARGETS, (sustained, p99, p50), strict=True):
        met = None if value is None else (value >= target if sense == "≥" else value <= target)
        rows.append({"target": name, "value": value, "bound": f"{sense} {target:g}", "met": met})
    return rows


def flow_target_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| target | value | bound | met |", "|---|---:|---:|---|"]
    for r in rows:
        value = r["value"]
        shown = "—" if value is None else f"{value:.0%}" if "capacity" in r["target"] else f"{value:,.0f}"
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        lines.append(f"| {r['target']} | {shown} | {r['bound']} | {met} |")
    return "\n".join(lines)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n*q/100), at least 1
    return sorted_values[int(rank) - 1]


def replace_section(document: str, section_text: str, heading: str = SECTION) -> str:
    """``document`` with the section under ``heading`` (up to the next ``## `` heading) replaced by
    ``section_text``, or with it appended when absent. Other sections stay byte for byte."""
    section_text = section_text.rstrip("\n") + "\n"
    if not section_text.startswith(heading):
        raise ValueError(f"the section must start with its heading {heading!r}")
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        sep = "" if not document or document.endswith("\n\n") else ("\n" if document.endswith("\n") else "\n\n")
        return document + sep + section_text
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section_text + ("\n" + tail if tail else "")


def collapse_profile(raw: str, top: int = 15, ours: str = "(processors/") -> dict[str, Any]:
    """Aggregate py-spy's collapsed stacks (``frame;frame;... count`` lines, frames
    ``function (file:line)``) into the top functions by self time, and by inclusive time among
    ``ours`` (the engine's own code), as shares of all samples."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + count
        for name in set(frames):
            if ours in name:
                incl[name] = incl.get(name, 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [{"function": name, "share": round(count / total, 4)} for name, count in rows]

    return {"samples": total, "self": ranked(self_t), "inclusive_ours": ranked(incl)}


def _frame_name(frame: str) -> str:
    """``handle (/x/processors/runtime/processor.py:190)`` → ``handle (processors/runtime/processor.py)``."""
    frame = frame.strip()
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/processors/", "/benchmarks/", "/site-packages/", "/lib/python3"):
        i = path.find(marker)
        if i >= 0:
            path = path[i + 1 :] if marker != "/lib/python3" else "stdlib/" + path.rsplit("/", 1)[-1]
            break
    return f"{name} ({path})"


def profile_table(profile: Mapping[str, Any], key: str) -> str:
    lines = ["| function | share of samples |", "|---|---:|"]
    for row in profile.get(key, []):
        lines.append(f"| `{row['function']}` | {row['share'] * 100:.1f}% |")
    return "\n".join(lines)


# ============================================================================ I/O-bound agents (issue 14)
IO_TARGET = {"latency_ms": 50.0, "max_in_flight": 256, "share": 0.8}


def io_window_rate(
    times: Sequence[float], start: float, end: float, exhausted: bool = False
) -> tuple[float | None, float]:
    """Completions per second within ``(start, end]`` and the window's length. When the input ran
    out first (``exhausted``, the last completion before ``end``), the window ends at the last."""
    if exhausted and times and times[-1] < end:
        end = times[-1]
    window = end - start
    if window <= 0:
        return None, 0.0
    return sum(1 for t in times if start < t <= end) / window, window


def io_ideal(max_in_flight: int | None, latency_ms: float, cpu_rate: float | None) -> float | None:
    """The best an agent can do with a call of ``latency_ms`` per event: ``max_in_flight`` calls
    at once, each ``latency_ms`` long (``max_in_flight / latency``), but never more than the
    same variant's CPU-bound rate (its 0 ms calls, same run). None when either is unknown."""
    if cpu_rate is None or max_in_flight is None:
        return None
    if latency_ms <= 0:
        return cpu_rate
    return min(max_in_flight / (latency_ms / 1000), cpu_rate)


def io_rows(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per case with a call latency > 0: its events/s beside its variant's CPU-bound
    rate, the ideal and the share of the ideal reached."""
    cpu = {c["variant"]: c.get("events_per_s") for c in cases if c["latency_ms"] == 0 and not c.get("error")}
    rows = []
    for c in cases:
        if c["latency_ms"] == 0:
            continue
        rate = None if c.get("error") else c.get("events_per_s")
        ideal = io_ideal(c.get("max_in_flight"), c["latency_ms"], cpu.get(c["variant"]))
        rows.append(
            {
                "variant": c["variant"],
                "handler": c.get("handler"),
                "call": c.get("call"),
                "client": c.get("client"),
                "max_in_flight": c.get("max_in_flight"),
                "latency_ms": c["latency_ms"],
                "events_per_s": rate,
                "cpu_rate": cpu.get(c["variant"]),
                "ideal": ideal,
                "share": rate / ideal if rate is not None and ideal else None,
                "note": c.get("skipped") or c.get("error"),
            }
        )
    return rows


def io_target(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Issue 14's target: an async handler at 50 ms and 256 in flight reaches ≥ 0.8× the ideal
    (the ``async/256`` variant's row when there is one: other 256 rows vary the client)."""
    candidates = [
        r
        for r in rows
        if r.get("handler") == "async"
        and r["latency_ms"] == IO_TARGET["latency_ms"]
        and r.get("max_in_flight") == IO_TARGET["max_in_flight"]
    ]
    row = next((r for r in candidates if r["variant"] == "async/256"), candidates[0] if candidates else None)
    share = None if row is None else row.get("share")
    return {
        "target": f"events/s at {IO_TARGET['latency_ms']:g} ms and {IO_TARGET['max_in_flight']} in flight / ideal",
        "value": share,
        "events_per_s": None if row is None else row.get("events_per_s"),
        "ideal": None if row is None else row.get("ideal"),
        "bound": f"≥ {IO_TARGET['share']:g}×",
        "met": None if share is None else share >= IO_TARGET["share"],
    }


IO_HANDLERS = {
    "ctx.call": "`def` + `ctx.call`",
    "ctx.call_async": "`async def` + `ctx.call_async`",
    "direct": "`async def` + direct await",  # no ctx.call_async on the commit measured
}


def _fmt_io_rate(value: float | None) -> str:
    """Events/s: one decimal below 100 (a 200 ms call at one in flight is 5/s at best)."""
    return "—" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def io_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| handler | max_in_flight | call latency | events/s | CPU-bound rate (0 ms) | ideal | of the ideal |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        handler = IO_HANDLERS.get(
            r.get("call") or "", IO_HANDLERS["ctx.call_async" if r.get("handler") == "async" else "ctx.call"]
        )
        if r.get("handler") == "async" and r.get("client"):
            handler += f" ({r['client']})"
        rate = _fmt_io_rate(r.get("events_per_s")) if not r.get("note") else f"— ({str(r['note'])[:80]})"
        share = "—" if r.get("share") is None else f"{r['share']:.2f}×"
        in_flight = "—" if r.get("max_in_flight") is None else str(r["max_in_flight"])
        lines.append(
            f"| {handler} | {in_flight} | {r['latency_ms']:g} ms | {rate} | {_fmt_io_rate(r.get('cpu_rate'))} | "
            f"{_fmt_io_rate(r.get('ideal'))} | {share} |"
        )
    return "\n".join(lines)


def io_target_table(target: Mapping[str, Any]) -> str:
    met = {True: "yes", False: "**no**", None: "—"}[target["met"]]
    shown = "—" if target["value"] is None else f"{target['value']:.2f}×"
    detail = (
        ""
        if target["value"] is None
        else f" ({_fmt_rate(target.get('events_per_s'))} of {_fmt_rate(target.get('ideal'))} events/s)"
    )
    row = f"| {target['target']} | {shown}{detail} | {target['bound']} | {met} |"
    return "\n".join(["| target | value | bound | met |", "|---|---:|---:|---|", row])
