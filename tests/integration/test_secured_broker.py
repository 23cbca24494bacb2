"""The secured local broker: SCRAM users, its own CA, ACLs enforced and nothing allowed without one."""

from __future__ import annotations

import stat
import time
import uuid

import pytest
from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient, ResourceType

from processors.kafka_errors import kafka_error_of
from processors.localbroker import BrokerStatus, LocalBroker
from tests.secured_cluster import SecuredCluster, acl, create_acls, delete_acls

pytestmark = pytest.mark.kafka


def _describe_error(admin: AdminClient, topic: str) -> str | None:
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=15)[topic]
    try:
        future.result(timeout=30)
    except KafkaException as exc:
        err = kafka_error_of(exc)
        return err.name() if err is not None else str(exc)
    return None


def _eventually(check, expected, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_a_user_may_do_only_what_an_acl_grants(secured_cluster: SecuredCluster) -> None:
    topic = f"secured-basics.{uuid.uuid4().hex[:8]}"
    secured_cluster.create_topics([topic])  # the admin is a super user
    app = AdminClient(secured_cluster.client_config("app"))
    assert _describe_error(app, topic) == "TOPIC_AUTHORIZATION_FAILED"
    grant = [acl(ResourceType.TOPIC, topic, AclOperation.DESCRIBE)]
    create_acls(secured_cluster.admin(), grant)
    assert _eventually(lambda: _describe_error(app, topic), None) is None
    delete_acls(secured_cluster.admin(), grant)
    assert _eventually(lambda: _describe_error(app, topic), "TOPIC_AUTHORIZATION_FAILED") == (
        "TOPIC_AUTHORIZATION_FAILED"
    )


def test_status_knows_a_secured_data_dir_and_no_secret_is_on_disk_in_the_clear(
    secured_cluster: SecuredCluster,
) -> None:
    broker = secured_cluster.broker
    assert LocalBroker(data_dir=broker.data_dir, port=broker.port).status() is BrokerStatus.RUNNING
    for private in (broker.users_file, broker.properties_file, broker.tls.keystore, broker.tls.password_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    log = broker.log_file.read_text(errors="replace")
    for password in broker.passwords().values():
        assert password not in log
    assert secured_cluster.ca_location.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert secured_cluster.other_ca_location.read_text() != secured_cluster.ca_location.read_text()
