"""Before the agents start: may this worker's principal do what its agents will do?

Without this check a missing ACL shows up late and quietly: a consumer whose group READ is denied
rejoins forever, one whose input topic READ is denied sits at lag 0 with nothing to read, and a
denied output write aborts and replays the same batch several times a second. The broker can say
in advance what a principal may do (KIP-430, ``include_authorized_operations``), so the worker asks
once, with its own credentials, and refuses to start with one line naming the agent, the resource
and the missing operation. Transactional ids cannot be asked about this way; a denied one fails
``init_transactions`` at the agent's start anyway.

What it cannot judge it lets through (a topic or group the broker does not describe yet, a broker
that reports no operations): the loop's own error handling stays the last word.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient

from processors.kafka_errors import KafkaFailure, is_access_error, kafka_error_of
from processors.runtime.agent import AgentSpec
from processors.runtime.app import App
from processors.runtime.conventions import dlq_topic

TIMEOUT_S = 15.0
_IMPLIED = {  # Kafka's implication rules: READ and WRITE (and the rest) imply DESCRIBE; ALL is all
    AclOperation.DESCRIBE: {AclOperation.READ, AclOperation.WRITE, AclOperation.DELETE, AclOperation.ALTER},
}


def needed_operations(app: App, spec: AgentSpec) -> dict[str, set[AclOperation]]:
    """Topic -> the operations one agent performs on it."""
    needs: dict[str, set[AclOperation]] = {}
    for topic in app.input_topics(spec):
        needs.setdefault(topic, set()).add(AclOperation.READ)
        needs.setdefault(dlq_topic(topic), set()).add(AclOperation.WRITE)
    for event_type in spec.produces:
        needs.setdefault(app.registry.get(event_type).topic, set()).add(AclOperation.WRITE)
    needs.setdefault(app.changelog_topic(spec.name), set()).update({AclOperation.READ, AclOperation.WRITE})
    needs.setdefault(app.audit_topic, set()).add(AclOperation.WRITE)
    return needs


def check_worker_access(app: App, specs: Iterable[AgentSpec], admin: AdminClient) -> None:
    """Raise KafkaFailure for the first operation an agent needs and may not perform."""
    for spec in specs:
        _check_group(admin, app.group_id(spec.name), spec.name)
        needs = needed_operations(app, spec)
        described = _describe_topics(admin, sorted(needs), spec.name)
        for topic, operations in sorted(needs.items()):
            allowed = described.get(topic)
            for operation in sorted(operations, key=lambda op: op.name):
                if allowed is not None and not _permits(allowed, operation):
                    raise _denied(KafkaError.TOPIC_AUTHORIZATION_FAILED, spec.name, operation, "topic", topic)


def _check_group(admin: AdminClient, group: str, agent: str) -> None:
    future = admin.describe_consumer_groups([group], include_authorized_operations=True, request_timeout=TIMEOUT_S)
    try:
        description = future[group].result(timeout=TIMEOUT_S)
    except TimeoutError:
        return  # a slow broker is no verdict: the agent's own group join will tell
    except KafkaException as exc:
        err = kafka_error_of(exc)
        if err is not None and is_access_error(err):
            raise _denied(err.code(), agent, AclOperation.DESCRIBE, "group", group) from None
        return
    allowed = description.authorized_operations
    if allowed is not None and not _permits(allowed, AclOperation.READ):
        raise _denied(KafkaError.GROUP_AUTHORIZATION_FAILED, agent, AclOperation.READ, "group", group)


def _describe_topics(admin: AdminClient, topics: list[str], agent: str) -> dict[str, list[Any] | None]:
    """Topic -> authorized operations (None: not known); an access error on a topic is raised."""
    futures = admin.describe_topics(
        TopicCollection(topics), include_authorized_operations=True, request_timeout=TIMEOUT_S
    )
    out: dict[str, list[Any] | None] = {}
    for topic, future in futures.items():
        try:
            out[topic] = future.result(timeout=TIMEOUT_S).authorized_operations
        except TimeoutError:
            out[topic] = None
        except KafkaException as exc:
            err = kafka_error_of(exc)
            if err is not None and is_access_error(err):
                raise _denied(err.code(), agent, AclOperation.DESCRIBE, "topic", topic) from None
            out[topic] = None  # not there yet, or the broker does not say: let the agent find out
    return out


def _permits(allowed: list[Any], operation: AclOperation) -> bool:
    granted = set(allowed)
    if AclOperation.ALL in granted or operation in granted:
        return True
    return bool(_IMPLIED.get(operation, set()) & granted)


def _denied(code: int, agent: str, operation: AclOperation, kind: str, name: str) -> KafkaFailure:
    reason = f"this worker's principal may not {operation.name} {kind} {name}: grant it with an ACL"
    if kind == "topic":
        return KafkaFailure(KafkaError(code, reason), topic=name, action=f"agent {agent}")
    return KafkaFailure(KafkaError(code, reason), action=f"agent {agent}: {kind} {name}")


__all__ = ["check_worker_access", "needed_operations"]
