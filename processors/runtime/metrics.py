"""Prometheus metrics of the engine (prometheus-client), served on the worker's metrics port.

Per agent and event type: events in, out, dead-lettered, duplicate; handler latency; batch size;
retries; circuit state per dependency; consumer lag per partition; restore progress; transaction
(or offset) commit latency. Label children are cached so the hot path pays one method call.
"""

from __future__ import annotations

import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from processors.runtime._endpoints import Endpoints
from processors.runtime.retry import CIRCUIT_STATES


class HistogramSeries:
    """One label set of a :class:`BatchedHistogram`: per-bucket counts (not cumulative) and sum."""

    __slots__ = ("bounds", "counts", "sum", "created", "_lock")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()
        self._lock = threading.Lock()

    def add(self, counts: Sequence[int], total: float) -> None:
        """Observations already binned by the caller (``counts[i]``: values whose first upper bound
        at or above them is ``bounds[i]``), summing to ``total``."""
        with self._lock:
            mine = self.counts
            for i, n in enumerate(counts):
                if n:
                    mine[i] += n
            self.sum += total

    def observe(self, amount: float) -> None:
        """One observation, as ``prometheus_client.Histogram.observe`` counts it (NaN: sum only)."""
        with self._lock:
            self.sum += amount
            for i, bound in enumerate(self.bounds):
                if amount <= bound:
                    self.counts[i] += 1
                    break

    def snapshot(self) -> tuple[list[float], float, float]:
        with self._lock:
            return list(self.counts), self.sum, self.created


class BatchedHistogram(Histogram):
    """A labelled histogram exposed exactly as ``prometheus_client.Histogram`` exposes one (same
    sample names, labels and ``le`` texts), that also takes a batch of observations at once: the
    per-event path bins handler latencies in a list and adds them per batch, where ``observe`` would
    take a lock and scan the buckets for each value (~2 µs). prometheus-client has no public bulk
    observe, so the series are our own (:class:`HistogramSeries`), behind the public ``labels`` and
    ``collect`` of a ``Histogram`` (which keeps its declaration: name, help, type, registration)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name, documentation, labelnames, buckets=buckets, registry=registry)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = (*buckets, math.inf)
        self._le = tuple(floatToGoString(b) for b in self.bounds)
        self._series: dict[tuple[str, ...], HistogramSeries] = {}
        self._lock = threading.Lock()
        # the switch prometheus-client documents for its own _created series
        self._created = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")

    def labels(self, *values: str) -> HistogramSeries:  # type: ignore[override]
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = HistogramSeries(self.bounds)
            return series

    def collect(self) -> list[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        with self._lock:
            series = list(self._series.items())
        for values, one in series:
            labels = dict(zip(self.labelnames, values, strict=True))
            counts, total, created = one.snapshot()
            acc = 0.0
            for le, n in zip(self._le, counts, strict=True):
                acc += n
                metric.add_sample(self.name + "_bucket", {**labels, "le": le}, acc)
            metric.add_sample(self.name + "_count", labels, acc)
            metric.add_sample(self.name + "_sum", labels, total)
            if self._created:
                metric.add_sample(self.name + "_created", labels, created)
        return [metric]


EVENTS_IN = Counter("choreo_events_in_total", "Input events read by an agent", ["agent", "event_type"])
EVENTS_OUT = Counter("choreo_events_out_total", "Follow-up events emitted by an agent", ["agent", "event_type"])
DEAD_LETTERED = Counter("choreo_events_dead_lettered_total", "Inputs sent to a DLQ", ["agent", "event_type", "reason"])
DUPLICATES = Counter("choreo_events_duplicate_total", "Inputs dropped as duplicates", ["agent", "event_type"])
IGNORED = Counter("choreo_events_ignored_total", "Inputs of a type the agent does not consume", ["agent", "event_type"])
AUDIT_RECORDS = Counter("choreo_audit_records_total", "Audit records written", ["agent", "outcome"])
HANDLER_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
HANDLER_SECONDS = BatchedHistogram(
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
RESTORED = Counter(
    "choreo_restored_records_total",
    "Changelog records of complete batches applied to stores on restore (each record read, overwritten or not)",
    ["agent"],
)
COMMIT_SECONDS = Histogram(
    "choreo_commit_seconds",
    "Batch commit latency: transaction commit (exactly_once) or flush+commit (at_least_once)",
    ["agent", "guarantee"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
ABORTS = Counter("choreo_batch_aborts_total", "Batches aborted and rewound", ["agent"])
TIMERS_FIRED = Counter("choreo_timers_fired_total", "Timers fired", ["agent"])
ASSIGNED = Gauge("choreo_assigned_partitions", "Partitions (stores) owned", ["agent"])
AGENT_HEALTHY = Gauge(
    "choreo_agent_healthy", "1 while the agent processes normally, 0 while it retries (broker away, stuck)", ["agent"]
)
SESSION_RESTARTS = Counter(
    "choreo_agent_restarts_total", "Agent sessions replaced (fresh clients) after a failure", ["agent", "cause"]
)
STUCK_CALLS = Counter(
    "choreo_stuck_calls_total", "Client calls that outlived the engine's deadline (agent replaced)", ["agent", "call"]
)
OUTPUT_REFUSED = Counter(
    "choreo_output_refused_total",
    "Inputs whose output the broker refused (isolated and dead-lettered, or skipped when even the dead letter was)",
    ["agent", "topic", "outcome"],
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
E2E_SECONDS = BatchedHistogram(
    "choreo_record_e2e_seconds",
    "End-to-end latency of a record at its agent: when it was handled minus its Kafka record timestamp",
    ["agent"],
    buckets=LATENCY_BUCKETS,
)
FLOW_SECONDS = BatchedHistogram(
    "choreo_flow_seconds",
    "Flow time at a terminal event: when it was emitted minus the time of the flow's root event (ce_roottime)",
    ["agent", "event_type"],
    buckets=LATENCY_BUCKETS,
)
ISOLATED_BATCHES = Counter(
    "choreo_isolated_batches_total", "Batches replayed record by record to find a refused output", ["agent"]
)


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
        self._handler_bounds = HANDLER_SECONDS.bounds
        self._handler_counts = [0] * len(self._handler_bounds)
        self._handler_sum = 0.0
        self._batch = BATCH_SIZE.labels(agent)
        self._retries = RETRIES.labels(agent)
        self._commit = COMMIT_SECONDS.labels(agent, guarantee)
        self._aborts = ABORTS.labels(agent)
        self._timers = TIMERS_FIRED.labels(agent)
        self._restored = RESTORED.labels(agent)
        self._assigned = ASSIGNED.labels(agent)
        self._e2e = E2E_SECONDS.labels(agent)
        self._e2e_counts = [0] * len(E2E_SECONDS.bounds)
        self._e2e_sum = 0.0

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
        counts = self._handler_counts
        if self._handler_sum or any(counts):
            self._handler.add(counts, self._handler_sum)
            counts[:] = [0] * len(counts)
            self._handler_sum = 0.0
        e2e = self._e2e_counts
        if self._e2e_sum or any(e2e):
            self._e2e.add(e2e, self._e2e_sum)
            e2e[:] = [0] * len(e2e)
            self._e2e_sum = 0.0
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
        if seconds >= 0.0:
            # the bucket observe() would pick: the first upper bound >= seconds
            self._handler_counts[bisect_left(self._handler_bounds, seconds)] += 1
            self._handler_sum += seconds
        else:  # negative or NaN (a clock step): as observe() counts it
            self._handler.observe(seconds)

    def record_e2e(self, seconds: float) -> None:
        """A record's end-to-end latency at this agent; binned now, published at the next flush. A
        negative value (a producer's clock ahead of ours) counts as 0."""
        seconds = max(0.0, seconds)
        self._e2e_counts[bisect_left(E2E_SECONDS.bounds, seconds)] += 1
        self._e2e_sum += seconds

    def flow_time(self, event_type: str, seconds: float) -> None:
        """The flow time of a flow ending in ``event_type`` (a terminal output of this agent)."""
        FLOW_SECONDS.labels(self.agent, event_type).observe(max(0.0, seconds))

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

    def healthy(self, ok: bool) -> None:
        AGENT_HEALTHY.labels(self.agent).set(1 if ok else 0)

    def session_restart(self, cause: str) -> None:
        SESSION_RESTARTS.labels(self.agent, cause).inc()

    def stuck_call(self, call: str) -> None:
        STUCK_CALLS.labels(self.agent, call).inc()

    def output_refused(self, topic: str, outcome: str) -> None:
        OUTPUT_REFUSED.labels(self.agent, topic, outcome).inc()

    def isolated_batch(self) -> None:
        ISOLATED_BATCHES.labels(self.agent).inc()


# ---------------------------------------------------------------------- rebalance and restore
# Kept apart from AgentMetrics: called per rebalance and per store open, never per record.
_OPEN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
REBALANCE_PARTITIONS = Counter(
    "choreo_rebalance_partitions_total",
    "Partitions that changed hands in rebalance callbacks (assigned, revoked, lost): incremental "
    "rebalancing counts only those that move",
    ["agent", "change"],
)
STORE_OPENS = Counter(
    "choreo_store_opens_total",
    "Partition stores opened, by outcome: up_to_date (no changelog read), caught_up (read, nothing to "
    "apply), restored (changelog records applied), rebuilt (local store wiped and restored)",
    ["agent", "outcome"],
)
STORE_OPEN_SECONDS = Histogram(
    "choreo_store_open_seconds",
    "Assigned to ready, per partition store (open, restore)",
    ["agent"],
    buckets=_OPEN_BUCKETS,
)
RESTORE_SECONDS = Histogram(
    "choreo_restore_seconds",
    "Duration of the store opens that read the changelog (assigned to ready)",
    ["agent"],
    buckets=_OPEN_BUCKETS,
)


def rebalance_changed(agent: str, change: str, partitions: int) -> None:
    """``partitions`` partitions of ``agent`` were assigned, revoked or lost (``change``)."""
    REBALANCE_PARTITIONS.labels(agent, change).inc(partitions)


def store_opened(agent: str, outcome: str, seconds: float) -> None:
    """One partition store of ``agent`` is ready, after ``seconds`` since its open began."""
    STORE_OPENS.labels(agent, outcome).inc()
    STORE_OPEN_SECONDS.labels(agent).observe(seconds)


def restore_finished(agent: str, records: int, seconds: float) -> None:
    """A store that read its changelog caught up (``records`` applied; the records counter and the
    remaining gauge move as the restore goes, see :class:`AgentMetrics`)."""
    RESTORE_SECONDS.labels(agent).observe(seconds)


def serve(port: int, addr: str = "0.0.0.0") -> Endpoints:
    """Expose /metrics, /healthz and /readyz on ``port`` (daemon threads); attach a worker's
    state to the returned server for the probes (see :mod:`processors.runtime._endpoints`)."""
    return Endpoints(port, addr).start()
