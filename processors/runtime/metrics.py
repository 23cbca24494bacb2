"""Prometheus metrics of the engine (prometheus-client), served on the worker's metrics port.

Per agent and event type: events in, out, dead-lettered, duplicate; handler latency; batch size;
retries; circuit state per dependency; consumer lag per partition; restore progress; transaction
(or offset) commit latency. Label children are cached so the hot path pays one method call.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from processors.runtime.retry import CIRCUIT_STATES

EVENTS_IN = Counter("choreo_events_in_total", "Input events read by an agent", ["agent", "event_type"])
EVENTS_OUT = Counter("choreo_events_out_total", "Follow-up events emitted by an agent", ["agent", "event_type"])
DEAD_LETTERED = Counter("choreo_events_dead_lettered_total", "Inputs sent to a DLQ", ["agent", "event_type", "reason"])
DUPLICATES = Counter("choreo_events_duplicate_total", "Inputs dropped as duplicates", ["agent", "event_type"])
IGNORED = Counter("choreo_events_ignored_total", "Inputs of a type the agent does not consume", ["agent", "event_type"])
AUDIT_RECORDS = Counter("choreo_audit_records_total", "Audit records written", ["agent", "outcome"])
HANDLER_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
HANDLER_SECONDS = Histogram(
    "choreo_handler_seconds",
    "Handler latency (one successful attempt); every attempt is observed, added to the histogram once per batch",
    ["agent"],
    buckets=HANDLER_BUCKETS,
)
BATCH_SIZE = Histogram(
    "choreo_batch_size", "Records per consumed batch", ["agent"], buckets=(1, 10, 50, 100, 250, 500, 1000, 2000)
)
RETRIES = Counter("choreo_retries_total", "Handler retries after a transient error", ["agent"])
CIRCUIT_STATE = Gauge(
    "choreo_circuit_state", "Circuit breaker state (0 closed, 1 open, 2 half-open)", ["agent", "dependency"]
)
CONSUMER_LAG = Gauge("choreo_consumer_lag", "High watermark minus position", ["agent", "topic", "partition"])
RESTORE_REMAINING = Gauge(
    "choreo_restore_remaining_records", "Changelog records left to restore (0 when ready)", ["agent", "partition"]
)
RESTORED = Counter("choreo_restored_records_total", "Changelog records applied on restore", ["agent"])
COMMIT_SECONDS = Histogram(
    "choreo_commit_seconds",
    "Batch commit latency: transaction commit (exactly_once) or flush+commit (at_least_once)",
    ["agent", "guarantee"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
ABORTS = Counter("choreo_batch_aborts_total", "Batches aborted and rewound", ["agent"])
TIMERS_FIRED = Counter("choreo_timers_fired_total", "Timers fired", ["agent"])
ASSIGNED = Gauge("choreo_assigned_partitions", "Partitions (stores) owned", ["agent"])


class AgentMetrics:
    """The metrics of one agent, label children cached."""

    def __init__(self, agent: str, guarantee: str = "at_least_once") -> None:
        self.agent = agent
        self._in: dict[str, int] = {}
        self._out: dict[str, int] = {}
        self._dup: dict[str, int] = {}
        self._aud: dict[str, int] = {}
        self._handler = HANDLER_SECONDS.labels(agent)
        # Handler latencies are binned here per event and added to the histogram per batch (flush),
        # like the counters: observe() takes a lock per value and scans the buckets (~2 µs).
        self._handler_bounds = (*HANDLER_BUCKETS, float("inf"))
        self._handler_counts = [0] * len(self._handler_bounds)
        self._handler_sum = 0.0
        self._handler_bulk = _bulk_capable(self._handler, self._handler_bounds)
        self._batch = BATCH_SIZE.labels(agent)
        self._retries = RETRIES.labels(agent)
        self._commit = COMMIT_SECONDS.labels(agent, guarantee)
        self._aborts = ABORTS.labels(agent)
        self._timers = TIMERS_FIRED.labels(agent)
        self._restored = RESTORED.labels(agent)
        self._assigned = ASSIGNED.labels(agent)

    # Per-event counts are tallied in plain dicts and added to the Prometheus counters once per
    # batch (flush), which keeps the counters' locks off the per-event path.
    def event_in(self, event_type: str) -> None:
        self._in[event_type] = self._in.get(event_type, 0) + 1

    def event_out(self, event_type: str) -> None:
        self._out[event_type] = self._out.get(event_type, 0) + 1

    def duplicate(self, event_type: str) -> None:
        self._dup[event_type] = self._dup.get(event_type, 0) + 1

    def audit(self, outcome: str) -> None:
        self._aud[outcome] = self._aud.get(outcome, 0) + 1

    def flush(self) -> None:
        """Add the tallies of the batch to the counters and the handler latency histogram."""
        if self._handler_sum or any(self._handler_counts):
            child: Any = self._handler
            child._sum.inc(self._handler_sum)
            for i, n in enumerate(self._handler_counts):
                if n:
                    child._buckets[i].inc(n)
                    self._handler_counts[i] = 0
            self._handler_sum = 0.0
        for tally, metric in (
            (self._in, EVENTS_IN),
            (self._out, EVENTS_OUT),
            (self._dup, DUPLICATES),
            (self._aud, AUDIT_RECORDS),
        ):
            if tally:
                for label, n in tally.items():
                    metric.labels(self.agent, label).inc(n)
                tally.clear()

    def ignored(self, event_type: str) -> None:
        IGNORED.labels(self.agent, event_type).inc()

    def dead_lettered(self, event_type: str | None, reason: str) -> None:
        DEAD_LETTERED.labels(self.agent, event_type or "unknown", reason).inc()

    def handler_latency(self, seconds: float) -> None:
        """One successful attempt's duration; counted exactly, published at the next flush."""
        if self._handler_bulk and seconds >= 0.0:
            # the bucket observe() would pick: the first upper bound >= seconds
            self._handler_counts[bisect_left(self._handler_bounds, seconds)] += 1
            self._handler_sum += seconds
        else:  # a client library whose histogram we cannot add to in bulk, or a value to pass as is
            self._handler.observe(seconds)

    def batch(self, size: int) -> None:
        self._batch.observe(size)

    def retry(self) -> None:
        self._retries.inc()

    def circuit_state(self, dependency: str, state: str) -> None:
        CIRCUIT_STATE.labels(self.agent, dependency).set(CIRCUIT_STATES[state])

    def lag(self, topic: str, partition: int, lag: int) -> None:
        CONSUMER_LAG.labels(self.agent, topic, str(partition)).set(lag)

    def restore_remaining(self, partition: int, remaining: int) -> None:
        RESTORE_REMAINING.labels(self.agent, str(partition)).set(remaining)

    def restored(self, n: int) -> None:
        self._restored.inc(n)

    def commit_latency(self, seconds: float) -> None:
        self._commit.observe(seconds)

    def abort(self) -> None:
        self._aborts.inc()

    def timer_fired(self) -> None:
        self._timers.inc()

    def assigned(self, n: int) -> None:
        self._assigned.set(n)


def _bulk_capable(child: Any, bounds: tuple[float, ...]) -> bool:
    """Whether a histogram child has the per-bucket values and sum that ``observe`` increments
    (prometheus-client's layout), with our bounds, so a batch of observations can be added at once."""
    try:
        return (
            list(child._upper_bounds) == list(bounds)
            and len(child._buckets) == len(bounds)
            and all(callable(getattr(b, "inc", None)) for b in child._buckets)
            and callable(getattr(child._sum, "inc", None))
        )
    except AttributeError:
        return False


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on ``port`` (a daemon thread of prometheus-client)."""
    start_http_server(port, addr=addr)
