"""Time arguments of the operator commands (`--since`, `--until`).

Operators think in "the last two hours" as often as in timestamps, so both forms are accepted:
ISO-8601 (`2024-05-01T12:00:00Z`, a date alone means its midnight UTC, no zone means UTC) and a
relative duration back from now (`90s`, `10m`, `2h`, `1d`, `1w`, or combined: `1h30m`). Kafka
looks records up by epoch milliseconds (`offsets_for_times`), so everything resolves to that.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from processors.errors import ChoreoError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^(?:(\d+)(ms|s|m|h|d|w))+$")
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")


class TimeArgError(ChoreoError, ValueError):
    """A time argument is neither ISO-8601 nor a relative duration; the message shows both forms."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """Resolve a time argument to an aware UTC datetime."""
    text = text.strip()
    now = now or datetime.now(UTC)
    if not text:
        raise TimeArgError("empty time: give ISO-8601 (2024-05-01T12:00:00Z) or a duration ago (10m, 2h, 1d)")
    compact = text.replace(" ", "").lower()
    if _RELATIVE.match(compact):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
        return now - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
        except ValueError:
            raise TimeArgError(
                f"cannot read time {text!r}: give ISO-8601 (2024-05-01T12:00:00Z) or a duration ago (10m, 2h, 1d)"
            ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds, the unit of Kafka record timestamps."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(round(moment.timestamp() * 1000))


def parse_time_ms(text: str, now: datetime | None = None) -> int:
    """`parse_time` straight to epoch milliseconds."""
    return to_epoch_ms(parse_time(text, now))


def format_ms(epoch_ms: int | None) -> str:
    """RFC 3339 UTC with milliseconds, the form the DLQ headers use, for printing record times."""
    if epoch_ms is None or epoch_ms < 0:
        return "-"
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
