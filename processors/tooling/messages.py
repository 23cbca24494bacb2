"""Typed views of a confluent-kafka ``Message`` that the broker actually delivered.

confluent-kafka's stubs type every ``Message`` accessor as optional, and ``headers()`` as the union
``produce()`` accepts (a dict or a list), because the same class also carries error events. A record
a consumer returned without ``error()``, or one a delivery report acknowledged, always has a topic,
partition and offset, and its headers are a list of ``(name, bytes | None)`` pairs. Saying so once
here keeps the call sites typed without an ``assert`` or a ``cast`` at each of them.
"""

from __future__ import annotations

from typing import cast

from confluent_kafka import Message

from processors.tooling.kafka_io import Headers


def coordinates(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a delivered record."""
    return cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())


def headers(msg: Message) -> Headers:
    """A fresh list of the record's headers (empty when it has none)."""
    return list(cast("Headers | None", msg.headers()) or [])


__all__ = ["coordinates", "headers"]
