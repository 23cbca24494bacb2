"""A bank ledger written from the README alone, for the chaos run (``make chaos``): postings to
accounts (a deposit when the amount is positive, a withdrawal when negative), a withdrawal that
would overdraw refused with ``Reject("overdraft", ...)``, the balance emitted after each applied
posting with a sequence number.

Run as ``choreo worker --app tests.engine.ledger:app --agents ledger``; the environment chooses the
app id and the contract directories (``LEDGER_APP_ID``, ``LEDGER_CONTRACTS_DIR``,
``LEDGER_SCHEMAS_DIR``) so each run has its own topics.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from processors.runtime import App, Reject

DATA = Path(__file__).resolve().parents[1] / "data" / "ledger"


def write_ledger_contracts(dest: Path, prefix: str) -> tuple[Path, Path]:
    """The ledger contracts with every topic renamed ``<prefix>.<event type>`` (audit too)."""
    contracts, schemas = dest / "contracts", dest / "schemas"
    contracts.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DATA / "schemas", schemas, dirs_exist_ok=True)
    for path in sorted((DATA / "contracts").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        data["topic"] = f"{prefix}.{data['event_type']}"
        (contracts / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return contracts, schemas


def build_ledger_app(app_id: str, contracts_dir: Path | str, schemas_dir: Path | str) -> App:
    app = App(app_id, contracts_dir=contracts_dir, schemas_dir=schemas_dir)

    @app.agent("ledger", consumes=["ledger.posted"], produces=["ledger.balance"], version="1")
    def ledger(event, ctx):
        amount = event.value["amount"]
        state = ctx.state
        balance = state.get("balance", 0)
        if balance + amount < 0:
            raise Reject("overdraft", f"withdrawal of {-amount} refused: the balance is lower")
        state["balance"] = balance + amount
        state["seq"] = state.get("seq", 0) + 1
        ctx.emit("ledger.balance", event.key, {"account": event.key, "balance": state["balance"], "seq": state["seq"]})

    return app


app = build_ledger_app(
    os.environ.get("LEDGER_APP_ID", "ledger-chaos"),
    os.environ.get("LEDGER_CONTRACTS_DIR", str(DATA / "contracts")),
    os.environ.get("LEDGER_SCHEMAS_DIR", str(DATA / "schemas")),
)
