"""The Kafka client settings of one agent in one worker: its group consumer, its producer and its
restore consumer.

Owns the properties the engine's correctness depends on (manual offset commits, read_committed,
the co-partitioning ``range`` assignor, idempotence, the transactional id) and the defaults a
user may override. Order matters: engine defaults first, then the user's Kafka properties
(passed through untouched, so SASL and TLS settings just work), then what must hold whatever the
user says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processors.runtime.app import App
from processors.settings import Settings

ClientConfig = dict[str, Any]

_CONSUMER_DEFAULTS: ClientConfig = {
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
    "fetch.wait.max.ms": 100,
}
_PRODUCER_DEFAULTS: ClientConfig = {"linger.ms": 5, "batch.num.messages": 10000}


@dataclass(frozen=True)
class AgentClients:
    """Where the clients of one agent in one worker get their identity from."""

    app: App
    agent: str
    worker_id: str
    settings: Settings

    @property
    def client_id(self) -> str:
        return f"{self.worker_id}.{self.agent}"

    def consumer(self) -> ClientConfig:
        """The group member that reads the agent's inputs; its offsets are committed by the
        commit protocol only, for completed batches."""
        return {
            **_CONSUMER_DEFAULTS,
            **self.settings.kafka_config(),
            "group.id": self.app.group_id(self.agent),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "client.id": self.client_id,
        }

    def producer(
        self,
        transactional: bool,
        transaction_timeout_ms: int,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> ClientConfig:
        """The producer of everything the agent writes. User Kafka properties win over the
        engine's producer defaults but not over idempotence and the transactional id."""
        config: ClientConfig = {
            **self.settings.producer_config(),
            **_PRODUCER_DEFAULTS,
            **self.settings.kafka,
            "enable.idempotence": True,
            "client.id": self.client_id,
        }
        if on_delivery is not None:
            config["on_delivery"] = on_delivery
        if transactional:
            config["transactional.id"] = self.app.transactional_id(self.agent, self.worker_id)
            config.setdefault("transaction.timeout.ms", transaction_timeout_ms)
        return config

    def restorer(self) -> ClientConfig:
        """A consumer that is assigned changelog partitions directly and never commits: it reads
        committed changelog records up to the end of each partition."""
        return {
            **self.settings.kafka_config(),
            "group.id": f"{self.app.group_id(self.agent)}.restore",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "client.id": f"{self.client_id}.restore",
        }
