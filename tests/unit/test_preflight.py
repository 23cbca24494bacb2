"""What the worker's pre-flight check asks the broker for, and how it reads the answer."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka.admin import AclOperation

from processors.runtime._preflight import _permits, needed_operations
from tests.engine.app import build_app, write_contracts


def test_an_agent_needs_read_on_inputs_and_write_on_everything_it_produces(tmp_path: Path) -> None:
    contracts, schemas = write_contracts(tmp_path, "pf")
    app = build_app("pf", contracts, schemas)
    needs = needed_operations(app, app.agents["counter"])
    assert needs["pf.counter.incremented"] == {AclOperation.READ}
    assert needs["pf.counter.reset"] == {AclOperation.READ}
    assert needs["pf.counter.incremented.dlq"] == {AclOperation.WRITE}
    assert needs["pf.counter.total"] == {AclOperation.WRITE}
    assert needs[app.changelog_topic("counter")] == {AclOperation.READ, AclOperation.WRITE}
    assert needs[app.audit_topic] == {AclOperation.WRITE}


def test_authorized_operations_are_read_with_kafkas_implications() -> None:
    assert _permits([AclOperation.READ, AclOperation.DESCRIBE], AclOperation.READ)
    assert not _permits([AclOperation.WRITE, AclOperation.DESCRIBE], AclOperation.READ)
    assert _permits([AclOperation.ALL], AclOperation.WRITE)
    assert _permits([AclOperation.READ], AclOperation.DESCRIBE)  # READ implies DESCRIBE
