"""Name the real cause of a Kafka request that only says it timed out.

A metadata request (``list_topics``) with wrong credentials, an untrusted certificate or no broker
at all ends with "Failed to get metadata: Local: Broker transport failure" or "Timed out": the
client knew better (it reported the SASL or TLS error to its error callback) but the callback runs
only when the client is polled, and the command's client may already be closed. So when a command
fails that way, :func:`failure_of` first looks at the last access error any client of this process
reported (:mod:`processors.client_logging`), and otherwise connects once more with the settings the
process used last, for a few seconds, listening to the error callback: the first SASL, TLS or
authorization error wins; connection refusals mean the broker is unreachable.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from processors.client_logging import last_client_config, last_fatal_error
from processors.kafka_errors import (
    UNREACHABLE_CODES,
    ErrorKind,
    KafkaFailure,
    classify,
    is_access_error,
    kafka_error_of,
)

PROBE_TIMEOUT_S = 6.0
_UNREACHABLE_SETTLE_S = 1.5  # a refused connection is final once no TLS/SASL error followed it


def failure_of(exc: BaseException, action: str | None = None) -> KafkaFailure | None:
    """The failure to report for `exc` (None when it is no Kafka client error)."""
    if isinstance(exc, KafkaFailure):
        return exc
    err = kafka_error_of(exc)
    if err is None and isinstance(exc, TimeoutError) and last_client_config() is not None:
        err = KafkaError(KafkaError._TIMED_OUT, "a Kafka request timed out")  # an admin future's result()
    if err is None:
        return None
    if classify(err) is not ErrorKind.TRANSIENT:
        return KafkaFailure(err, action=action)
    recent = last_fatal_error()
    if recent is not None:
        return KafkaFailure(recent, action="connect")
    config = last_client_config()
    probed = probe(config) if config is not None else None
    return probed or KafkaFailure(err, action=action)


def probe(config: dict[str, Any], timeout: float = PROBE_TIMEOUT_S) -> KafkaFailure | None:
    """Connect with `config` and return what stops it (None when the cluster answers)."""
    seen: list[KafkaError] = []
    probe_config: dict[str, Any] = {
        **config,
        "error_cb": seen.append,
        "logger": _Quiet(),
        "socket.connection.setup.timeout.ms": max(1000, int(timeout * 500)),
    }
    admin = AdminClient(probe_config)
    deadline = time.monotonic() + timeout
    first_refusal: float | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
            return None
        except KafkaException:
            pass
        admin.poll(0.1)
        for err in seen:
            if is_access_error(err):
                return KafkaFailure(err, action="connect")
        refused = [err for err in seen if err.code() in UNREACHABLE_CODES]
        if refused:
            first_refusal = first_refusal or time.monotonic()
            if time.monotonic() - first_refusal >= _UNREACHABLE_SETTLE_S:
                transport = [err for err in refused if err.code() == KafkaError._TRANSPORT]
                return KafkaFailure((transport or refused)[0], action=f"connect to {config.get('bootstrap.servers')}")
    return None


class _Quiet:
    def log(self, *args: object, **kwargs: object) -> None:
        return None


__all__ = ["PROBE_TIMEOUT_S", "failure_of", "probe"]
