"""Typed views of confluent-kafka objects, where its type stubs are looser than what we use.

confluent-kafka types ``Message.topic()``, ``partition()`` and ``offset()`` as optional because an
error event (end of partition, a broker error) carries no coordinates. Code that reads records
checks ``error()`` first and from then on deals with a record that has them; :func:`records`
says so once per batch, instead of a check per field per record on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

from confluent_kafka import KafkaError, Message

Headers = list[tuple[str, bytes | None]]


class ConsumedRecord(Protocol):
    """A consumed message as read after its ``error()`` was found to be None."""

    def error(self) -> KafkaError | None: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]: ...


def records(messages: Sequence[Message]) -> list[ConsumedRecord]:
    """The consumed messages of a batch, typed for reading once their error was checked."""
    return cast(list[ConsumedRecord], messages)


def record(message: Message) -> ConsumedRecord:
    """One consumed message, typed for reading once its error was checked."""
    return cast(ConsumedRecord, message)
