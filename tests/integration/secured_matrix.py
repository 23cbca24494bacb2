"""The failure matrix against the secured broker: scenarios (settings and ACLs that make one thing
fail), the commands and the worker run as real processes, and what every outcome must show.

Every run must end on its own, non-zero, within :data:`FAIL_WITHIN_S`; its output must hold one
``error:`` line naming the cause, no traceback and no password. Runs of one scenario go in
parallel (they mostly wait on the network), so the matrix costs about one command's failure time
per scenario.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AclOperation, ResourceType

from processors.contracts import Envelope
from processors.kafka_types import produce_headers
from processors.localbroker.broker import free_port
from processors.runtime.topics import ensure_topics, plan_topics
from tests.engine.app import build_app, write_contracts
from tests.integration.tooling_support import isolate_contracts, order
from tests.secured_cluster import APP_USER, TOOL_USERS, SecuredCluster, acl, create_acls

REPO = Path(__file__).resolve().parents[2]
FAIL_WITHIN_S = 60.0
"""What 'bounded' means here: the tools wait up to 15 s for metadata, the diagnosis up to 6 s more."""

CAUSES = {
    "unreachable": r"broker unreachable.*(Connection refused|Connect to)",
    "wrong_password": r"authentication failed.*SASL authentication error",
    "untrusted_ca": r"TLS handshake failed.*certificate verify failed",
    "group_denied": r"group authorization failed",
    "topic_read_denied": r"topic authorization failed",
    "write_denied": r"topic authorization failed",
    "transactional_id_denied": r"transactional id authorization failed",
}
CONNECTION_FAILURES = ("unreachable", "wrong_password", "untrusted_ca")


@dataclass
class Outcome:
    name: str
    failure: str
    argv: list[str]
    code: int | None
    seconds: float
    output: str
    secrets: tuple[str, ...] = ()

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("error:")]

    def problems(self) -> list[str]:
        """Everything this outcome does wrong ([] when it fails clean)."""
        found = []
        if self.code is None:
            found.append(f"still running after {FAIL_WITHIN_S:.0f}s (killed)")
        elif self.code == 0:
            found.append("exit code 0")
        if "Traceback" in self.output:
            found.append("a traceback")
        for secret in self.secrets:
            if secret and secret in self.output:
                found.append("a password in the output")
        lines = self.error_lines
        if len(lines) != 1:
            found.append(f"{len(lines)} error lines")
        elif not re.search(CAUSES[self.failure], lines[0], re.IGNORECASE):
            found.append(f"the error line does not name the cause /{CAUSES[self.failure]}/")
        return found

    def row(self) -> str:
        line = self.error_lines[0] if self.error_lines else self.output.strip().splitlines()[-1:] or [""]
        text = line if isinstance(line, str) else line[0]
        lines = len(self.output.strip().splitlines())
        return f"| {self.name} | {self.failure} | {self.code} | {self.seconds:.1f} | {lines} lines | {text[:160]} |"


@dataclass
class Run:
    name: str
    failure: str
    argv: list[str]
    env: dict[str, str]
    secrets: tuple[str, ...] = ()
    cwd: Path = REPO


def run_parallel(runs: Iterable[Run], within: float = FAIL_WITHIN_S) -> list[Outcome]:
    """Start every run at once; each gets `within` seconds to end on its own, then is killed.
    Output goes to a file (a worker's log may be longer than a pipe holds)."""
    started = []
    for run in runs:
        env = {**os.environ, **run.env, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("CHOREO_LOG_LEVEL", None)
        log = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed once the run ended, below
        proc = subprocess.Popen(run.argv, cwd=run.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        started.append((run, proc, log, time.monotonic()))
    ended: dict[int, float] = {}
    while len(ended) < len(started):
        now = time.monotonic()
        for i, (_run, proc, _log, t0) in enumerate(started):
            if i in ended:
                continue
            if proc.poll() is not None:
                ended[i] = now - t0
            elif now - t0 > within:
                proc.kill()
                proc.wait()
                ended[i] = now - t0
        time.sleep(0.1)
    outcomes = []
    for i, (run, proc, log, _t0) in enumerate(started):
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
        code = None if ended[i] > within else proc.returncode
        outcomes.append(Outcome(run.name, run.failure, run.argv, code, ended[i], output, run.secrets))
    return outcomes


def assert_all_fail_clean(outcomes: list[Outcome]) -> None:
    bad = {f"{o.name} × {o.failure}": o.problems() for o in outcomes if o.problems()}
    details = "\n".join(
        f"--- {key}: {', '.join(problems)}\n{_tail(o.output)}"
        for key, problems in bad.items()
        for o in outcomes
        if f"{o.name} × {o.failure}" == key
    )
    assert not bad, f"{len(bad)} of {len(outcomes)} runs did not fail clean:\n{details}"


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "processors.cli.main", *args]


# ---------------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    """Settings (as CHOREO_* environment) for one failure, and the secrets that must not leak."""

    failure: str
    env: dict[str, str]
    secrets: tuple[str, ...]
    user: str


def scenario(cluster: SecuredCluster, failure: str, user: str = APP_USER) -> Scenario:
    secrets: tuple[str, ...] = (cluster.password(user), cluster.password("admin"))
    if failure == "unreachable":
        env = cluster.env(user, bootstrap=f"127.0.0.1:{free_port()}")
        env["CHOREO_STARTUP_WAIT_S"] = "10"  # a worker waits this long for a cluster at start-up
    elif failure == "wrong_password":
        wrong = "wrong-" + uuid.uuid4().hex[:8]
        env, secrets = cluster.env(user, password=wrong), (*secrets, wrong)
    elif failure == "untrusted_ca":
        env = cluster.env(user, ca_location=cluster.other_ca_location)
    else:
        env = cluster.env(user)
    return Scenario(failure, env, secrets, user)


@dataclass
class ToolTopics:
    """Topics of the tooling commands, unique to one scenario, and a config file naming them."""

    config: Path
    order_topic: str
    replay_target: str
    tmp: Path

    @property
    def dlq(self) -> str:
        return self.order_topic + ".dlq"


def tool_topics(cluster: SecuredCluster, tmp: Path, failure: str) -> ToolTopics:
    """The topics the commands use (created by the admin) and the ACLs of the failure's user
    (:data:`TOOL_USERS`): everything each command needs, minus what the failure denies."""
    user = TOOL_USERS[failure]
    suffix = uuid.uuid4().hex[:8]
    isolated = isolate_contracts(tmp, suffix, cluster.bootstrap)
    topics = ToolTopics(isolated.config, isolated.topics["order.created"], f"replayed.{suffix}", tmp)
    cluster.create_topics([topics.order_topic, topics.dlq, topics.replay_target])
    read = failure != "topic_read_denied"
    write = failure != "write_denied"
    bindings = []
    for topic in (topics.order_topic, topics.dlq, topics.replay_target):
        bindings.append(acl(ResourceType.TOPIC, topic, AclOperation.DESCRIBE, user))
        if read:
            bindings.append(acl(ResourceType.TOPIC, topic, AclOperation.READ, user))
        if write or topic == topics.dlq:  # a user who may write somewhere gets a producer id (idempotence)
            bindings.append(acl(ResourceType.TOPIC, topic, AclOperation.WRITE, user))
    # roundtrip makes a topic (choreo.roundtrip.*) and a group (choreo-roundtrip-*) of its own
    for op in (
        (AclOperation.CREATE, AclOperation.DESCRIBE, AclOperation.DELETE)
        + ((AclOperation.READ,) if read else ())
        + ((AclOperation.WRITE,) if write else ())
    ):
        bindings.append(acl(ResourceType.TOPIC, "choreo.roundtrip.", op, user, prefixed=True))
    if failure != "group_denied":
        bindings.append(acl(ResourceType.GROUP, "choreo-", AclOperation.READ, user, prefixed=True))
        # and removes them afterwards
        bindings.append(acl(ResourceType.GROUP, "choreo-tools.roundtrip.", AclOperation.DELETE, user, prefixed=True))
    create_acls(cluster.admin(), bindings)
    (tmp / "order.json").write_text(json.dumps(order(1)))
    producer = Producer(cluster.client_config("admin"))  # something to replay and to redrive
    for topic in (topics.order_topic, topics.dlq):
        producer.produce(topic, b"not an event", b"o-1")
    assert producer.flush(30) == 0
    return topics


def tool_scenario(cluster: SecuredCluster, failure: str, tmp: Path, commands: Iterable[str]) -> list[Run]:
    """The runs of `commands` under `failure`, with topics, user and ACLs of their own."""
    sc = scenario(cluster, failure, TOOL_USERS[failure])
    return tool_runs(tool_topics(cluster, tmp, failure), sc, commands)


def tool_runs(topics: ToolTopics, sc: Scenario, commands: Iterable[str] | None = None) -> list[Run]:
    """Every command that talks to Kafka, each doing something the scenario's failure stops."""
    cfg = ("--config", str(topics.config))
    argv = {
        "publish": cli("publish", "order.created", "-f", str(topics.tmp / "order.json"), *cfg),
        "tail": cli("tail", topics.order_topic, "--from-beginning", *cfg),
        "replay": cli(
            "replay",
            "--from",
            topics.order_topic,
            "--to",
            topics.replay_target,
            "--checkpoint",
            str(topics.tmp / f"ckpt-{uuid.uuid4().hex[:6]}.json"),
            *cfg,
        ),  # fmt: skip
        "dlq show": cli("dlq", "show", topics.dlq, *cfg),
        "dlq redrive": cli("dlq", "redrive", topics.dlq, "--all", *cfg),
        "verify": cli("verify"),
        "roundtrip": cli("roundtrip", "--events", "20", "--partitions", "1"),
    }
    chosen = list(commands) if commands is not None else list(argv)
    return [Run(name, sc.failure, argv[name], sc.env, sc.secrets, cwd=topics.tmp) for name in chosen]


# ---------------------------------------------------------------------------------- the worker
@dataclass
class WorkerSetup:
    prefix: str
    contracts: Path
    schemas: Path
    state_dir: Path


def worker_setup(cluster: SecuredCluster, tmp: Path, failure: str, produce_input: bool = True) -> WorkerSetup:
    """The counter agent's topics (made by the admin), the ACLs ``app`` needs to run it minus what
    the failure denies, and one input event so the agent has something to write."""
    prefix = "sec" + uuid.uuid4().hex[:8]
    contracts, schemas = write_contracts(tmp / "contracts-data", prefix, partitions=1)
    app = build_app(prefix, contracts, schemas)
    admin = cluster.admin()
    ensure_topics(admin, plan_topics(app, [app.agents["counter"]], {}))
    bindings = [
        acl(ResourceType.TOPIC, prefix, op, prefixed=True)
        for op in (AclOperation.DESCRIBE, AclOperation.CREATE, AclOperation.READ, AclOperation.WRITE)
    ]
    if failure == "topic_read_denied":
        bindings.append(acl(ResourceType.TOPIC, f"{prefix}.counter.incremented", AclOperation.READ, deny=True))
    if failure == "write_denied":
        bindings.append(acl(ResourceType.TOPIC, f"{prefix}.counter.total", AclOperation.WRITE, deny=True))
    if failure != "group_denied":
        bindings.append(acl(ResourceType.GROUP, prefix, AclOperation.READ, prefixed=True))
    if failure != "transactional_id_denied":
        bindings.append(acl(ResourceType.TRANSACTIONAL_ID, prefix, AclOperation.WRITE, prefixed=True))
    create_acls(admin, bindings)
    if produce_input:
        producer = Producer(cluster.client_config("admin"))
        envelope = Envelope.new("counter.incremented", "/test/secured")
        producer.produce(
            f"{prefix}.counter.incremented",
            app.codec.encode("counter.incremented", {"name": "k1", "by": 1}),
            "k1",
            headers=produce_headers(envelope.to_headers()),
        )
        assert producer.flush(30) == 0
    return WorkerSetup(prefix, contracts, schemas, tmp / f"state-{prefix}")


def worker_run(setup: WorkerSetup, sc: Scenario, guarantee: str = "exactly_once") -> Run:
    env = {
        **sc.env,
        "ENGINE_APP_ID": setup.prefix,
        "ENGINE_CONTRACTS_DIR": str(setup.contracts),
        "ENGINE_SCHEMAS_DIR": str(setup.schemas),
    }
    argv = cli("worker", "--app", "tests.engine.app:app", "--agents", "counter", "--guarantee", guarantee,
               "--state-dir", str(setup.state_dir), "--worker-id", setup.prefix)  # fmt: skip
    return Run(f"worker ({guarantee})", sc.failure, argv, env, sc.secrets)
