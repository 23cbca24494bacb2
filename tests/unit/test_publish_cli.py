"""`choreo publish` refusing records: what it prints names fields and types, never a PII value —
also in `--json`, whose refused records show the contract's PII fields as `***` — while the
--rejects file keeps each record whole for the producer to fix and send again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from processors.cli.main import app
from processors.contracts import ContractRegistry

EMAIL = "secret.buyer@example.com"
CARD = 4111111111111111


def _order(**changes: object) -> dict:
    order = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "customer_email": EMAIL,
        "card_token": "tok_1",
        "items": [{"sku": "mug-7", "qty": 1, "unit_price_minor": 850}],
        "total_minor": 850,
        "currency": "EUR",
        "created_at": "2024-05-01T09:31:12Z",
    }
    return {**order, **changes}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("CHOREO_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_refused_records_show_no_pii_value_on_stdout_or_stderr(clean_env: Path) -> None:
    pii = ContractRegistry.load().get("order.created").pii_fields
    assert {"customer_email", "card_token"} <= {p.split(".")[-1] for p in pii}  # what this test relies on
    source = clean_env / "orders.ndjson"
    source.write_text(json.dumps(_order(card_token=CARD)) + "\n")
    args = ["publish", "order.created", "--file", str(source), "--bootstrap", "127.0.0.1:1"]  # never reached
    for extra in (["--json"], ["--json", "--dry-run"], []):
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2, result.output
        assert EMAIL not in result.output and str(CARD) not in result.output, result.output
        assert "card_token: expected string, got long" in result.stderr
    summary = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    record = summary["rejects"][0]["record"]
    assert record["customer_email"] == record["card_token"] == "***" and record["order_id"] == "o-1"
    rejects = clean_env / "rejects.ndjson"
    kept = CliRunner().invoke(app, [*args, "--skip-invalid", "--rejects", str(rejects), "--json"])
    assert EMAIL not in kept.stdout
    assert json.loads(rejects.read_text())["record"] == _order(card_token=CARD)  # whole, to be fixed and resent
