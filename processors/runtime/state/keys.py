"""Key layout of a partition store. One keyspace per prefix; only *primary* records go to the
changelog (state, seen keys, timers), the *indexes* are derived locally when a record is applied, so
a restore rebuilds them for free.

=============  ========================================  =========================================
prefix         key                                       value
=============  ========================================  =========================================
``s\\0``        state key (the Kafka key bytes)           orjson of the key's state dict
``d\\0``        idempotency key (utf-8)                   expiry, ms since epoch, 8 bytes big-endian;
                                                         then, for a dead-lettered input, ``D`` and
                                                         the redrive count it had (4 bytes BE)
``T\\0``        state key ``\\0`` timer name               due ms (8 bytes BE) + orjson timer record
``e\\0`` (idx)  expiry (8 bytes BE) + idempotency key     empty
``t\\0`` (idx)  due (8 bytes BE) + state key ``\\0`` name   empty
``m\\0`` (meta) name                                      local bookkeeping, never changelogged
``c\\0batch``  (changelog only) batch commit marker       orjson {worker, ts}
=============  ========================================  =========================================

Every batch that changes a partition's store ends its changelog records with the commit marker.
A restore applies records only up to a marker: a trailing run of records with no marker after it
is what a worker killed in the middle of an at-least-once changelog flush left behind, and the
restoring worker rolls it back (it writes the previous values and a marker) before processing.
"""

from __future__ import annotations

import struct

STATE = b"s\x00"
SEEN = b"d\x00"
TIMER = b"T\x00"
SEEN_EXPIRY = b"e\x00"
TIMER_DUE = b"t\x00"
META = b"m\x00"
MARKER = b"c\x00batch"

PRIMARY = (STATE, SEEN, TIMER)

_U64 = struct.Struct(">Q")
pack_u64 = _U64.pack


def unpack_u64(data: bytes, offset: int = 0) -> int:
    return _U64.unpack_from(data, offset)[0]


def state_key(key: bytes) -> bytes:
    return STATE + key


def seen_key(idempotency_key: str) -> bytes:
    return SEEN + idempotency_key.encode("utf-8")


_DEAD_LETTERED = b"D"
_U32 = struct.Struct(">I")
MAX_REDRIVE_COUNT = 0xFFFFFFFF


def seen_value(expiry_ms: int) -> bytes:
    """The seen-key value of a handled input: it is a duplicate until ``expiry_ms``."""
    return _U64.pack(expiry_ms)


def dead_lettered_seen_value(expiry_ms: int, redrive_count: int) -> bytes:
    """The seen-key value of an input the agent dead-lettered after deciding on it (refused, or
    its handler failed): a replay or a plain re-send is a duplicate of that decision, and only a
    redrive with a higher count (``choreo dlq redrive``) is handled again."""
    return _U64.pack(expiry_ms) + _DEAD_LETTERED + _U32.pack(min(redrive_count, MAX_REDRIVE_COUNT))


def dead_lettered_redrive_count(seen: bytes) -> int | None:
    """The redrive count recorded with a dead-lettered input's seen key; None for a handled one."""
    if len(seen) == 13 and seen[8:9] == _DEAD_LETTERED:
        return int(_U32.unpack_from(seen, 9)[0])
    return None


def timer_suffix(key: bytes, name: str) -> bytes:
    return key + b"\x00" + name.encode("utf-8")


def timer_key(key: bytes, name: str) -> bytes:
    return TIMER + timer_suffix(key, name)


def split_timer_suffix(suffix: bytes) -> tuple[bytes, str]:
    key, _, name = suffix.rpartition(b"\x00")
    return key, name.decode("utf-8")


def meta_key(name: str) -> bytes:
    return META + name.encode("utf-8")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])
