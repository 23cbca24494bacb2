"""The Kafka client settings of one agent in one worker: its group consumer, its producer and its
restore consumer, and the consumer group protocol the agent's group rebalances with.

Owns the properties the engine's correctness depends on (manual offset commits, read_committed,
an assignor that keeps co-partitioning, idempotence, the transactional id) and the defaults a
user may override. Order matters: engine defaults first, then the user's Kafka properties
(passed through untouched, so SASL and TLS settings just work), then what must hold whatever the
user says.

Rebalancing (setting ``group_protocol``, see :func:`choose_protocol`):

* ``consumer`` (KIP-848, Kafka 4): the broker assigns, with its ``range`` assignor (partition N of
  every input topic of the agent to one member) and incremental changes: a member learns only the
  partitions it gains or loses, the others keep being processed through the rebalance. Session
  timeout and heartbeat interval are then the broker's (librdkafka refuses them client-side).
* ``classic``: the client-side protocol. An agent with one input topic uses ``cooperative-sticky``
  (incremental); an agent with several co-partitioned inputs stays on eager ``range``, because
  the sticky assignor balances each topic's partitions on its own and would split partition N
  of two inputs between workers (and with it the store both read).
* ``auto`` (default): ``consumer`` when the broker says it serves it (its
  ``group.coordinator.rebalance.protocols`` config), else ``classic``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from processors.runtime._watchdog import CallWatch
from processors.runtime.app import App
from processors.settings import Settings

log = logging.getLogger("choreo.worker")

ClientConfig = dict[str, Any]

# fetch.wait.max.ms: how long the broker may park a fetch that finds nothing new. It does not
# delay a record that arrives meanwhile: the broker answers a parked fetch as soon as data is
# appended (or, for this read_committed consumer, as soon as a transaction marker moves the last
# stable offset past it). Measured per hop (benchmarks/hop_probe.py, one event through one agent,
# exactly_once): the follow-up was readable 2-3 ms after its commit with 10, 100 or 500 ms alike.
# A shorter wait only makes an idle consumer ask more often (10 cost ~30% of the burst maximum
# in an earlier run, benchmarks/RESULTS.md): 100 stays.
_CONSUMER_DEFAULTS: ClientConfig = {
    "auto.offset.reset": "earliest",
    "max.poll.interval.ms": 300000,
    "fetch.wait.max.ms": 100,
}
# Classic protocol only: under KIP-848 these are the broker's (group.consumer.session.timeout.ms,
# group.consumer.heartbeat.interval.ms) and librdkafka refuses to create a consumer that sets them.
_CLASSIC_DEFAULTS: ClientConfig = {"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000}
_CLASSIC_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy", "group.protocol.type")
# linger.ms adds nothing to a hop: every commit flushes the producer first (exactly_once: outputs
# are readable at the commit; at_least_once: the offsets are committed after the flush), so what
# lingers is sent at the commit anyway, and between commits the 5 ms let a poll's outputs share
# requests. Measured per hop: linger 0 against 5 moved the hop's median by less than its noise.
_PRODUCER_DEFAULTS: ClientConfig = {"linger.ms": 5, "batch.num.messages": 10000}
# The restore consumer reads to the end of a changelog partition and needs to hear "end" soon: a
# fetch at the end waits fetch.wait.max.ms on the broker before it answers empty (librdkafka's
# default 500 ms made every open of an up-to-date exactly-once store, whose changelog ends with
# one transaction marker past the store's offset, cost over half a second).
_RESTORE_FETCH_WAIT_MS = 10

GROUP_PROTOCOLS = ("auto", "consumer", "classic")
_PROTOCOLS_KEY = "group.coordinator.rebalance.protocols"


@dataclass(frozen=True)
class GroupProtocol:
    """How an agent's consumer group rebalances, and why (the reason is logged at start)."""

    protocol: str  # "consumer" (KIP-848) or "classic"
    assignor: str  # consumer: group.remote.assignor; classic: partition.assignment.strategy
    incremental: bool  # rebalance callbacks carry only the partitions that change
    reason: str

    def defaults(self) -> ClientConfig:
        """Engine defaults of this protocol, which the user's Kafka properties may override."""
        return dict(_CLASSIC_DEFAULTS) if self.protocol == "classic" else {}

    def config(self) -> ClientConfig:
        """What must hold whatever the user says."""
        if self.protocol == "consumer":
            return {"group.protocol": "consumer", "group.remote.assignor": self.assignor}
        return {"group.protocol": "classic", "partition.assignment.strategy": self.assignor}


def choose_protocol(setting: str, broker_protocols: frozenset[str] | None, input_topics: int) -> GroupProtocol:
    """The protocol of an agent's group: ``setting`` (auto, consumer, classic), what the broker
    serves (None: could not be asked) and how many input topics the agent co-partitions."""
    if setting not in GROUP_PROTOCOLS:
        raise ValueError(f"group_protocol: expected one of {', '.join(GROUP_PROTOCOLS)}, got {setting!r}")
    if setting == "consumer":
        return GroupProtocol("consumer", "range", True, "group_protocol=consumer")
    if setting == "auto" and broker_protocols is not None and "consumer" in broker_protocols:
        return GroupProtocol("consumer", "range", True, "the broker serves the consumer group protocol (KIP-848)")
    if setting == "classic":
        why = "group_protocol=classic"
    elif broker_protocols is None:
        why = "the broker's group protocols could not be read"
    else:
        why = "the broker serves only the classic group protocol"
    if input_topics > 1:
        return GroupProtocol(
            "classic", "range", False, f"{why}; several co-partitioned inputs: eager range keeps partition N together"
        )
    return GroupProtocol("classic", "cooperative-sticky", True, f"{why}; one input topic: cooperative-sticky")


_BROKER_PROTOCOLS: dict[str, frozenset[str] | None] = {}
_BROKER_PROTOCOLS_LOCK = threading.Lock()


def broker_group_protocols(settings: Settings, timeout_s: float = 10.0) -> frozenset[str] | None:
    """The group protocols the cluster's brokers serve (Kafka 3.7+ name them in the broker config
    ``group.coordinator.rebalance.protocols``; an older broker has no such key: classic only).
    None when the cluster cannot be asked (DescribeConfigs denied, no answer). Asked once per
    process and cluster: every agent of a worker shares the answer."""
    key = settings.bootstrap_servers
    with _BROKER_PROTOCOLS_LOCK:
        if key in _BROKER_PROTOCOLS:
            return _BROKER_PROTOCOLS[key]
        found = _ask_broker(settings, timeout_s)
        if found is not None:  # a failure is asked again by the next session
            _BROKER_PROTOCOLS[key] = found
        return found


def group_protocol(
    settings: Settings, input_topics: int, watch: CallWatch | None = None, grace_s: float = 10.0
) -> GroupProtocol:
    """The protocol an agent with ``input_topics`` inputs uses under ``settings`` (asks the broker
    only for ``auto``; under the agent's watchdog when one is given)."""
    broker: frozenset[str] | None = None
    if settings.group_protocol == "auto":
        if watch is None:
            broker = broker_group_protocols(settings)
        else:
            with watch.watch("describe_configs", 10 + 10 + grace_s):
                broker = broker_group_protocols(settings)
    return choose_protocol(settings.group_protocol, broker, input_topics)


def _ask_broker(settings: Settings, timeout_s: float) -> frozenset[str] | None:
    try:
        admin = AdminClient(settings.kafka_config())
        brokers = admin.list_topics(timeout=timeout_s).brokers
        if not brokers:
            return None
        resource = ConfigResource(ResourceType.BROKER, str(min(brokers)))
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout_s)
    except (KafkaException, ValueError, RuntimeError) as exc:
        log.info("broker group protocols not readable", extra={"error": str(exc)[:200]})
        return None
    entry = entries.get(_PROTOCOLS_KEY)
    if entry is None or entry.value is None:
        return frozenset({"classic"})
    return frozenset(p.strip() for p in str(entry.value).split(",") if p.strip())


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

    def consumer(self, protocol: GroupProtocol | None = None) -> ClientConfig:
        """The group member that reads the agent's inputs; its offsets are committed by the
        commit protocol only, for completed batches. ``protocol`` None: classic eager range."""
        protocol = protocol or GroupProtocol("classic", "range", False, "default")
        user = self.settings.kafka_config()
        if protocol.protocol == "consumer":
            refused = sorted(k for k in _CLASSIC_ONLY if k in user)
            if refused:
                log.warning(
                    "Kafka properties of the classic group protocol ignored under the consumer protocol",
                    extra={"agent": self.agent, "properties": refused},
                )
            user = {k: v for k, v in user.items() if k not in _CLASSIC_ONLY}
        return {
            **_CONSUMER_DEFAULTS,
            **protocol.defaults(),
            **user,
            "group.id": self.app.group_id(self.agent),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            **protocol.config(),
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
            "fetch.wait.max.ms": _RESTORE_FETCH_WAIT_MS,
            "client.id": f"{self.client_id}.restore",
        }
