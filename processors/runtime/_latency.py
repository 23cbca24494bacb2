"""Flow time and end-to-end latency observed from a handled result, for records and timers alike.

A flow ends at a terminal output an agent declares (``AgentSpec.terminal``). It may end because a
record came in (``order.confirmed`` after ``payment.authorized``) or because a timer fired (an
order cancelled by its timeout): both reach the engine as a :class:`HandleResult`, and both must
be observed, or ``choreo_flow_seconds`` shows only the flows that went well, and its tail, which
is where timeouts live, is missing. The worker calls :func:`observe_record` for each handled
record and :func:`observe_terminal` for each fired timer's result.
"""

from __future__ import annotations

from collections.abc import Collection

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from processors.kafka_types import ConsumedRecord
from processors.runtime._processor import HandleResult
from processors.runtime.metrics import AgentMetrics


def observe_terminal(metrics: AgentMetrics, terminal: Collection[str], result: HandleResult, now: float) -> int:
    """For each of ``result``'s emitted events whose type is in ``terminal``, the flow time: ``now``
    (seconds since the epoch) minus the flow's root time carried in the event's envelope
    (``ce_roottime``). Returns how many were observed. Cheap when the agent has no terminal types
    or emitted nothing (the common case: one test per record)."""
    if not terminal or not result.emitted:
        return 0
    n = 0
    for emitted in result.emitted:
        if emitted.event_type in terminal:
            metrics.flow_time(emitted.event_type, now - emitted.envelope.flow_root_ms / 1000)
            n += 1
    return n


def observe_record(
    metrics: AgentMetrics, terminal: Collection[str], msg: ConsumedRecord, result: HandleResult, now: float
) -> None:
    """A handled record: its end-to-end latency (``now`` minus its Kafka timestamp, as Kafka
    Streams' record-e2e-latency) and the flow time of its terminal outputs."""
    kind, ts_ms = msg.timestamp()
    if kind != TIMESTAMP_NOT_AVAILABLE:
        metrics.record_e2e(now - ts_ms / 1000)
    observe_terminal(metrics, terminal, result, now)


__all__ = ["observe_record", "observe_terminal"]
