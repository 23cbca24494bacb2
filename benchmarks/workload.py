"""The load-benchmark workload on our engine: one stateful agent over realistic `order.created` events.

Per event the engine decodes the CloudEvents envelope and the Avro value (single-object encoding,
any contract version resolved to the current one), drops a duplicate idempotency key, reads and
writes the per-key state (RocksDB, changelogged), encodes and validates an `order.confirmed`
follow-up, and writes an audit record. The peers (`benchmarks/peers/`) implement the same steps.

The harness is `bench_engine.agent_run` (first batch to last commit), given this module's
:func:`build_app` and agent name (see :func:`run_engine_agent`).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from processors.runtime import App  # noqa: E402

INPUT_TYPE = "order.created"
OUTPUT_TYPE = "order.confirmed"
AGENT = "counter"  # the workload's agent, run by bench_engine.agent_run


def write_contracts(dest: Path, prefix: str, partitions: int) -> tuple[Path, Path]:
    """The repository's contracts with every topic under ``prefix.`` and ``partitions`` partitions,
    so each benchmark configuration has its own topics."""
    contracts, schemas = dest / "contracts", dest / "schemas"
    contracts.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "schemas", schemas, dirs_exist_ok=True)
    for path in sorted((REPO / "contracts").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        data["topic"] = f"{prefix}.{data['topic']}"
        data["partitions"] = partitions
        (contracts / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return contracts, schemas


def topics(prefix: str) -> dict[str, str]:
    """Topic names of one configuration (the same for every system)."""
    return {
        "input": f"{prefix}.{INPUT_TYPE}",
        "output": f"{prefix}.{OUTPUT_TYPE}",
        "audit": f"{prefix}.choreo.audit",
        "raw_output": f"{prefix}.raw-out",
        "hand_changelog": f"{prefix}.hand-changelog",  # the hand-written loop's state changelog
    }


def build_app(app_id: str, contracts: Path, schemas: Path) -> App:
    app = App(app_id, contracts_dir=contracts, schemas_dir=schemas)

    # keyed by customer (not the contract's order_id): per-customer totals, on the customer's partition
    @app.agent(AGENT, consumes=[INPUT_TYPE], produces=[OUTPUT_TYPE], version="1", routing="key")
    def order_totals(event, ctx):
        order = event.value
        state = ctx.state
        state["orders"] = state.get("orders", 0) + 1
        state["total_minor"] = state.get("total_minor", 0) + order["total_minor"]
        ctx.emit(
            OUTPUT_TYPE,
            event.key,
            {
                "order_id": order["order_id"],
                "total_minor": order["total_minor"],
                "currency": order["currency"],
                "confirmed_at": int(time.time() * 1000),
            },
        )

    return app


def run_engine_agent(
    bootstrap: str,
    contracts: Path,
    schemas: Path,
    prefix: str,
    events: int,
    eos: bool,
    batch: int,
    state_root: Path,
    profile: str | None = None,
) -> float:
    """Events/s of our agent on the workload, through bench_engine's harness."""
    import bench_engine

    return bench_engine.agent_run(
        bootstrap,
        contracts,
        schemas,
        prefix,
        events,
        eos,
        batch,
        state_root,
        profile,
        app_factory=build_app,
        agent=AGENT,
    )
