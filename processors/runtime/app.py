"""The App: a set of agents over one contract registry, under one application id.

::

    app = App("shop")

    @app.agent("counter", consumes=["counter.incremented"], produces=["counter.reached"])
    def count(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + event.value["by"]
        if ctx.state["n"] >= 10:
            ctx.emit("counter.reached", event.key, {"name": event.key, "total": ctx.state["n"]})

The application id prefixes everything the engine owns on the cluster: consumer groups
(``<app>.<agent>``), changelog topics, transactional ids. Two deployments of the same code under
different ids never share state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from processors.contracts import AvroCodec, ContractError, ContractRegistry
from processors.runtime.agent import AgentSpec, Handler, Routing, TimerHandler
from processors.runtime.conventions import AUDIT_TOPIC, changelog_topic
from processors.runtime.errors import AppError, TopologyError
from processors.runtime.retry import BreakerPolicy, RetryPolicy
from processors.runtime.topology import Topology

if TYPE_CHECKING:  # pragma: no cover
    from processors.settings import Settings

DEFAULT_MAX_HOPS = 16
DEFAULT_DEDUPE_TTL_S = 7 * 24 * 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class App:
    """Agents, contracts and engine options of one application.

    ``registry`` / ``contracts_dir`` / ``schemas_dir``: where contracts come from. The one rule
    (:func:`processors.settings.contract_dirs`): what is given here, else the settings the worker
    runs with, or, outside a worker, ``CHOREO_CONTRACTS_DIR`` / ``./choreo.toml``, else the commerce
    contracts shipped with the package.
    ``audit_event_type`` is the contract used to encode audit records (JSON when the registry lacks
    it); ``audit_topic`` defaults to that contract's topic, else ``choreo.audit``.
    """

    def __init__(
        self,
        app_id: str,
        *,
        registry: ContractRegistry | None = None,
        contracts_dir: str | Path | None = None,
        schemas_dir: str | Path | None = None,
        audit_event_type: str = "audit.record",
        audit_topic: str | None = None,
        max_hops: int = DEFAULT_MAX_HOPS,
        dedupe_ttl_s: float = DEFAULT_DEDUPE_TTL_S,
        create_topics: bool = True,
        schema_registry_url: str | None = None,
    ) -> None:
        if not _NAME.match(app_id):
            raise AppError(f"app id {app_id!r}: use letters, digits, '.', '_' and '-'")
        self.app_id = app_id
        self.agents: dict[str, AgentSpec] = {}
        self.audit_event_type = audit_event_type
        self._audit_topic = audit_topic
        self.max_hops = max_hops
        self.dedupe_ttl_s = dedupe_ttl_s
        self.create_topics = create_topics
        self._registry = registry
        self._contracts_given = registry is not None or contracts_dir is not None  # else the settings decide
        self._contracts_dir = Path(contracts_dir) if contracts_dir is not None else None
        self._schemas_dir = Path(schemas_dir) if schemas_dir is not None else None
        self._schema_registry_url = schema_registry_url
        self._codec: AvroCodec | None = None

    # ------------------------------------------------------------------ declaring agents
    def agent(
        self,
        name: str,
        *,
        consumes: Iterable[str],
        produces: Iterable[str] = (),
        version: str = "1",
        transient: Iterable[type[BaseException]] = (),
        retry: RetryPolicy | None = None,
        max_hops: int | None = None,
        dependencies: Iterable[str] | Mapping[str, BreakerPolicy | None] | None = None,
        on_timer: TimerHandler | None = None,
        dedupe_ttl_s: float | None = None,
        routing: Routing | str = Routing.CONTRACT,
        terminal: Iterable[str] = (),
        max_in_flight: int | None = None,
        threads: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator declaring an agent; the decorated function is the handler ``(event, ctx)``,
        a plain function or an ``async def`` (see :class:`AgentSpec` for ``max_in_flight`` and
        ``threads``)."""

        def register(handler: Handler) -> Handler:
            self.add_agent(
                AgentSpec(
                    name=name,
                    consumes=tuple(consumes),
                    produces=tuple(produces),
                    handler=handler,
                    version=str(version),
                    transient=tuple(transient),
                    retry=retry or RetryPolicy(),
                    max_hops=max_hops,
                    dependencies=AgentSpec.normalize_dependencies(dependencies),
                    on_timer=on_timer,
                    dedupe_ttl_s=dedupe_ttl_s,
                    routing=Routing(routing),
                    terminal=frozenset(terminal),
                    max_in_flight=max_in_flight,
                    threads=threads,
                )
            )
            return handler

        return register

    def add_agent(self, spec: AgentSpec) -> AgentSpec:
        if not _NAME.match(spec.name):
            raise AppError(f"agent name {spec.name!r}: use letters, digits, '.', '_' and '-'")
        if spec.name in self.agents:
            raise AppError(f"agent {spec.name!r} is declared twice")
        if not spec.consumes:
            raise AppError(f"agent {spec.name!r} consumes nothing")
        if not spec.terminal <= set(spec.produces):
            extra = ", ".join(sorted(spec.terminal - set(spec.produces)))
            raise AppError(f"agent {spec.name!r}: terminal type(s) {extra} not among what it produces")
        if spec.max_in_flight is not None and (problem := spec.concurrency_problem(spec.max_in_flight)):
            raise AppError(problem)
        if spec.threads and spec.is_async:
            raise AppError(f"agent {spec.name!r}: threads=True is for sync handlers (an async def one runs on a loop)")
        if spec.max_hops is not None and spec.max_hops < 1:
            raise AppError(f"agent {spec.name!r}: max_hops must be at least 1")
        self.agents[spec.name] = spec
        return spec

    # ------------------------------------------------------------------ contracts
    def configure(self, settings: Settings) -> None:
        """Take contract locations and the Schema Registry URL from settings unless given explicitly.
        Configured again with other settings (one process, several commands or tests), the latest
        settings decide: contracts loaded from earlier ones are dropped."""
        if not self._contracts_given:
            wanted = (Path(settings.contracts_dir), Path(settings.schemas_dir))
            if (self._contracts_dir, self._schemas_dir) != wanted:
                self._contracts_dir, self._schemas_dir = wanted
                self._registry, self._codec = None, None
        if self._schema_registry_url is None:
            self._schema_registry_url = settings.schema_registry_url

    @property
    def registry(self) -> ContractRegistry:
        if self._registry is None:
            self._registry = ContractRegistry.load(self._contracts_dir, self._schemas_dir)
        return self._registry

    @property
    def codec(self) -> AvroCodec:
        if self._codec is None:
            self._codec = AvroCodec(self.registry, schema_registry_url=self._schema_registry_url)
        return self._codec

    @property
    def audit_topic(self) -> str:
        if self._audit_topic is not None:
            return self._audit_topic
        if self.audit_event_type in set(self.registry.event_types()):
            return self.registry.get(self.audit_event_type).topic
        return AUDIT_TOPIC

    # ------------------------------------------------------------------ names on the cluster
    def group_id(self, agent: str) -> str:
        return f"{self.app_id}.{agent}"

    def changelog_topic(self, agent: str) -> str:
        return changelog_topic(self.app_id, agent, "state")

    def timers_topic_name(self, agent: str) -> str:
        """Name under which failed timers are dead-lettered (``<this>.dlq``); never a real input."""
        return f"{self.app_id}.{agent}.timers"

    def transactional_id(self, agent: str, worker_id: str) -> str:
        return f"{self.app_id}.{agent}.{worker_id}"

    # ------------------------------------------------------------------ checks
    def topology(self) -> Topology:
        return Topology.from_app(self)

    def check(self) -> None:
        """Everything that can be refused before touching Kafka: unknown event types, an undeclared
        cycle, timers without a handler."""
        problems = []
        known = set(self.registry.event_types())
        for spec in self.agents.values():
            for et in (*spec.consumes, *spec.produces):
                if et not in known:
                    problems.append(f"agent {spec.name!r}: event type {et!r} has no contract")
        if problems:
            raise AppError("; ".join(problems))
        self.topology().check()

    def select(self, names: Iterable[str] | None) -> list[AgentSpec]:
        if names is None:
            return list(self.agents.values())
        out = []
        for name in names:
            if name not in self.agents:
                raise AppError(f"unknown agent {name!r} (declared: {', '.join(self.agents) or 'none'})")
            out.append(self.agents[name])
        return out

    def input_topics(self, spec: AgentSpec) -> list[str]:
        return sorted({self.registry.get(et).topic for et in spec.consumes})


__all__ = ["App", "AppError", "ContractError", "TopologyError", "DEFAULT_MAX_HOPS", "DEFAULT_DEDUPE_TTL_S"]
