"""Work the loop does besides handling records: firing due timers, purging expired seen keys and
reporting consumer lag.

Timers and purges write into the same batch overlays as the records, so they commit (or abort)
with the batch; they only look at stores that are processing (restored), never at one that is
still being restored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException

from processors.runtime._commit import Batch
from processors.runtime._processor import HandleResult, Processor
from processors.runtime.metrics import AgentMetrics
from processors.runtime.state import KeyValueStore, keys


@dataclass(frozen=True)
class HousekeepingOptions:
    timers_per_batch: int = 1000  # due timers fired per partition and batch at most
    purge_interval_s: float = 60.0
    purge_limit: int = 5000  # expired seen keys deleted per partition and purge at most
    lag_interval_s: float = 2.0


class Housekeeping:
    """Timers, seen-key TTL and lag of one agent's processing partitions."""

    def __init__(
        self,
        processor: Processor,
        stores: Mapping[int, KeyValueStore],
        metrics: AgentMetrics,
        options: HousekeepingOptions,
    ) -> None:
        self.processor = processor
        self.stores = stores
        self.metrics = metrics
        self.options = options
        self._next_purge = 0.0
        self._next_lag = 0.0

    def fire_timers(
        self,
        batch: Batch,
        emit: Callable[[HandleResult], None],
        key_busy: Callable[[int, bytes], bool] | None = None,
    ) -> None:
        """Fire the timers due now; their results are sent like any handled input's. A timer of a
        key with an input still being handled (``key_busy``: key-ordered concurrency) waits for a
        later turn: it must see what that input does to the key's state."""
        if self.processor.spec.on_timer is None:
            return
        now = self.processor.clock_ms()
        for p, store in list(self.stores.items()):
            due = store.due_timers(now, self.options.timers_per_batch)
            if not due:
                continue
            view = batch.view(p)
            if view is None:
                continue
            for _, timer_key in due:
                if key_busy is not None and key_busy(p, keys.split_timer_suffix(timer_key[2:])[0]):
                    continue
                result = self.processor.fire_timer(view, timer_key, p)
                if result is not None:
                    self.metrics.timer_fired()
                    emit(result)

    def purge(self, batch: Batch) -> None:
        """Every ``purge_interval_s``, delete seen keys whose TTL ran out (the changelog gets the
        deletes with the batch, so a restored store forgets them too)."""
        now_mono = time.monotonic()
        if now_mono < self._next_purge:
            return
        self._next_purge = now_mono + self.options.purge_interval_s
        now = self.processor.clock_ms()
        for p, store in list(self.stores.items()):
            expired = store.expired_seen_keys(now, self.options.purge_limit)
            if not expired:
                continue
            view = batch.view(p)
            if view is None:
                continue
            for seen_key in expired:
                if seen_key not in view.writes:
                    view.put(seen_key, None)

    def report_lag(self, consumer: Consumer) -> None:
        """Every ``lag_interval_s``, the lag of each assigned partition from cached watermarks."""
        now = time.monotonic()
        if now < self._next_lag:
            return
        self._next_lag = now + self.options.lag_interval_s
        try:
            assignment = consumer.assignment()
            if not assignment:
                return
            for tp in consumer.position(assignment):
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high is not None and high >= 0 and tp.offset >= 0:
                    self.metrics.lag(tp.topic, tp.partition, max(0, high - tp.offset))
        except KafkaException:
            pass
