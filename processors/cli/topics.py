"""`choreo topics list|describe|create`: the topics an app needs, planned from its contracts.

The plan is the engine's own (`processors.runtime.topics.plan_topics`, what a worker creates
before it starts: inputs and their DLQs, outputs, changelogs, the audit topic) plus the topic of
every other contract in the registry. `create` makes what is missing and never alters a topic
that exists, so running it twice is harmless; `--dry-run` only says what it would create.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from rich.table import Table

from processors.cli.worker import load_app, require_contracts
from processors.runtime.topics import TopicPlan, TopicSpec, ensure_topics, existing_topics, plan_topics
from processors.tooling.cli_support import (
    EXIT_FAILED,
    BootstrapOption,
    ConfigOption,
    ContractsDirOption,
    JsonOption,
    SchemasDirOption,
    err,
    load_settings,
    operator_errors,
    out,
    print_json,
)

DEFAULT_APP = "processors.agents.app:app"
DESCRIBED_CONFIGS = ("cleanup.policy", "retention.ms", "delete.retention.ms", "min.insync.replicas")

app = typer.Typer(
    help="Topics an app needs, from its contracts: list, describe, create (idempotent, --dry-run).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
AppOption = typer.Option(DEFAULT_APP, "--app", help="The App whose topics to plan, as MODULE:ATTR.")


def full_plan(the_app: Any, existing: dict[str, int]) -> TopicPlan:
    """The worker's plan for all the app's agents, plus every other contract's topic. With the
    cluster's partition counts (``existing``) it is what to create, so a new changelog matches
    the inputs it backs; with ``{}`` it is what the contracts say, to compare with the cluster."""
    plan = plan_topics(the_app, list(the_app.agents.values()), existing)
    for contract in the_app.registry.all():
        count = existing.get(contract.topic, contract.partitions)
        plan.setdefault(contract.topic, TopicSpec(count, {"retention.ms": str(contract.retention_ms)}))
    return dict(sorted(plan.items()))


def topic_kind(the_app: Any, name: str) -> str:
    """What a planned topic is for, as people ask about it."""
    if name == the_app.audit_topic:
        return "audit"
    if any(name == the_app.changelog_topic(agent) for agent in the_app.agents):
        return "changelog"
    if name.endswith(".dlq"):
        return "dlq"
    contracts = the_app.registry.for_topic(name)
    return "events: " + ", ".join(c.event_type for c in contracts) if contracts else "other"


def _context(app_spec: str, bootstrap: str | None, config: Path | None, contracts: Path | None, schemas: Path | None):
    settings = load_settings(bootstrap, config, contracts_dir=contracts, schemas_dir=schemas)
    the_app = load_app(app_spec)
    the_app.configure(settings)
    require_contracts(the_app, settings, f"pass --app MODULE:APP for your own app (the default is {DEFAULT_APP})")
    return settings, the_app, AdminClient(settings.kafka_config())


def _rows(the_app: Any, plan: TopicPlan, existing: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for name, spec in plan.items():
        actual = existing.get(name)
        status = "missing" if actual is None else "ok" if actual == spec.partitions else "partitions differ"
        rows.append(
            {
                "topic": name,
                "kind": topic_kind(the_app, name),
                "partitions": spec.partitions,
                "actual_partitions": actual,
                "config": spec.config,
                "status": status,
            }
        )
    return rows


@app.command("list")
def list_(
    app_spec: str = AppOption,
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """The planned topics and whether each exists with the planned partition count (exit 1 when
    one has another count)."""
    with operator_errors():
        _, the_app, admin = _context(app_spec, bootstrap, config, contracts_dir, schemas_dir)
        existing = existing_topics(admin)
        rows = _rows(the_app, full_plan(the_app, {}), existing)
    if json_output:
        print_json(rows)
    else:
        table = Table(title="topics")
        table.add_column("topic", no_wrap=True)  # a topic name cut or folded cannot be copied
        for column in ("kind", "partitions", "on the cluster", "config"):
            table.add_column(column, overflow="fold")
        for row in rows:
            actual = "missing" if row["actual_partitions"] is None else str(row["actual_partitions"])
            config_text = ", ".join(f"{k}={v}" for k, v in row["config"].items())
            table.add_row(row["topic"], row["kind"], str(row["partitions"]), actual, config_text)
        out.print(table)
    if any(row["status"] == "partitions differ" for row in rows):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def describe(
    topics: list[str] = typer.Argument(None, help="Topics to describe [default: every planned topic]."),
    app_spec: str = AppOption,
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """Each topic as the cluster has it (partitions, leaders, configs) next to the plan."""
    with operator_errors():
        _, the_app, admin = _context(app_spec, bootstrap, config, contracts_dir, schemas_dir)
        existing = existing_topics(admin)
        plan = full_plan(the_app, {})
        names = topics or list(plan)
        metadata = admin.list_topics(timeout=15).topics
        present = [n for n in names if n in existing]
        configs = _configs(admin, present)
        rows: list[dict[str, Any]] = []
        for name in names:
            planned = plan.get(name)
            info = metadata.get(name)
            rows.append(
                {
                    "topic": name,
                    "kind": topic_kind(the_app, name) if planned is not None else "not planned",
                    "exists": name in existing,
                    "partitions": existing.get(name),
                    "leaders": {str(p): pm.leader for p, pm in sorted(info.partitions.items())} if info else {},
                    "config": configs.get(name, {}),
                    "planned": None
                    if planned is None
                    else {"partitions": planned.partitions, "config": planned.config},
                }
            )
    if json_output:
        print_json(rows)
        return
    for row in rows:
        table = Table(title=row["topic"], show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("kind", row["kind"])
        table.add_row("exists", "yes" if row["exists"] else "no")
        wanted = row["planned"]
        table.add_row("partitions", f"{row['partitions']} (planned {wanted['partitions'] if wanted else '-'})")
        if row["leaders"]:
            table.add_row("leaders", ", ".join(f"{p}:{leader}" for p, leader in row["leaders"].items()))
        for key, value in row["config"].items():
            want = wanted["config"].get(key) if wanted else None
            table.add_row(key, value + (f" (planned {want})" if want is not None and want != value else ""))
        out.print(table)


def _configs(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    found: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources).items():
        entries = future.result(timeout=15)
        found[resource.name] = {k: str(entries[k].value) for k in DESCRIBED_CONFIGS if k in entries}
    return found


@app.command()
def create(
    app_spec: str = AppOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be created; create nothing."),
    bootstrap: str | None = BootstrapOption,
    config: Path | None = ConfigOption,
    contracts_dir: Path | None = ContractsDirOption,
    schemas_dir: Path | None = SchemasDirOption,
    json_output: bool = JsonOption,
) -> None:
    """Create the planned topics that do not exist (never alters existing ones), wait until they
    have leaders; exit 1 when an existing topic has another partition count than planned."""
    with operator_errors():
        _, the_app, admin = _context(app_spec, bootstrap, config, contracts_dir, schemas_dir)
        existing = existing_topics(admin)
        plan = full_plan(the_app, existing)
        missing = [name for name in plan if name not in existing]
        created = missing if dry_run else sorted(ensure_topics(admin, plan))
        contract_plan = full_plan(the_app, {})
        differ = [r["topic"] for r in _rows(the_app, contract_plan, existing) if r["status"] == "partitions differ"]
    if json_output:
        print_json(
            {"dry_run": dry_run, "created": created, "existing": sorted(set(plan) & set(existing)), "differ": differ}
        )
    else:
        verb = "would create" if dry_run else "created"
        for name in created:
            spec = plan[name]
            config_text = "".join(f" {k}={v}" for k, v in spec.config.items())
            out.print(f"{verb} {name} partitions={spec.partitions}{config_text}", highlight=False, markup=False)
        out.print(
            f"{verb} {len(created)} topic(s); {len(plan) - len(missing)} already existed", highlight=False, markup=False
        )
    for name in differ:
        err.print(f"error: {name} has {existing[name]} partitions, the contracts say {contract_plan[name].partitions}")
    if differ:
        raise typer.Exit(EXIT_FAILED)
