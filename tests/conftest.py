"""Shared fixtures. Tests that touch Kafka run against a real broker, chosen in this order:

1. `KAFKA_BOOTSTRAP_SERVERS` when set (an existing cluster);
2. a testcontainers Apache Kafka container when a Docker engine answers;
3. otherwise our local single-node KRaft broker (`processors.localbroker`), started once per
   session on a free port in a temporary data dir, stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from processors.localbroker import LocalBroker
from processors.localbroker.broker import free_port
from processors.runtime.topics import wait_for_topics
from tests.secured_cluster import USERS, SecuredCluster


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker inherits the controller's terminal size as COLUMNS and LINES. rich
    reads both when a console is made (the CLI makes its consoles at import) and, with both set,
    never measures again: every table would stay that wide, whatever COLUMNS a test's CliRunner
    sets, which no fresh `choreo` process does. Without them rich measures at each print."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.pop("COLUMNS", None)
        os.environ.pop("LINES", None)


def _docker_engine_answers() -> bool:
    try:
        import docker  # testcontainers depends on the docker SDK

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - no socket, no daemon, no permission: all mean "no Docker"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for this test session."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_engine_answers():
        from testcontainers.community.kafka import KafkaContainer

        # testcontainers' KafkaContainer drives Confluent's image layout; 7.9 is Apache Kafka 3.9
        # with KRaft, which has every API the tests use (transactions, KIP-447 groups).
        with KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalBroker(data_dir=tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    """A second local broker for the session, secured as production clusters are: SASL_SSL with
    SCRAM-SHA-512 users (``admin`` is a super user, ``app`` has no rights until a test grants
    some), a CA made on the fly, the StandardAuthorizer and ``allow.everyone.if.no.acl.found=false``.
    Always our own broker (a cluster named by KAFKA_BOOTSTRAP_SERVERS has its own security)."""
    broker = LocalBroker(
        data_dir=tmp_path_factory.mktemp("kafka-secured"), port=free_port(), secured=True, users=USERS, heap="512m"
    )
    broker.start()
    try:
        yield SecuredCluster(broker)
    finally:
        broker.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names (topics, groups, transactional ids) unique to this test, readable in broker logs."""
    test = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40]
    run = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}.{test}.{run}"

    return make


@pytest.fixture
def create_topics(kafka_bootstrap: str) -> Callable[..., None]:
    """Create topics and wait until they exist: `create_topics(["a", "b"], partitions=3)`."""

    def create(names: list[str], partitions: int = 1, config: dict[str, str] | None = None) -> None:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {}) for name in names],
            operation_timeout=30,
        )
        for future in futures.values():
            future.result(timeout=60)
        assert wait_for_topics(admin, names, timeout=60), f"topics {names} not visible with leaders after 60 s"

    return create


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
