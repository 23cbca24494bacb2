"""The commerce fault run of ``make fault-commerce`` as a soak test: 2,000 orders through the
commerce flow with the PSP at 50 ms and 3 % transient failures, five SIGKILLs while they are
published, on a broker of its own; judged on the JSON figures from the PSP's and the sink's own
ledgers and ``choreo verify``."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from tests.engine.harness import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(1800)]


def test_commerce_fault_run_leaves_no_double_or_missing_effect_at_the_receivers():
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("the fault run starts a broker of its own")
    done = subprocess.run(
        [sys.executable, "-m", "tests.engine.commerce_faults", "--guarantee", "exactly_once", "--orders", "2000",
         "--kills", "5", "--psp-latency-ms", "50", "--psp-failure-rate", "0.03", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    (figures,) = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["orders"], figures["sigkills"]) == (2000, 5), figures["kills"]
    assert figures["charged_then_cancelled"] > 0  # the mix has out-of-stock orders with good cards
    ledger = {name: figures[name] for name in ("double_charges", "orphan_refunds", "double_refunds", "wrong_refunds")}
    assert ledger == dict.fromkeys(ledger, 0), figures["notes"]
    refunds = (figures["unrefunded"], figures["refunded_once"])
    assert refunds == (0, figures["charged_then_cancelled"]), figures["notes"]
    assert figures["confirmed_uncharged"] == 0, figures["notes"]
    assert (figures["duplicate_notifications"], figures["missing_notifications"]) == (0, 0), figures["notes"]
    assert (figures["non_terminal"], figures["wrong_outcomes"]) == (0, 0), figures["notes"]
    assert figures["unexpected_exits"] == 0, figures["notes"]
    assert figures["verify_ok"] and figures["settled"], figures["verify_violations"]
    assert figures["ok"] and done.returncode == 0, figures["failures"]
