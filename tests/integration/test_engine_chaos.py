"""The chaos run of ``make chaos`` as a soak test: the ledger through SIGKILLs, 1 → 3 → 2 workers,
a wiped state directory and a broker restart, on a broker of its own, under each guarantee."""

from __future__ import annotations

import os

import pytest

from tests.engine.chaos import Run

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_chaos_run_loses_duplicates_and_miscomputes_nothing(tmp_path, guarantee):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("the chaos run restarts a broker of its own")
    figures = Run(guarantee, 20_000, tmp_path, stall_s=30.0, outage_s=15.0).run()
    assert figures.applied > 0 and figures.refused > 0  # the ledger refused overdrafts
    assert (figures.lost, figures.duplicated, figures.wrong_state) == (0, 0, 0), figures
    assert figures.unexpected_exits == 0, figures.notes
    assert figures.visibility_stalls == 0, figures
