"""The load benchmarks' result handling: medians, ratios against the targets, tables, and the
RESULTS.md section that `make bench` rewrites without touching the others."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import markdown_section  # noqa: E402
import report  # noqa: E402


def run(system: str, guarantee: str, rate: float | None, rss: float = 100.0, error: str | None = None) -> dict:
    return {
        "system": system,
        "guarantee": guarantee,
        "events": 1000,
        "events_per_s": rate,
        "peak_rss_mb": rss,
        **({"error": error} if error else {}),
    }


RUNS = [
    run("raw", "at_least_once", 50_000),
    run("raw", "at_least_once", 40_000),
    run("raw", "at_least_once", 60_000),
    run("ours", "at_least_once", 30_000, 80),
    run("ours", "at_least_once", 36_000, 90),
    run("ours", "at_least_once", 33_000, 85),
    run("ours", "exactly_once", 27_000),
    run("hand", "at_least_once", 40_000),
    run("hand", "exactly_once", 36_000),
    run("quix", "at-least-once", 10_000),
    run("faust", "at_least_once", 2_000),
    run("faust", "at_least_once", None, error="timed out"),
]


def test_summary_takes_the_median_of_the_runs_and_keeps_every_figure():
    summary = report.summarize(RUNS)
    assert summary["raw/at_least_once"]["events_per_s"] == 50_000
    assert summary["raw/at_least_once"]["runs_events_per_s"] == [50_000, 40_000, 60_000]
    assert summary["ours/at_least_once"]["events_per_s"] == 33_000
    assert summary["ours/at_least_once"]["peak_rss_mb"] == 85
    assert summary["quix/at_least_once"]["events_per_s"] == 10_000  # "at-least-once" spelled the Quix way
    assert summary["faust/at_least_once"]["events_per_s"] == 2_000  # a failed run does not count...
    assert summary["faust/at_least_once"]["failures"] == ["timed out"]  # ...but is reported


def test_ratios_are_taken_between_medians_and_checked_against_the_targets():
    by_name = {r["ratio"]: r for r in report.ratios(report.summarize(RUNS))}
    assert by_name["ours/hand-written (at_least_once)"]["value"] == pytest.approx(33 / 40)
    assert by_name["ours/hand-written (at_least_once)"]["met"] is True  # target 0.8x
    assert by_name["ours/hand-written (exactly_once)"]["value"] == pytest.approx(0.75)
    assert by_name["ours/hand-written (exactly_once)"]["met"] is False
    raw = by_name["ours/raw passthrough (at_least_once)"]
    assert raw["value"] == pytest.approx(0.66) and raw["target"] is None and raw["met"] is None  # informational
    assert by_name["ours/Quix (at_least_once)"]["value"] == pytest.approx(3.3)
    assert by_name["ours/Quix (at_least_once)"]["met"] is True  # target 3x
    assert by_name["ours/faust (at_least_once)"]["value"] == pytest.approx(16.5)
    eos = by_name["ours exactly_once / at_least_once"]
    assert eos["value"] == pytest.approx(27 / 33) and eos["met"] is False  # more than 15% slower
    missing = by_name["ours/Quix (exactly_once)"]
    assert missing["value"] is None and missing["met"] is None


def test_a_ratio_with_a_failed_denominator_is_absent_not_infinite():
    rows = report.ratios(
        report.summarize([run("ours", "at_least_once", 10.0), run("raw", "at_least_once", None, error="x")])
    )
    assert {r["ratio"]: r["value"] for r in rows}["ours/raw passthrough (at_least_once)"] is None


def test_rss_spread_is_the_largest_deviation_from_the_smallest_configuration():
    points = [{"peak_rss_mb": 100.0}, {"peak_rss_mb": 108.0}, {"peak_rss_mb": 95.0}]
    assert report.rss_spread(points) == pytest.approx(0.08)
    assert report.rss_spread(points[:1]) is None


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert report.percentile(values, 50) == 50
    assert report.percentile(values, 99) == 99
    assert report.percentile(values, 100) == 100
    assert report.percentile(values, 0) == 1
    assert report.percentile([], 50) is None
    with pytest.raises(ValueError):
        report.percentile(values, 101)


def test_parse_result_takes_the_last_result_line_among_log_noise():
    out = 'starting\nBENCH_RESULT {"events_per_s": 1}\nwarning\n\x1b[?25lBENCH_RESULT {"events_per_s": 2}\nbye\n'
    assert report.parse_result(out) == {"events_per_s": 2}
    with pytest.raises(ValueError):
        report.parse_result("crashed\n")


def test_tables_list_the_cases_in_display_order_with_their_runs():
    summary = report.summarize(RUNS)
    table = report.comparison_table(summary)
    lines = table.splitlines()
    assert lines[2].startswith("| raw confluent-kafka loop, at_least_once | 50,000 | 50,000, 40,000, 60,000 |")
    assert "Quix Streams, exactly-once" not in table  # not measured, not shown
    ratio_table = report.ratio_table(report.ratios(summary))
    assert "| ours/hand-written (at_least_once) | 0.82× | ≥ 0.8× | yes |" in ratio_table
    assert "| ours/hand-written (exactly_once) | 0.75× | ≥ 0.8× | **no** |" in ratio_table
    assert "| ours/raw passthrough (at_least_once) | 0.66× | — | — |" in ratio_table
    assert "| ours exactly_once / at_least_once | 0.82× | ≥ 0.85× | **no** |" in ratio_table


DOC = """# Benchmark results

Intro.

## Codec (order.created)

| a | b |

## Load benchmarks (make bench)

old figures

## Later section

kept
"""


def test_replace_section_rewrites_only_its_own_section():
    new = report.replace_section(DOC, "## Load benchmarks (make bench)\n\nnew figures\n")
    assert "old figures" not in new and "new figures" in new
    assert new.startswith("# Benchmark results\n\nIntro.\n\n## Codec (order.created)\n\n| a | b |\n\n")
    assert new.endswith("new figures\n\n## Later section\n\nkept\n")
    assert report.replace_section(new, "## Load benchmarks (make bench)\n\nnew figures\n") == new  # idempotent


def test_replace_section_appends_when_absent_and_refuses_a_wrong_heading():
    doc = "# Benchmark results\n\n## Codec\n\nx\n"
    new = report.replace_section(doc, "## Load benchmarks (make bench)\n\nfigures")
    assert new == doc + "\n## Load benchmarks (make bench)\n\nfigures\n"
    with pytest.raises(ValueError):
        report.replace_section(doc, "## Something else\n")


def test_the_rendered_section_states_machine_event_size_and_failed_targets():
    summary = report.summarize(RUNS)
    results = {
        "quick": True,
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 321.0,
        "peer_venvs_s": 40,
        "machine": {
            "cores": 2,
            "cpu": "AMD EPYC",
            "memory_gib": 23.5,
            "os": "Linux",
            "python": "3.11.7",
            "confluent_kafka": "2.16.1",
            "librdkafka": "2.16.0",
            "fastavro": "1.13.1",
            "load_average_at_start": [0.1, 0.1, 0.1],
            "peers": {"quix": ["quixstreams==3.28.1"]},
        },
        "broker": "local",
        "plan": {"runs": 3},
        "comparison": {
            "load": {
                "events": 1000,
                "spec": {"partitions": 6, "keys": 10_000, "skew": 0.0},
                "mean_event_bytes": 393.0,
                "mean_value_bytes": 125.0,
                "mean_header_bytes": 256.0,
                "mean_key_bytes": 12.0,
            },
            "summary": summary,
            "ratios": report.ratios(summary),
        },
        "growth": {
            "keys": [
                {
                    "keys": 1000,
                    "partitions": 6,
                    "events": 1000,
                    "distinct_keys": 1000,
                    "events_per_s": 5000.0,
                    "peak_rss_mb": 100.0,
                },
                {
                    "keys": 1_000_000,
                    "partitions": 6,
                    "events": 1000,
                    "distinct_keys": 999,
                    "events_per_s": 4000.0,
                    "peak_rss_mb": 130.0,
                },
            ],
            "partitions": [],
            "rss_spread_keys": 0.3,
        },
        "flow": {"status": "pending", "reason": "not yet"},
    }
    text = markdown_section.render(results)
    assert text.startswith(report.SECTION + "\n")
    assert "2 cores (AMD EPYC)" in text and "event size 393 bytes" in text and "median of 3 runs" in text
    assert "| ours exactly_once / at_least_once | 0.82× | ≥ 0.85× | **no** |" in text
    assert "Failed runs: `faust/at_least_once: timed out`" in text
    assert "Peak RSS spread across key counts: 30%" in text and "**not met**" in text
    assert "Not measured (pending): not yet." in text


def test_collapse_profile_ranks_self_and_inclusive_time_of_our_code():
    raw = "\n".join(
        [
            "run (/w/processors/runtime/worker.py:280);handle (/w/processors/runtime/processor.py:190);"
            "schemaless_reader (/v/lib/python3.11/site-packages/fastavro/read.py:1) 6",
            "run (/w/processors/runtime/worker.py:280);handle (/w/processors/runtime/processor.py:201) 3",
            "run (/w/processors/runtime/worker.py:280);"
            "consume (/v/lib/python3.11/site-packages/confluent_kafka/x.py:3) 1",
            "garbage line",
        ]
    )
    prof = report.collapse_profile(raw, top=5)
    assert prof["samples"] == 10
    assert prof["self"][0] == {"function": "schemaless_reader (site-packages/fastavro/read.py)", "share": 0.6}
    assert prof["self"][1] == {"function": "handle (processors/runtime/processor.py)", "share": 0.3}
    incl = {r["function"]: r["share"] for r in prof["inclusive_ours"]}
    assert incl == {"run (processors/runtime/worker.py)": 1.0, "handle (processors/runtime/processor.py)": 0.9}
    assert "| `run (processors/runtime/worker.py)` | 100.0% |" in report.profile_table(prof, "inclusive_ours")
