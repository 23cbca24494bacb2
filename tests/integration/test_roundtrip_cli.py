"""`choreo roundtrip` against the real broker: every event back, and nothing of the run left on
the cluster (its throwaway topic and consumer group are deleted), so running it against a shared
cluster, as an operator's first check, does not pile up topics and groups."""

from __future__ import annotations

import json
import os

import pytest
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from processors.cli.main import app
from processors.runtime.topics import existing_topics

pytestmark = pytest.mark.kafka


def test_roundtrip_gets_every_event_back_and_leaves_nothing_behind(kafka_bootstrap, monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("CHOREO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        ["roundtrip", "--events", "40", "--rate", "0", "--partitions", "2", "--bootstrap", kafka_bootstrap, "--json"],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert (figures["sent"], figures["received"], figures["failed"]) == (40, 40, 0)
    assert "warning" not in result.output
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert figures["topic"].startswith("choreo.roundtrip.")
    assert figures["topic"] not in existing_topics(admin)
    groups = {g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid}
    assert figures["group"].startswith("choreo-tools.roundtrip.") and figures["group"] not in groups
