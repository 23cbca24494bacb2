"""Replay checkpoints: where an interrupted replay stopped, and the checksums so far.

Written atomically (temp file, fsync, rename) after each delivered batch, so a crash at any moment
leaves either the previous or the next checkpoint, never half of one; `--resume` then continues
from the next source offset per partition and extends the same checksum chains.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.tooling.checksums import StreamDigest
from processors.tooling.kafka_io import ToolingError

FORMAT_VERSION = 1
DEFAULT_DIR = Path(".choreo/replay")


def default_checkpoint_path(source: str, destination: str, base: Path = DEFAULT_DIR) -> Path:
    """`.choreo/replay/<source>--<destination>.json`, with anything unsafe in a file name replaced."""
    name = f"{source}--{destination}"
    return base / (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") + ".json")


@dataclass
class Checkpoint:
    """The state of one replay. `source` identifies what is read (topic, partition, ranges, or
    file path and sha256) and must match on resume; `next` is the next source position per
    partition (-1 for a file: the number of records already handled)."""

    source: dict[str, Any]
    destination: str
    ranges: dict[int, tuple[int, int]]
    next: dict[int, int]
    read: StreamDigest = field(default_factory=StreamDigest)
    written: StreamDigest = field(default_factory=StreamDigest)
    completed: bool = False
    started_at: str = field(default_factory=lambda: _now())
    updated_at: str = field(default_factory=lambda: _now())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "source": self.source,
            "destination": self.destination,
            "ranges": {str(p): list(r) for p, r in sorted(self.ranges.items())},
            "next": {str(p): o for p, o in sorted(self.next.items())},
            "read": self.read.to_json(),
            "written": self.written.to_json(),
            "completed": self.completed,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Checkpoint:
        if data.get("format") != FORMAT_VERSION:
            raise ToolingError(f"{where}: unknown checkpoint format {data.get('format')!r} (expected {FORMAT_VERSION})")
        try:
            return cls(
                source=dict(data["source"]),
                destination=str(data["destination"]),
                ranges={int(p): (int(r[0]), int(r[1])) for p, r in data["ranges"].items()},
                next={int(p): int(o) for p, o in data["next"].items()},
                read=StreamDigest.from_json(data["read"]),
                written=StreamDigest.from_json(data["written"]),
                completed=bool(data["completed"]),
                started_at=str(data["started_at"]),
                updated_at=str(data["updated_at"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ToolingError(f"{where}: corrupt checkpoint ({exc.__class__.__name__}: {exc})") from exc

    def save(self, path: Path) -> None:
        self.updated_at = _now()
        write_atomically(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ToolingError(f"{path}: no checkpoint to resume from (run without --resume first)") from None
        except (OSError, ValueError) as exc:
            raise ToolingError(f"{path}: unreadable checkpoint: {exc}") from exc
        return cls.from_json(data, str(path))


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so readers and crashes see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
