"""What ``choreo psp serve`` and ``choreo sink serve`` share: the fault options and the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from processors.errors import ChoreoError
from processors.services.faults import Faults, Outage
from processors.services.server import ServiceServer, serve_forever


class ServiceOptionError(ChoreoError, ValueError):
    """A service option is malformed."""


def faults_of(latency_ms: float, failure_rate: float, outages: list[str], seed: int | None) -> Faults:
    try:
        return Faults(latency_ms / 1000, failure_rate, tuple(Outage.parse(o) for o in outages), seed)
    except ValueError as exc:
        raise ServiceOptionError(str(exc)) from exc


def run(name: str, build: Callable[[], tuple[ServiceServer, object]], close: Callable[[object], None]) -> None:
    logging.getLogger("choreo.services").setLevel(logging.INFO)
    try:
        server, service = build()
    except OSError as exc:
        raise ServiceOptionError(f"{name}: cannot listen: {exc.strerror or exc}") from exc
    serve_forever(server, name, lambda: close(service))
