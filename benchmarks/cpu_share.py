"""Who used the machine's CPU during a benchmark window: the worker, the broker, and what was left.

On the 2-core benchmark machine the broker runs beside the worker, so a flow point's latency
depends on how much of the machine the broker takes, not only on the worker's own cost. Paced
exactly_once load makes the broker pay per partition a transaction touches (a ProduceRequest, a
verification and a marker each: ``broker_requests``), so its share per order grows as batches
shrink. A point therefore reports the CPU each process used over its publishing window, per
order, and the machine's idle and steal shares (steal: CPU the hypervisor gave to other guests; a
noisy neighbour stalls every process).

The broker is a JVM: for its first minute or so of load its JIT compiler threads take up to half a
core of the two (measured 0.3-0.58 cores on a fresh broker, falling to ~0.02 once warm), and GC
threads take their share under allocation. A meter can count such thread families of a process
apart (``families``), by the thread names Linux keeps in ``/proc/PID/task/TID/comm`` (15
characters), so a point measured on a cold broker says so.

Linux only (``/proc``); elsewhere the figures are None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
TCP_LISTEN = "0A"


def listening_pid(port: int, proc: Path = PROC) -> int | None:
    """The process listening on TCP ``port`` (IPv4 or IPv6), from ``/proc/net/tcp*`` and the
    processes' socket descriptors; None when not found or not readable."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


def process_cpu_s(pid: int, proc: Path = PROC) -> float | None:
    """CPU seconds (user + system, all threads) the process has used so far."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return _stat_cpu_s(stat)


def _stat_cpu_s(stat: str) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` line."""
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks(proc: Path = PROC) -> list[int] | None:
    """The machine's cumulative CPU ticks: user nice system idle iowait irq softirq steal ..."""
    try:
        return [int(x) for x in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None


# HotSpot's thread names as /proc shows them (cut to 15 characters): "C2 CompilerThre(ad0)",
# "GC Thread#0", "G1 Conc#0", "G1 Refine#0", "G1 Service".
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
GC_THREADS = ("GC Thread", "G1 ")


def thread_cpu_s(pid: int, prefixes: tuple[str, ...], proc: Path = PROC) -> dict[str, float] | None:
    """CPU seconds used so far by each thread of ``pid`` whose name starts with one of
    ``prefixes``, by thread id; None when the process is not readable. Per thread, because HotSpot
    starts and ends compiler threads as the work comes and goes: a total would drop when one ends."""
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    used: dict[str, float] = {}
    for task in tasks:
        try:
            if not (task / "comm").read_text().startswith(prefixes):
                continue
            used[task.name] = _stat_cpu_s((task / "stat").read_text())
        except OSError:
            continue  # the thread ended between the listing and the read
    return used


@dataclass
class CpuSnapshot:
    at: float
    processes: dict[str, float | None]
    ticks: list[int] | None
    families: dict[str, dict[str, float] | None] = field(default_factory=dict)


class CpuMeter:
    """CPU of named processes (``{"worker": pid, "broker": pid}``) between two snapshots, and of
    thread families within them (``{"broker_jit": ("broker", JIT_THREADS)}``)."""

    def __init__(
        self,
        pids: dict[str, int | None],
        proc: Path = PROC,
        families: Mapping[str, tuple[str, tuple[str, ...]]] | None = None,
    ) -> None:
        self.pids = pids
        self.proc = proc
        self.families = families or {}

    def snapshot(self) -> CpuSnapshot:
        used = {name: process_cpu_s(pid, self.proc) if pid else None for name, pid in self.pids.items()}
        families = {}
        for family, (name, prefixes) in self.families.items():
            pid = self.pids.get(name)
            families[family] = thread_cpu_s(pid, prefixes, self.proc) if pid else None
        return CpuSnapshot(time.monotonic(), used, machine_ticks(self.proc), families)

    def between(self, start: CpuSnapshot, end: CpuSnapshot, orders: int) -> dict[str, Any]:
        """Cores each process used on average, its CPU ms per order, the machine's idle and steal
        shares."""
        elapsed = max(end.at - start.at, 1e-9)
        out: dict[str, Any] = {"window_s": round(elapsed, 1)}
        for name in self.pids:
            a, b = start.processes.get(name), end.processes.get(name)
            used = None if a is None or b is None else b - a
            out[f"{name}_cores"] = None if used is None else round(used / elapsed, 2)
            out[f"{name}_ms_per_order"] = None if used is None or not orders else round(used * 1000 / orders, 2)
        for family in self.families:
            out[f"{family}_cores"] = _family_cores(start.families.get(family), end.families.get(family), elapsed)
        out["idle_share"] = out["steal_share"] = None
        if start.ticks and end.ticks:
            delta = [b - a for a, b in zip(start.ticks, end.ticks, strict=False)]
            total = sum(delta[:8]) or 1  # guest time is counted within user already
            out["idle_share"] = round((delta[3] + delta[4]) / total, 3)
            out["steal_share"] = round(delta[7] / total, 3) if len(delta) > 7 else None
        return out


def _family_cores(start: dict[str, float] | None, end: dict[str, float] | None, elapsed: float) -> float | None:
    """Cores a thread family used between two reads; a thread that ended inside the window is not
    counted (its time is gone with it)."""
    if start is None or end is None:
        return None
    return round(sum(used - start.get(tid, 0.0) for tid, used in end.items()) / elapsed, 2)


def bootstrap_port(bootstrap: str) -> int | None:
    """The port of the first ``host:port`` of a bootstrap list."""
    first = bootstrap.split(",")[0].strip()
    _, sep, port = first.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def describe_cpu(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "cpu not measured"
    parts = [
        f"{name} {cpu[f'{name}_cores']} cores ({cpu[f'{name}_ms_per_order']} ms/order)"
        for name in ("worker", "broker")
        if cpu.get(f"{name}_cores") is not None
    ]
    if cpu.get("broker_jit_cores") is not None:  # a broker still compiling is a cold broker
        parts.append(f"broker JIT {cpu['broker_jit_cores']} cores")
    if cpu.get("idle_share") is not None:
        parts.append(f"idle {cpu['idle_share']:.0%}, steal {cpu['steal_share'] or 0:.0%}")
    return "cpu: " + ", ".join(parts)
