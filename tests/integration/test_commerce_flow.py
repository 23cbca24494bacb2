"""The commerce choreography against the real broker: worker processes, every outcome path
(confirmed, declined → release, out of stock → refund, timeout → cancel and compensate, invalid),
poison payloads and duplicates, then `choreo verify` reading the topics back independently. The
PSP and the delivery sink are real processes (with a few percent of transient failures), and
their own ledgers are judged against the topics: no order charged, refunded or told twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from processors.agents.demo import DemoOptions, run_demo
from processors.agents.loadgen import OrderMix
from processors.agents.verify import check_receivers, collect
from processors.services.process import start_commerce_services
from processors.settings import Settings

pytestmark = pytest.mark.kafka


@pytest.fixture()
def commerce_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The PSP and the sink as processes; the worker processes inherit their URLs."""
    services = start_commerce_services(tmp_path / "services", psp_failure_rate=0.05, sink_failure_rate=0.05, seed=3)
    for name, value in services.env.items():
        monkeypatch.setenv(name, value)
    yield services
    services.stop()


def test_full_flow_reaches_terminal_states_and_verify_agrees(kafka_bootstrap: str, tmp_path: Path, commerce_services):
    from processors.agents.app import app

    settings = Settings.load(bootstrap_servers=kafka_bootstrap)
    app.configure(settings)
    options = DemoOptions(
        orders=60,
        bad_ratio=0.1,
        duplicate_ratio=0.15,
        workers=2,
        timeout_s=15.0,  # the payment timer must not race a loaded machine: only never-answered orders time out
        seed=11,
        mix=OrderMix(declined=0.15, out_of_stock=0.15, timeout=0.1, invalid=0.1),
        work_dir=tmp_path / "demo",
    )
    summary = run_demo(app, settings, options)

    assert summary["non_terminal"] == 0
    assert summary["invariant_violations"] == []
    assert summary["orders"] == 60
    assert set(summary["terminal"]) == {
        "confirmed",
        "cancelled_payment_declined",
        "cancelled_out_of_stock",
        "cancelled_timeout",
        "cancelled_invalid",
    }
    assert sum(summary["terminal"].values()) == 60
    assert summary["shipped"] == summary["terminal"]["confirmed"]
    assert summary["dead_lettered"].get("undecodable") == summary["published"]["undecodable"] > 0
    assert summary["published"]["duplicates"] > 0
    assert summary["duplicates_dropped"] >= summary["published"]["duplicates"]
    assert summary["audit_completeness"] == 1.0

    verified = subprocess.run(
        [sys.executable, "-m", "processors.cli.main", "verify", "--json", "--order-prefix", f"ord-{summary['run_id']}"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    result = orjson.loads(verified.stdout.strip().splitlines()[-1])
    assert result["terminal"] == summary["terminal"]
    assert result["invariant_violations"] == []
    assert result["audit_completeness"] == 1.0

    prefix = f"ord-{summary['run_id']}"
    receivers = check_receivers(collect(settings, app, order_prefix=prefix), prefix)
    assert receivers["violations"] == []
    psp, sink = receivers["psp"], receivers["sink"]
    assert psp["approved"] == summary["terminal"]["confirmed"] + psp["refunds"]  # each charge confirmed or refunded
    assert 0 < psp["refunds"] <= summary["terminal"]["cancelled_out_of_stock"]
    assert psp["double_charges"] == {} and psp["double_refunds"] == {}
    assert sink["deliveries"] > 0 and sink["duplicate_notifications"] == []
