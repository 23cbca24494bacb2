"""Failures of the environment fail clean: against a SASL_SSL + SCRAM + ACL broker, every command
and the worker end non-zero within a bound, with one line naming the real cause, no traceback and
no password (issue 13, point 4). The default suite runs every failure class (several commands in
parallel, the worker under each); the whole command × failure matrix is a soak test. Each run
prints its matrix row (``-s`` shows them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.secured_matrix import (
    CONNECTION_FAILURES,
    Outcome,
    Run,
    assert_all_fail_clean,
    run_parallel,
    scenario,
    tool_scenario,
    worker_run,
    worker_setup,
)
from tests.secured_cluster import SecuredCluster

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

TOOLS = ("publish", "tail", "replay", "dlq show", "dlq redrive", "verify", "roundtrip")
APPLIES = {  # the commands a failure can stop (the tools read with assign(): no group is involved)
    **{failure: TOOLS for failure in CONNECTION_FAILURES},
    "group_denied": ("roundtrip",),
    "topic_read_denied": ("tail", "replay", "dlq show", "dlq redrive", "verify", "roundtrip"),
    "write_denied": ("publish", "replay", "dlq redrive", "roundtrip"),
    "transactional_id_denied": (),  # no command uses transactions
}
DEFAULT_TOOLS = {  # the default suite: every failure class, every command at least once
    "unreachable": ("tail", "verify"),
    "wrong_password": ("publish", "dlq show", "roundtrip"),
    "untrusted_ca": ("replay", "dlq redrive"),
    "group_denied": ("roundtrip",),
    "topic_read_denied": ("tail",),
    "write_denied": ("publish",),
}
WORKER_FAILURES = ("unreachable", "wrong_password", "group_denied", "topic_read_denied", "write_denied")


def _run(runs: list[Run]) -> None:
    outcomes: list[Outcome] = run_parallel(runs)
    for outcome in outcomes:
        print(outcome.row())
    assert_all_fail_clean(outcomes)


def test_every_failure_class_fails_clean_for_the_commands(secured_cluster: SecuredCluster, tmp_path: Path) -> None:
    runs = []
    for failure, commands in DEFAULT_TOOLS.items():
        (tmp_path / failure).mkdir()
        runs += tool_scenario(secured_cluster, failure, tmp_path / failure, commands)
    _run(runs)


def test_every_failure_class_fails_clean_for_the_worker(secured_cluster: SecuredCluster, tmp_path: Path) -> None:
    runs = []
    for failure in WORKER_FAILURES:
        (tmp_path / failure).mkdir()
        setup = worker_setup(secured_cluster, tmp_path / failure, failure)
        runs.append(worker_run(setup, scenario(secured_cluster, failure)))
    _run(runs)


def test_a_denied_transactional_id_stops_the_worker_clean(secured_cluster: SecuredCluster, tmp_path: Path) -> None:
    setup = worker_setup(secured_cluster, tmp_path, "transactional_id_denied")
    _run([worker_run(setup, scenario(secured_cluster, "transactional_id_denied"))])


@pytest.mark.soak
def test_with_every_grant_the_commands_work(secured_cluster: SecuredCluster, tmp_path: Path) -> None:
    """The control: the ACLs each scenario starts from are enough, so a failure above is the denial."""
    outcomes = run_parallel(tool_scenario(secured_cluster, "none", tmp_path, TOOLS))
    for outcome in outcomes:
        print(outcome.row())
        assert "authorization failed" not in outcome.output and "Traceback" not in outcome.output, outcome.output
        if outcome.name != "verify":  # verify judges the topics' content (one undecodable record here)
            assert outcome.code == 0, f"{outcome.name}: {outcome.output[-2000:]}"


@pytest.mark.soak
@pytest.mark.parametrize(
    "failure",
    list(APPLIES),
)
def test_the_whole_matrix_fails_clean(secured_cluster: SecuredCluster, tmp_path: Path, failure: str) -> None:
    runs = tool_scenario(secured_cluster, failure, tmp_path, APPLIES[failure])
    guarantees = ("exactly_once",) if failure == "transactional_id_denied" else ("exactly_once", "at_least_once")
    for guarantee in guarantees:
        setup = worker_setup(secured_cluster, tmp_path / guarantee, failure)
        runs.append(worker_run(setup, scenario(secured_cluster, failure), guarantee))
    _run(runs)
