"""Checksums that prove a replay or backfill wrote exactly what it read.

The digest of a stream of records is computed per source partition as a hash chain in source
order::

    d0 = 32 zero bytes
    dN = sha256(dN-1 || len(key) || key || len(value) || value)

with lengths as 4-byte big-endian unsigned integers and ``0xFFFFFFFF`` for a null key or value,
so ``(b"ab", b"c")`` and ``(b"a", b"bc")`` differ and a tombstone differs from an empty value.
A chain (rather than hashlib's streaming state) is used because its state is the 32-byte digest
itself, which the replay checkpoint stores so that a resumed run continues the same chain.

Partitions are combined order-independently: sha256 over the partition digests sorted bytewise.
Within a partition the order matters (Kafka guarantees it there); across partitions it does not.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

ALGORITHM = "sha256-chain(len-prefixed key,value) per source partition, combined as sha256(sorted partition digests)"
_NULL_LEN = 0xFFFFFFFF
_ZERO = bytes(32)


def _framed(data: bytes | None) -> bytes:
    if data is None:
        return struct.pack(">I", _NULL_LEN)
    return struct.pack(">I", len(data)) + data


def chain(previous: bytes, key: bytes | None, value: bytes | None) -> bytes:
    """One step of a partition's chain."""
    return hashlib.sha256(previous + _framed(key) + _framed(value)).digest()


@dataclass
class StreamDigest:
    """Running count and digest of records, per source partition (an int, or -1 for a file)."""

    chains: dict[int, bytes] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        self.chains[partition] = chain(self.chains.get(partition, _ZERO), key, value)
        self.counts[partition] = self.counts.get(partition, 0) + 1

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def digest(self) -> str:
        """The combined hex digest; the same for the same records whatever the partition order."""
        joined = b"".join(sorted(self.chains.values()))
        return hashlib.sha256(joined).hexdigest()

    def copy(self) -> StreamDigest:
        return StreamDigest(dict(self.chains), dict(self.counts))

    # The checkpoint format: plain JSON, partition numbers as string keys.
    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "digest": self.digest,
            "partitions": {
                str(p): {"count": self.counts[p], "chain": self.chains[p].hex()} for p in sorted(self.chains)
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamDigest:
        out = cls()
        for part, entry in data.get("partitions", {}).items():
            out.chains[int(part)] = bytes.fromhex(entry["chain"])
            out.counts[int(part)] = int(entry["count"])
        if data.get("digest") not in (None, out.digest):
            raise ValueError("checkpoint digest does not match its partition chains (file edited or corrupt)")
        return out
