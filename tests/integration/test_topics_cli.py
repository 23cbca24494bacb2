"""`choreo topics create|list|describe` against the real broker: the engine's plan (inputs, DLQs,
outputs, changelog, audit), created once, idempotent, --dry-run creating nothing, and a topic
with another partition count than its contract reported with exit 1."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from processors.cli.main import app
from processors.runtime.topics import existing_topics
from processors.settings import REPO_ROOT

pytestmark = pytest.mark.kafka
runner = CliRunner()
EXAMPLE = REPO_ROOT / "examples" / "counter"

APP_MODULE = """
from processors.runtime import App

app = App("{app_id}", audit_topic="{prefix}.audit")


@app.agent("counter", consumes=["counter.incremented"], produces=["counter.total"])
def count(event, ctx):
    ctx.emit("counter.total", event.key, {{"name": event.key, "total": 1, "seq": 1}})
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str):
    prefix = f"topics{uuid.uuid4().hex[:8]}"
    shutil.copytree(EXAMPLE / "schemas", tmp_path / "schemas")
    (tmp_path / "contracts").mkdir()
    for path in (EXAMPLE / "contracts").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data["topic"] = f"{prefix}.{data['event_type']}"
        (tmp_path / "contracts" / path.name).write_text(yaml.safe_dump(data))
    module = f"app_{prefix}"
    (tmp_path / f"{module}.py").write_text(APP_MODULE.format(app_id=prefix, prefix=prefix))
    monkeypatch.chdir(tmp_path)  # `--app MODULE:APP` imports from the current directory
    monkeypatch.syspath_prepend(str(tmp_path))
    options = ["--app", f"{module}:app", "--contracts-dir", "contracts", "--schemas-dir", "schemas"]
    return prefix, [*options, "--bootstrap", kafka_bootstrap]


def test_create_makes_the_plan_once_and_dry_run_nothing(project, kafka_bootstrap: str):
    prefix, options = project
    expected = {
        f"{prefix}.counter.incremented": 3,
        f"{prefix}.counter.incremented.dlq": 3,
        f"{prefix}.counter.total": 3,
        f"{prefix}.counter.state.changelog": 3,
        f"{prefix}.audit": 3,
    }
    dry = runner.invoke(app, ["topics", "create", *options, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.stdout)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert not {t for t in existing_topics(admin) if t.startswith(prefix)}, "--dry-run created something"
    created = runner.invoke(app, ["topics", "create", *options, "--json"])
    assert created.exit_code == 0, created.output
    assert sorted(json.loads(created.stdout)["created"]) == sorted(planned["created"])
    on_cluster = {t: n for t, n in existing_topics(admin).items() if t.startswith(prefix)}
    assert on_cluster == expected
    again = runner.invoke(app, ["topics", "create", *options, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["created"] == []
    listed = runner.invoke(app, ["topics", "list", *options, "--json"])
    assert listed.exit_code == 0, listed.output
    assert {row["status"] for row in json.loads(listed.stdout)} == {"ok"}
    described = runner.invoke(app, ["topics", "describe", f"{prefix}.counter.incremented", *options, "--json"])
    assert described.exit_code == 0, described.output
    row = json.loads(described.stdout)[0]
    assert row["partitions"] == 3 and row["config"]["retention.ms"] == str(7 * 24 * 3600 * 1000)
    changelog = f"{prefix}.counter.state.changelog"
    compacted = runner.invoke(app, ["topics", "describe", changelog, *options, "--json"])
    assert json.loads(compacted.stdout)[0]["config"]["cleanup.policy"] == "compact"


def test_a_topic_with_other_partitions_than_its_contract_fails_the_check(project, create_topics):
    prefix, options = project
    create_topics([f"{prefix}.counter.total"], partitions=1)
    listed = runner.invoke(app, ["topics", "list", *options])
    assert listed.exit_code == 1
    created = runner.invoke(app, ["topics", "create", *options])
    assert created.exit_code == 1 and f"{prefix}.counter.total has 1 partitions" in created.output
