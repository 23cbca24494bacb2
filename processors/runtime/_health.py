"""Whether a worker is alive and whether it is ready, for an orchestrator's probes.

Two questions with different consequences: a worker that is not *alive* is restarted (its
supervisor loop stopped turning, or an agent's thread is stuck in a client call the watchdog
should long have replaced), so the answer must not turn false for what a wait fixes; a worker
that is not *ready* only gets no traffic or holds up a rollout, so it is false whenever an agent
is not processing: not joined its group, left with nothing by a revoke until the group's next
assignment comes, partitions paused for a restore, retrying (a broker
outage, a client error) or stopped by a fatal failure (authorization refused).

The verdicts are pure functions of a snapshot (:class:`WorkerState`) the supervisor takes; the
HTTP side is :mod:`processors.runtime._endpoints`. Bodies name per agent why; every text in them
is short and comes from the engine (causes, call names), never from records or settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The supervisor turns every 0.2 s; this long without a turn is a loop that stopped.
SUPERVISOR_STALE_S = 30.0
# The supervisor replaces an agent whose call is overdue within a turn; overdue this long means
# nothing replaces it.
STUCK_GRACE_S = 10.0
MAX_TEXT = 120


@dataclass(frozen=True)
class AgentState:
    """One agent as the supervisor sees it now."""

    agent: str
    running: bool = False  # a session is up (its thread alive)
    joined: bool = False  # its consumer received an assignment from the group
    partitions: int = 0  # processing (store open)
    restoring: int = 0  # assigned, paused until their store is restored
    rebalancing: bool = False  # a revoke took every partition; the next assignment has not come
    retrying: str | None = None  # the cause while not healthy
    fatal: bool = False  # stopped by a failure no retry fixes
    overdue_call: str | None = None  # a blocking client call past its deadline...
    overdue_s: float = 0.0  # ...by this long


@dataclass(frozen=True)
class WorkerState:
    """The worker as a whole: started (past the start-up checks), its supervisor, its agents."""

    started: bool = False
    supervisor_running: bool = False
    supervisor_idle_s: float = 0.0  # since the supervisor's last turn
    stopping: bool = False
    agents: tuple[AgentState, ...] = ()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    body: dict[str, Any] = field(default_factory=dict)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def liveness(state: WorkerState) -> Verdict:
    """Alive while starting (the start-up wait has its own bound), and once started while the
    supervisor loop turns and no agent is stuck past the watchdog's grace."""
    if not state.started:
        return Verdict(True, {"status": "alive", "reason": "starting"})
    if not state.supervisor_running:
        return Verdict(False, {"status": "dead", "reason": "supervisor stopped"})
    if state.supervisor_idle_s > SUPERVISOR_STALE_S:
        return Verdict(False, {"status": "dead", "reason": f"supervisor idle for {state.supervisor_idle_s:.0f} s"})
    stuck = {
        a.agent: _short(f"{a.overdue_call} overdue by {a.overdue_s:.0f} s")
        for a in state.agents
        if a.overdue_call is not None and a.overdue_s > STUCK_GRACE_S
    }
    if stuck:
        return Verdict(False, {"status": "dead", "reason": "agent stuck in a client call", "agents": stuck})
    return Verdict(True, {"status": "alive"})


def agent_reason(agent: AgentState) -> tuple[bool, str]:
    """Whether one agent is ready, and why (not)."""
    if agent.fatal:
        return False, "stopped by a fatal error (see the worker's log)"
    if agent.retrying is not None:
        return False, _short(f"retrying: {agent.retrying}")
    if not agent.running:
        return False, "no session (restarting)"
    if not agent.joined:
        return False, "not joined its group yet"
    if agent.rebalancing and not agent.partitions and not agent.restoring:
        return False, "rebalancing: every partition revoked, the next assignment not come yet"
    if agent.restoring:
        return False, f"{agent.restoring} partition(s) restoring"
    return True, f"processing {agent.partitions} partition(s)"


def readiness(state: WorkerState) -> Verdict:
    """Ready only when started, not stopping, and every agent is joined, restored and healthy."""
    agents: dict[str, dict[str, Any]] = {}
    for agent in state.agents:
        ok, reason = agent_reason(agent)
        agents[agent.agent] = {"ready": ok, "reason": reason}
    if not state.started:
        return Verdict(False, {"status": "not ready", "reason": "starting", "agents": agents})
    if state.stopping:
        return Verdict(False, {"status": "not ready", "reason": "stopping", "agents": agents})
    if not state.agents:
        return Verdict(False, {"status": "not ready", "reason": "no agents", "agents": agents})
    if all(a["ready"] for a in agents.values()):
        return Verdict(True, {"status": "ready", "agents": agents})
    return Verdict(False, {"status": "not ready", "agents": agents})


__all__ = ["AgentState", "Verdict", "WorkerState", "agent_reason", "liveness", "readiness"]
