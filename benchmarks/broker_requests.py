"""How many requests of each type the broker served during a benchmark window, per order.

Under paced exactly_once load the broker uses as much CPU as the worker (``cpu_share``), and what
it spends it on is requests: librdkafka sends one ProduceRequest per partition (librdkafka issue
#1700), so every partition a transaction touches costs a ProduceRequest, a verification of the
partition against the transaction (KIP-890, ``AddPartitionsToTxnVerification``), a marker at the
commit; and every read_committed consumer fetches as soon as a record lands. Counting the
requests per order says which of these a setting moves.

The counts come from the broker's JMX ``RequestMetrics`` (cumulative since it started), read by
``BrokerRequests.java`` beside this file. The broker must be a local JVM this user may attach to
(``choreo broker start`` makes one) and the JDK's ``jcmd`` and ``java`` must be on the PATH:
:meth:`BrokerRequests.attach` starts the broker's JMX agent on a loopback port, without
authentication (a local benchmark broker only), or reuses the one started before. Elsewhere it
answers None and the benchmark goes on without the counts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from processors.localbroker.broker import free_port

READER = Path(__file__).with_name("BrokerRequests.java")
_PORT = re.compile(r"jmxremote\.(?:rmi\.)?port\s*=\s*(\d+)")


class BrokerRequests:
    """The request counts of one broker JVM, read over its JMX agent on ``port``."""

    def __init__(self, port: int, timeout_s: float = 60.0) -> None:
        self.port = port
        self.timeout_s = timeout_s

    @classmethod
    def attach(cls, pid: int | None) -> BrokerRequests | None:
        """Start (or find) the JMX agent of the broker ``pid``; None when it cannot be reached."""
        if pid is None or not (shutil.which("jcmd") and shutil.which("java")):
            return None
        port = _agent_port(pid)
        if port is None:
            port = free_port()
            started = _jcmd(
                pid,
                "ManagementAgent.start",
                f"jmxremote.port={port}",
                f"jmxremote.rmi.port={port}",
                "jmxremote.host=127.0.0.1",
                "jmxremote.authenticate=false",
                "jmxremote.ssl=false",
            )
            if started is None or _agent_port(pid) != port:
                return None
        reader = cls(port)
        return reader if reader.counts() is not None else None

    def counts(self) -> dict[str, int] | None:
        """Requests served so far by type, and ``records_in``; None when the read failed."""
        try:
            out = subprocess.run(
                ["java", str(READER), str(self.port)],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        return parse_counts(out.stdout)


def parse_counts(text: str) -> dict[str, int]:
    """``type<TAB>count`` lines as a dict (other lines are skipped)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("\t")
        if sep and value.strip().isdigit():
            counts[name] = int(value)
    return counts


def per_order(before: dict[str, int] | None, after: dict[str, int] | None, orders: int) -> dict[str, float] | None:
    """Requests of each type served between two reads, per order, the most frequent first (types
    that did not move are left out); None when either read is missing or no order was counted."""
    if before is None or after is None or orders <= 0:
        return None
    moved = {name: after[name] - before.get(name, 0) for name in after}
    ranked = sorted(((n, v) for n, v in moved.items() if v > 0), key=lambda kv: -kv[1])
    return {name: round(value / orders, 2) for name, value in ranked}


def describe_requests(requests: dict[str, float] | None, top: int = 6) -> str:
    """The most frequent request types per order, for a log line."""
    if not requests:
        return "broker requests not counted"
    shown = [(name, value) for name, value in requests.items() if name != "records_in"][:top]
    line = ", ".join(f"{name} {value:g}" for name, value in shown)
    if "records_in" in requests:
        line += f"; records appended {requests['records_in']:g}"
    return f"broker requests per order: {line}"


def _agent_port(pid: int) -> int | None:
    status = _jcmd(pid, "ManagementAgent.status")
    if status is None or "Agent: enabled" not in status:
        return None
    found = _PORT.search(status)
    return int(found.group(1)) if found else None


def _jcmd(pid: int, *command: str) -> str | None:
    try:
        out = subprocess.run(["jcmd", str(pid), *command], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None
