"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1, for machines without Docker.

The server jars come from Maven Central through `ops/kafka/pom.xml` into a cache outside the
repository; the broker runs as a background `java kafka.Kafka` process owned by a data dir.
"""

from processors.localbroker.broker import BrokerError, BrokerStatus, LocalBroker
from processors.localbroker.jars import KafkaJars, ToolchainError

__all__ = ["BrokerError", "BrokerStatus", "KafkaJars", "LocalBroker", "ToolchainError"]
