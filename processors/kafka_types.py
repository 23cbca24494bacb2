"""Typed views of confluent-kafka objects, where its type stubs are looser than what we use.

confluent-kafka types every ``Message`` accessor as optional, and ``headers()`` as the union
``produce()`` accepts (a dict or a list), because the same class also carries error events (end
of partition, a broker error) that have no coordinates. A record a consumer returned without
``error()``, or one a delivery report acknowledged, always has a topic, partition and offset, and
its headers are a list of ``(name, bytes | None)`` pairs. Code that reads records checks
``error()`` first and from then on says so here, once (:func:`records` once per batch on the hot
path), instead of an ``assert`` or a ``cast`` at each call site.
"""

from __future__ import annotations

import ctypes
import gc
import operator
import sys
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


def coordinates(message: Message | ConsumedRecord) -> tuple[str, int, int]:
    """Topic, partition and offset of a delivered record."""
    return cast(str, message.topic()), cast(int, message.partition()), cast(int, message.offset())


# The one header of the list :func:`headers` returns for a record whose headers the client cannot
# read; its value says why. A consumer of ours sees no CloudEvents header then, and the record is
# dead-lettered with this header on its copy instead of the headers the client could not give.
UNREADABLE_HEADERS = "choreo_unreadable_headers"
UNREADABLE_NOTE = b"the Kafka client could not read this record's headers (a header name that is not UTF-8 text)"


# A header name that is not UTF-8 makes confluent-kafka's ``Message.headers()`` build a tuple whose
# name slot is NULL (not None) and return it with the UnicodeDecodeError still set. A plain
# ``message.headers()`` call site, once CPython has specialised it, does not check for that: the
# pending error surfaces as a SystemError from whatever C function runs next (``time.time()`` in
# the worker loop), away from any guard. And the Message caches the list, so the next read returns
# it with no error at all, and touching the name crashes the interpreter. So headers are read
# through a generic call (``methodcaller``: the result is always checked) and the name slots are
# checked through the tuple's declared layout, without touching the object.
_read_headers = operator.methodcaller("headers")
_TUPLE_ITEMS = tuple.__basicsize__
_CHECK_SLOTS = sys.implementation.name == "cpython"


def _name_missing(pair: object) -> bool:
    """The reference check of one header: a 2-tuple whose name slot is NULL."""
    if not _CHECK_SLOTS or type(pair) is not tuple or len(pair) != 2:
        return False
    return ctypes.c_void_p.from_address(id(pair) + _TUPLE_ITEMS).value is None


_referents = gc.get_referents
_PAIR = {2}
_TUPLE = {tuple}


def _names_missing(found: Sequence[object]) -> bool:
    """``any(_name_missing(pair) for pair in found)``, ~10x cheaper in the usual case (this runs
    once per consumed record: ~9 µs a record of 10 headers the reference way). A tuple's traversal
    skips a NULL slot, so when every header is a 2-tuple and the pairs hold 2 referents each, no
    name slot is NULL; on anything else (a NULL slot, or a shape the client never gives) the
    reference check alone decides."""
    if (
        _CHECK_SLOTS
        and set(map(type, found)) == _TUPLE
        and set(map(len, found)) == _PAIR  # type: ignore[arg-type] # all tuples, checked just above
        and len(_referents(*found)) == 2 * len(found)
    ):
        return False
    return any(_name_missing(pair) for pair in found)


def headers(message: Message | ConsumedRecord) -> Headers:
    """A fresh list of the record's headers (empty when it has none). Never raises and never hands
    out a header whose name the client could not decode: this is the one place records' headers are
    read, by the engine and the tools alike. Such a record gets the single header
    :data:`UNREADABLE_HEADERS`."""
    try:
        found = cast("Headers | None", _read_headers(message))
    except Exception:  # noqa: BLE001 - whatever the client raises for what a producer wrote
        return [(UNREADABLE_HEADERS, UNREADABLE_NOTE)]
    if not found:
        return []
    if _names_missing(found):
        return [(UNREADABLE_HEADERS, UNREADABLE_NOTE)]
    return list(found)


def unreadable(headers: Sequence[tuple[str, bytes | None]] | None) -> bool:
    """Whether ``headers`` is what :func:`headers` returns for a record whose headers were unreadable."""
    return headers is not None and len(headers) == 1 and headers[0][0] == UNREADABLE_HEADERS


ProduceHeaders = list[tuple[str, str | bytes | None]]


def produce_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> ProduceHeaders | None:
    """Our header lists as ``Producer.produce`` is typed to take them. Its stub types ``headers``
    as an invariant list of ``(str, str | bytes | None)`` pairs, which refuses a list of
    ``(str, bytes)`` pairs although the client takes it as it is: nothing is converted here."""
    return cast("ProduceHeaders | None", headers)
