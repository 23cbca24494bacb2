"""The topics an agent set needs, and reading their metadata on a cluster that is still settling.

Owns: planning the topics of a set of agents (inputs, outputs, DLQs, changelogs, audit) from the
contracts, creating the missing ones, checking the co-partitioning the stores rely on, and the
metadata reads everyone uses (topic listing, watermarks). The engine, the tooling commands and
the benchmarks all read watermarks through :func:`watermarks`, because right after a topic is
created a broker may answer NOT_LEADER_FOR_PARTITION or LEADER_NOT_AVAILABLE until leadership
has propagated, and a reader of a fresh topic (a new changelog, a replay target) must wait that
out rather than fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.runtime.agent import AgentSpec
from processors.runtime.app import App
from processors.runtime.conventions import dlq_topic
from processors.runtime.errors import TopicError
from processors.runtime.topology import TopologyError, check_copartitioned

CHANGELOG_DELETE_RETENTION_MS = 24 * 3600 * 1000
DEFAULT_AUDIT_PARTITIONS = 3
METADATA_TIMEOUT_S = 15.0

_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
    }
)


class TopicSpec(NamedTuple):
    """How a planned topic is created: its partition count and topic configs."""

    partitions: int
    config: dict[str, str]


TopicPlan = dict[str, TopicSpec]


class MetadataClient(Protocol):
    """What the metadata reads need: a Consumer or an AdminClient (``list_topics``), and for
    watermarks a Consumer (``get_watermark_offsets``)."""

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...


# ---------------------------------------------------------------------------------- metadata
def existing_topics(client: MetadataClient, timeout: float = METADATA_TIMEOUT_S) -> dict[str, int]:
    """Every topic of the cluster that answers without an error, with its partition count."""
    metadata = client.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def watermarks(client: Any, topic: str, partition: int, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) watermark offsets of one partition from the broker, retrying for up to
    ``timeout`` seconds while leadership settles; other errors are raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = client.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.code() in _SETTLING or error.retriable()) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


# ---------------------------------------------------------------------------------- planning
def plan_topics(app: App, specs: Iterable[AgentSpec], input_partitions: dict[str, int]) -> TopicPlan:
    """Topics an agent set needs: name → how to create it. Partition counts come from the cluster
    when the topic exists (``input_partitions``), else from the contract; a changelog gets the
    partition count of the agent's inputs, since its partition N backs the store of partition N."""
    plan: TopicPlan = {}
    for spec in specs:
        counts = [_plan_input(app, topic, input_partitions, plan) for topic in app.input_topics(spec)]
        for event_type in spec.produces:
            contract = app.registry.get(event_type)
            count = input_partitions.get(contract.topic, contract.partitions)
            plan.setdefault(contract.topic, TopicSpec(count, {"retention.ms": str(contract.retention_ms)}))
        changelog_config = {"cleanup.policy": "compact", "delete.retention.ms": str(CHANGELOG_DELETE_RETENTION_MS)}
        plan.setdefault(app.changelog_topic(spec.name), TopicSpec(max(counts), changelog_config))
        if spec.on_timer is not None:
            plan.setdefault(dlq_topic(app.timers_topic_name(spec.name)), TopicSpec(1, {}))
    plan.setdefault(app.audit_topic, _audit_topic_spec(app))
    return plan


def _plan_input(app: App, topic: str, input_partitions: dict[str, int], plan: TopicPlan) -> int:
    contract = next(iter(app.registry.for_topic(topic)))
    count = input_partitions.get(topic, contract.partitions)
    plan.setdefault(topic, TopicSpec(count, {"retention.ms": str(contract.retention_ms)}))
    plan.setdefault(dlq_topic(topic), TopicSpec(count, {}))
    return count


def _audit_topic_spec(app: App) -> TopicSpec:
    if app.audit_event_type in set(app.registry.event_types()):
        contract = app.registry.get(app.audit_event_type)
        return TopicSpec(contract.partitions, {"retention.ms": str(contract.retention_ms)})
    return TopicSpec(DEFAULT_AUDIT_PARTITIONS, {})


# ---------------------------------------------------------------------------------- creating
def ensure_topics(admin: AdminClient, plan: TopicPlan, timeout: float = 30.0) -> list[str]:
    """Create the planned topics that do not exist (never alters existing ones) and wait until
    their metadata is visible, so a check right after does not see them missing; returns the
    names created."""
    existing = existing_topics(admin)
    missing = [
        NewTopic(name, spec.partitions, replication_factor=-1, config=spec.config)
        for name, spec in sorted(plan.items())
        if name not in existing
    ]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicError(f"cannot create topic {name}: {exc}") from exc
    wait_for_topics(admin, plan, timeout)
    return created


def wait_for_topics(client: MetadataClient, topics: Iterable[str], timeout: float = 30.0) -> bool:
    """Wait until every one of ``topics`` is listed with a leader for each partition: a topic just
    created may be missing from a broker's metadata, or leaderless, for a moment. False when the
    wait ran out."""
    deadline = time.monotonic() + timeout
    wanted = set(topics)
    while True:
        metadata = client.list_topics(timeout=METADATA_TIMEOUT_S)
        if all(_has_leaders(metadata.topics.get(name)) for name in wanted):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _has_leaders(topic: Any) -> bool:
    if topic is None or topic.error is not None or not topic.partitions:
        return False
    return all(p.leader >= 0 for p in topic.partitions.values())


# ---------------------------------------------------------------------------------- checking
def check_agent_topics(app: App, spec: AgentSpec, partitions: dict[str, int]) -> int:
    """Co-partitioning of the agent's inputs and of its changelog; returns the partition count."""
    missing = [t for t in app.input_topics(spec) if t not in partitions]
    if missing:
        raise TopologyError(f"agent {spec.name!r}: input topic(s) {', '.join(missing)} do not exist")
    count = check_copartitioned(spec.name, {t: partitions[t] for t in app.input_topics(spec)})
    changelog = app.changelog_topic(spec.name)
    if changelog not in partitions:
        raise TopologyError(
            f"agent {spec.name!r}: changelog topic {changelog} does not exist; create it compacted with {count} "
            "partitions, or let the worker create it (App(create_topics=True), the default)"
        )
    if partitions[changelog] != count:
        raise TopologyError(
            f"agent {spec.name!r}: changelog {changelog} has {partitions[changelog]} partitions but the inputs have "
            f"{count}; the store of partition N must be backed by changelog partition N"
        )
    return count


def prepare_topics(app: App, specs: list[AgentSpec], admin: AdminClient) -> None:
    """What a worker does before it starts: create what is missing (when the app lets it), then
    refuse to start on inputs that are missing or not co-partitioned with their changelog."""
    existing = existing_topics(admin)
    if app.create_topics:
        ensure_topics(admin, plan_topics(app, specs, existing))
        existing = existing_topics(admin)
    for spec in specs:
        check_agent_topics(app, spec, existing)
