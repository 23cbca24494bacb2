"""Pick the broker a command talks to: the one the user named, or the embedded local broker."""

from __future__ import annotations

import os

from processors.localbroker.broker import DEFAULT_PORT, LocalBroker, default_data_dir


def ensure_broker(bootstrap: str | None = None, port: int = DEFAULT_PORT) -> str:
    """`bootstrap` when given, else `KAFKA_BOOTSTRAP_SERVERS`, else the local broker on
    `.choreo/broker` (started when it is not running; reused when it is)."""
    if bootstrap:
        return bootstrap
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    broker = LocalBroker(data_dir=default_data_dir(), port=port)
    broker.start()
    return broker.bootstrap
