"""The per-event path produces byte-identical records to the implementation before its optimisation.

``tests/data/golden/processor_records.json`` was recorded (``python -m tests.unit.engine_golden
--write``) from the unoptimised processor; see :mod:`tests.unit.engine_golden` for the scenario.
"""

from __future__ import annotations

import json

import pytest

from tests.unit.engine_golden import GOLDEN, run_scenarios


@pytest.fixture(scope="module")
def golden() -> list[dict]:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def actual() -> list[dict]:
    return run_scenarios()


def test_same_steps(golden, actual):
    assert [s["label"] for s in actual] == [s["label"] for s in golden]


def test_every_step_byte_identical(golden, actual):
    for want, got in zip(golden, actual, strict=True):
        # one step at a time, so a failure names the input and the field that differs
        for field in want:
            assert got.get(field) == want[field], f"{want['label']}: {field} differs"
        assert set(got) == set(want), want["label"]
