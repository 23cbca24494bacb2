"""The scale-out walk's arithmetic (benchmarks/scaleout.py) on made-up observations: what counts
as a pause, which partitions moved, the failover time, and the raw data's round trip."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scaleout  # noqa: E402


def test_a_pause_is_the_longest_gap_that_ends_after_the_change() -> None:
    times = [0, 100, 200, 5_000, 5_100]
    assert scaleout.pause_after(times, 150, 6_000) == 4.8
    assert scaleout.pause_after(times, 5_050, 6_000) == 0.9  # the window's end closes the last gap
    assert scaleout.pause_after([], 0, 1_000) == 0.0


def ticks(start: int, end: int, every: int = 100) -> list[int]:
    return list(range(start, end, every))


def test_moved_unmoved_and_failover() -> None:
    plan = scaleout.WalkPlan(phase_s=10, window_s=2)
    a, b = "w1|m1", "w2|m2"
    samples = [
        (1_000, {("x", 0): a, ("x", 1): a}, True),
        (11_000, {("x", 0): a, ("x", 1): b}, True),  # after "start w2": partition 1 moved
        (21_000, {("x", 0): b, ("x", 1): b}, True),  # after "kill w1"
    ]
    audit = {
        ("x", 0): ticks(0, 20_000) + ticks(24_000, 30_000),  # w1's until the kill, then 4 s away
        ("x", 1): ticks(0, 10_000) + ticks(13_000, 30_000),  # 3 s away while it moved
    }
    changes = [
        scaleout.Change("start w2", "start", "w2", 10_000, 2),
        scaleout.Change("kill w1", "kill", "w1", 20_000, 1, -9),
    ]
    created = {"o1": 9_000, "o2": 10_500}
    terminal = {"o1": 9_200, "o2": 13_500}
    result = scaleout.analyse(plan, changes, samples, audit, created, terminal, 2, 30_000)
    start, kill = result["changes"]
    assert start["moved"] == {"n": 1, "median_s": 3.1, "max_s": 3.1}  # 9.9 s to 13 s
    assert start["unmoved"]["max_s"] == 0.1 and start["unmoved_paused"] == 0
    assert start["flow_before"]["p50_ms"] == 200 and start["flow_during"]["p50_ms"] == 3_000
    assert kill["moved"]["n"] == 1  # the killed worker's partition moved even by its owner alone
    assert kill["failover"] == {"partitions": 1, "n": 1, "median_s": 4.0, "max_s": 4.0}
    assert result["pause_threshold_s"] == 1.0


def test_the_raw_data_round_trips(tmp_path: Path) -> None:
    samples = [(1_000, {("x", 0): "w1|m1"}, True)]
    raw = scaleout.Raw(
        {"phase_s": 10.0, "worker_env": {"CHOREO_KAFKA_SASL_PASSWORD": "p"}},
        [scaleout.Change("start w2", "start", "w2", 10_000, 2).__dict__],
        samples,
        defaultdict(list, {("x", 0): [1, 2]}),
        {"o": 1},
        {"o": 2},
        1,
        20_000,
    )
    raw.save(tmp_path / "raw.json")
    text = (tmp_path / "raw.json").read_text()
    assert '"CHOREO_KAFKA_SASL_PASSWORD": "***"' in text and '"p"' not in text
    back = scaleout.Raw.load(tmp_path / "raw.json")
    assert back.samples == samples and back.audit == {("x", 0): [1, 2]}
    assert scaleout.reanalyse(tmp_path / "raw.json")["changes"][0]["change"] == "start w2"
