"""The secured broker of the test session: bootstrap, CA, per-user client settings and ACLs.

One broker for the session (``LocalBroker(secured=True)``: SASL_SSL, SCRAM-SHA-512, a CA made for
it, StandardAuthorizer, nothing allowed without an ACL). Tests keep out of each other's way by
naming their topics, groups and transactional ids uniquely and granting ``app`` rights on exactly
those names; what a test does not grant is denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from processors.localbroker import LocalBroker
from processors.runtime.topics import wait_for_topics

APP_USER = "app"
FAILURES = (
    "unreachable",
    "wrong_password",
    "untrusted_ca",
    "group_denied",
    "topic_read_denied",
    "write_denied",
    "transactional_id_denied",
)
TOOL_USERS = {failure: f"tool-{failure}" for failure in (*FAILURES, "none")}
"""One user per failure for the commands: the names they make up (``choreo-roundtrip-*``) share
prefixes, and an ACL granted for one scenario must not lift another scenario's denial."""
USERS = (APP_USER, *TOOL_USERS.values())


@dataclass
class SecuredCluster:
    broker: LocalBroker

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def ca_location(self) -> Path:
        return self.broker.ca_location

    @property
    def other_ca_location(self) -> Path:
        """A CA that did not sign the broker's certificate: trusting only it is 'untrusted CA'."""
        return self.broker.tls.other_ca_pem

    def password(self, user: str = APP_USER) -> str:
        return self.broker.passwords()[user]

    def client_config(self, user: str = APP_USER, **overrides: Any) -> dict[str, Any]:
        """confluent-kafka settings of `user` (SASL_SSL, SCRAM, the CA), overrides last."""
        return {**self.broker.client_config(user), **overrides}

    def admin(self) -> AdminClient:
        return AdminClient(self.client_config("admin"))

    def env(
        self,
        user: str = APP_USER,
        password: str | None = None,
        ca_location: Path | None = None,
        bootstrap: str | None = None,
    ) -> dict[str, str]:
        """The same settings as a command gets them: ``KAFKA_BOOTSTRAP_SERVERS`` and ``CHOREO_KAFKA_*``."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap or self.bootstrap,
            "CHOREO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CHOREO_KAFKA_SSL_CA_LOCATION": str(ca_location or self.ca_location),
            "CHOREO_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "CHOREO_KAFKA_SASL_USERNAME": user,
            "CHOREO_KAFKA_SASL_PASSWORD": password if password is not None else self.password(user),
        }

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        names = list(names)
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names], operation_timeout=30
        )
        for future in futures.values():
            future.result(timeout=60)
        assert wait_for_topics(admin, names, timeout=60), f"topics {names} not visible with leaders after 60 s"


def acl(
    resource: ResourceType,
    name: str,
    operation: AclOperation,
    user: str = APP_USER,
    *,
    prefixed: bool = False,
    deny: bool = False,
) -> AclBinding:
    """One ACL binding for `user` from any host, literal or prefixed, allow or deny."""
    return AclBinding(
        resource,
        name,
        ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL,
        f"User:{user}",
        "*",
        operation,
        AclPermissionType.DENY if deny else AclPermissionType.ALLOW,
    )


def create_acls(admin: AdminClient, bindings: list[AclBinding]) -> None:
    """Create the bindings and wait until the broker confirms each."""
    for binding, future in admin.create_acls(bindings, request_timeout=30).items():
        result = future.result(timeout=60)
        assert result is None, f"{binding}: {result}"


def delete_acls(admin: AdminClient, bindings: list[AclBinding]) -> None:
    """Delete exactly these bindings (each used as its own filter)."""
    filters = [
        AclBindingFilter(
            b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
        )
        for b in bindings
    ]
    for future in admin.delete_acls(filters, request_timeout=30).values():
        future.result(timeout=60)


__all__ = ["APP_USER", "FAILURES", "TOOL_USERS", "USERS", "SecuredCluster", "acl", "create_acls", "delete_acls"]
