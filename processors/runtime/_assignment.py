"""Which partitions an agent processes in this worker, through rebalances.

Owns the agent's open partition stores and the rebalance callbacks. An assigned partition is
paused on the consumer until the restorer hands back its store up to date, then resumed; a
revoked or lost partition has what is done of it settled by the commit protocol (at-least-once
commits its offsets) and its store closed. The callbacks do bookkeeping only: nothing slow or
failing runs inside the client's rebalance callback, where an exception reaches Python mangled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from processors.runtime._commit import Committer
from processors.runtime._restore import ChangelogRestorer
from processors.runtime.metrics import AgentMetrics
from processors.runtime.state import RocksStore

log = logging.getLogger("choreo.worker")


class Assignment:
    """The partitions of one agent: processing (store open) or paused until restored."""

    def __init__(self, restorer: ChangelogRestorer, committer: Committer, metrics: AgentMetrics, agent: str) -> None:
        self.restorer = restorer
        self.committer = committer
        self.metrics = metrics
        self.agent = agent
        self.stores: dict[int, RocksStore] = {}  # partitions being processed
        self.paused: dict[int, list[TopicPartition]] = {}  # assigned, waiting for their store
        self.assigned_once = False
        self.detached = False  # the session is closing: callbacks settle nothing more

    @property
    def settled(self) -> bool:
        """An assignment came and every partition of it is processing."""
        return self.assigned_once and not self.restorer.busy

    # ------------------------------------------------------------------ rebalance callbacks
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Assign, and pause what needs a store restored first: the restore runs from the loop."""
        consumer.assign(partitions)
        waiting = [tp for tp in partitions if tp.partition not in self.stores]
        if waiting:
            consumer.pause(waiting)
        for tp in waiting:
            self.paused.setdefault(tp.partition, []).append(TopicPartition(tp.topic, tp.partition))
        self.restorer.queue(tp.partition for tp in waiting)
        self.assigned_once = True
        log.info(
            "partitions assigned",
            extra={"agent": self.agent, "partitions": sorted({tp.partition for tp in partitions})},
        )

    def detach(self) -> None:
        """The session closes: the revoke its consumer's close serves must not commit or log."""
        self.detached = True

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.detached:
            return
        revoked = {tp.partition for tp in partitions}
        self.committer.revoke(revoked)
        self.close(revoked)
        log.info("partitions revoked", extra={"agent": self.agent, "partitions": sorted(revoked)})

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.detached:
            return
        self.close({tp.partition for tp in partitions})
        log.warning("partitions lost", extra={"agent": self.agent})

    # ------------------------------------------------------------------ from the loop
    def activate(self, consumer: Consumer, ready: dict[int, RocksStore]) -> None:
        """Restored stores: their partitions are processed from now on."""
        if not ready:
            return
        self.stores.update(ready)
        resumed = [tp for p in ready for tp in self.paused.pop(p, [])]
        if resumed:
            consumer.resume(resumed)
        self.metrics.assigned(len(self.stores))

    def close(self, partitions: Iterable[int] | None = None) -> None:
        """Close the stores of ``partitions`` (all when None), restoring or processing."""
        gone = set(self.stores) | set(self.paused) if partitions is None else set(partitions)
        self.restorer.drop(gone)
        for p in sorted(gone):
            self.paused.pop(p, None)
            store = self.stores.pop(p, None)
            if store is not None:
                store.close()
            self.metrics.restore_remaining(p, 0)
        self.metrics.assigned(len(self.stores))
