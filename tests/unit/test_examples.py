"""The README's examples are files in examples/ that run: the README shows each file's code
verbatim (a block preceded by `<!-- example: PATH -->`), and the counter behaves as it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from examples.counter.app import app as counter_app
from processors.runtime.testing import AgentDriver

REPO = Path(__file__).resolve().parents[2]
MARKED_BLOCK = re.compile(r"<!-- example: (?P<path>[^ ]+) -->\n```python\n(?P<code>.*?)```", re.DOTALL)


def _readme_examples() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in MARKED_BLOCK.finditer((REPO / "README.md").read_text())]


def test_the_readme_marks_the_counter_example():
    assert "examples/counter/app.py" in [path for path, _ in _readme_examples()]


@pytest.mark.parametrize(("path", "code"), _readme_examples(), ids=lambda v: v if v.endswith(".py") else "")
def test_the_readme_shows_the_example_file_verbatim(path: str, code: str):
    assert code == (REPO / path).read_text(), f"README.md's block for {path} differs from the file"


def test_the_counter_adds_per_key_and_emits_its_total():
    driver = AgentDriver(counter_app, "counter", now_ms=1_700_000_000_000)
    driver.send("counter.incremented", {"name": "a", "by": 2})
    result = driver.send("counter.incremented", {"name": "a", "by": 3})
    driver.send("counter.incremented", {"name": "b", "by": 1})
    assert result.outcome == "PROCESSED"
    assert [e.value for e in result.emitted_of("counter.total")] == [{"name": "a", "total": 5, "seq": 2}]
    assert driver.state("a") == {"n": 5, "seq": 2}
    assert driver.state("b") == {"n": 1, "seq": 1}


def test_going_below_zero_is_dead_lettered_with_its_reason_and_changes_nothing():
    driver = AgentDriver(counter_app, "counter")
    driver.send("counter.incremented", {"name": "a", "by": 2})
    refused = driver.send("counter.incremented", {"name": "a", "by": -5})
    assert refused.outcome == "DEAD_LETTERED" and refused.reason == "negative_total"
    assert refused.dlq is not None and refused.dlq.topic == "shop.counter.incremented.dlq"
    assert driver.state("a") == {"n": 2, "seq": 1}


def test_the_idle_timer_fires_once_after_five_minutes_without_increments():
    driver = AgentDriver(counter_app, "counter", now_ms=1_700_000_000_000)
    driver.send("counter.incremented", {"name": "a", "by": 4})
    assert driver.advance(299) == []
    fired = driver.advance(2)
    assert [e.value for r in fired for e in r.emitted_of("counter.total")] == [{"name": "a", "total": 4, "seq": 1}]
    assert driver.advance(600) == []
