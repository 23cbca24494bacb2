"""The agent graph: who consumes what and who produces it, checked before anything runs.

Nodes are agents; an edge A → B means A produces an event type B consumes. A cycle is refused at
start unless one of its agents declares a bound (``max_hops``); at run time the hop-count header
stops whatever slips through. The same graph answers the operator's questions (``choreo topology``):
which event types are produced and never consumed, and which are consumed but come from outside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from processors.runtime.errors import TopologyError

if TYPE_CHECKING:  # pragma: no cover
    from processors.runtime.agent import AgentSpec


@dataclass(frozen=True)
class AgentNode:
    name: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    max_hops: int | None = None


@dataclass(frozen=True)
class Edge:
    producer: str
    event_type: str
    consumer: str


@dataclass(frozen=True)
class Topology:
    nodes: Mapping[str, AgentNode] = field(default_factory=dict)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_specs(cls, specs: Iterable[AgentSpec]) -> Topology:
        return cls({s.name: AgentNode(s.name, tuple(s.consumes), tuple(s.produces), s.max_hops) for s in specs})

    @classmethod
    def from_app(cls, app: Any) -> Topology:
        return cls.from_specs(app.agents.values())

    # ------------------------------------------------------------ queries
    def edges(self) -> list[Edge]:
        consumers: dict[str, list[str]] = {}
        for node in self.nodes.values():
            for et in node.consumes:
                consumers.setdefault(et, []).append(node.name)
        out = []
        for node in self.nodes.values():
            for et in node.produces:
                for consumer in consumers.get(et, ()):
                    out.append(Edge(node.name, et, consumer))
        return sorted(out, key=lambda e: (e.producer, e.event_type, e.consumer))

    def successors(self, exclude: Iterable[str] = ()) -> dict[str, set[str]]:
        skip = set(exclude)
        graph: dict[str, set[str]] = {n: set() for n in self.nodes if n not in skip}
        for edge in self.edges():
            if edge.producer in graph and edge.consumer in graph:
                graph[edge.producer].add(edge.consumer)
        return graph

    def cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component that loops, as agent names in edge order,
        the first name repeated at the end (``["a", "b", "a"]``)."""
        return _cycles(self.successors())

    def unbounded_cycles(self) -> list[list[str]]:
        """Cycles that do not pass through any agent declaring ``max_hops``."""
        bounded = [n.name for n in self.nodes.values() if n.max_hops is not None]
        return _cycles(self.successors(exclude=bounded))

    def produced_never_consumed(self) -> list[str]:
        produced = {et for n in self.nodes.values() for et in n.produces}
        consumed = {et for n in self.nodes.values() for et in n.consumes}
        return sorted(produced - consumed)

    def consumed_never_produced(self) -> list[str]:
        """Event types that enter the graph from outside (published by producers, not agents)."""
        produced = {et for n in self.nodes.values() for et in n.produces}
        consumed = {et for n in self.nodes.values() for et in n.consumes}
        return sorted(consumed - produced)

    def check(self) -> None:
        """Raise :class:`TopologyError` for a cycle that no agent bounds."""
        unbounded = self.unbounded_cycles()
        if unbounded:
            shown = "; ".join(" -> ".join(c) for c in unbounded)
            raise TopologyError(
                f"agent graph has a cycle with no declared bound: {shown}. Declare max_hops=N on one agent "
                "of the cycle if the loop is intended."
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "agents": {
                n.name: {"consumes": list(n.consumes), "produces": list(n.produces), "max_hops": n.max_hops}
                for n in sorted(self.nodes.values(), key=lambda n: n.name)
            },
            "edges": [{"from": e.producer, "event_type": e.event_type, "to": e.consumer} for e in self.edges()],
            "cycles": self.cycles(),
            "unbounded_cycles": self.unbounded_cycles(),
            "produced_never_consumed": self.produced_never_consumed(),
            "consumed_never_produced": self.consumed_never_produced(),
        }


def check_copartitioned(agent: str, topic_partitions: Mapping[str, int]) -> int:
    """The input topics of one agent must have the same partition count (the store of partition N
    serves partition N of every input). Returns that count; raises :class:`TopologyError` naming
    every topic and its count otherwise."""
    if not topic_partitions:
        raise TopologyError(f"agent {agent!r} consumes no topic")
    counts = set(topic_partitions.values())
    if len(counts) != 1:
        shown = ", ".join(f"{t}={n}" for t, n in sorted(topic_partitions.items()))
        raise TopologyError(
            f"agent {agent!r} consumes topics that are not co-partitioned ({shown}): every input topic of one "
            "agent must have the same number of partitions, keyed the same way"
        )
    return counts.pop()


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    out = []
    for component in _sccs(graph):
        members = set(component)
        if len(component) == 1:
            node = component[0]
            if node in graph[node]:
                out.append([node, node])
            continue
        out.append(_a_cycle(graph, members, min(component)))
    return sorted(out)


def _a_cycle(graph: Mapping[str, set[str]], members: set[str], start: str) -> list[str]:
    """A simple cycle through ``start`` inside one strongly connected component (BFS back to start)."""
    parents: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ not in members:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    path.reverse()
                    return path + [start]
                if succ not in seen:
                    seen.add(succ)
                    parents[succ] = node
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError("a strongly connected component always has a cycle")  # pragma: no cover


def _sccs(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for succ in it:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result
