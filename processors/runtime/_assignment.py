"""Which partitions an agent processes in this worker, through rebalances.

Owns the agent's open partition stores and the rebalance callbacks. An assigned partition is
paused on the consumer until the restorer hands back its store up to date, then resumed; a
revoked or lost partition has what is done of it settled by the commit protocol (at-least-once
commits its offsets) and its store closed. The callbacks do bookkeeping only: nothing slow or
failing runs inside the client's rebalance callback, where an exception reaches Python mangled.

Incremental rebalancing (the consumer group protocol of KIP-848, or classic cooperative-sticky):
the callbacks carry only the partitions that change owner, so :meth:`Assignment.on_assign` adds
to what is processed and :meth:`Assignment.on_revoke` takes away from it; the stores of the
partitions that stay are neither closed nor reopened and their records keep flowing. Eager
rebalancing (classic range) revokes everything and assigns the whole new set: the same code, with
every partition changing. A store belongs to a partition number: it is closed only when no input
topic's partition of that number is left here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from processors.runtime._commit import Committer
from processors.runtime._restore import ChangelogRestorer
from processors.runtime.metrics import AgentMetrics, rebalance_changed
from processors.runtime.state import RocksStore

log = logging.getLogger("choreo.worker")


class Assignment:
    """The partitions of one agent: processing (store open) or paused until restored."""

    def __init__(
        self,
        restorer: ChangelogRestorer,
        committer: Committer,
        metrics: AgentMetrics,
        agent: str,
        incremental: bool = False,
    ) -> None:
        self.restorer = restorer
        self.committer = committer
        self.metrics = metrics
        self.agent = agent
        self.incremental = incremental  # the callbacks carry changes (incremental_assign/unassign)
        self.stores: dict[int, RocksStore] = {}  # partitions being processed
        self.paused: dict[int, list[TopicPartition]] = {}  # assigned, waiting for their store
        self.owned: set[tuple[str, int]] = set()  # every (topic, partition) assigned now
        self.assigned_once = False
        # A revoke (or loss) left nothing here and the group has not handed out the next
        # assignment yet: the agent processes nothing, whatever it had before (readiness).
        self.awaiting = False
        self.detached = False  # the session is closing: callbacks settle nothing more

    @property
    def settled(self) -> bool:
        """An assignment came and every partition of it is processing."""
        return self.assigned_once and not self.awaiting and not self.restorer.busy

    @property
    def joined(self) -> bool:
        """The member holds an assignment of the group now (possibly empty: more members than
        partitions), rather than waiting for one after a revoke took everything."""
        return self.assigned_once and not self.awaiting

    # ------------------------------------------------------------------ rebalance callbacks
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Assign, and pause what needs a store restored first: the restore runs from the loop.
        Incremental: ``partitions`` are the ones added (often none, when a rebalance only took
        some away); eager: the whole assignment."""
        if self.incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self.owned.update((tp.topic, tp.partition) for tp in partitions)
        waiting = [tp for tp in partitions if tp.partition not in self.stores]
        if waiting:
            consumer.pause(waiting)
        for tp in waiting:
            self.paused.setdefault(tp.partition, []).append(TopicPartition(tp.topic, tp.partition))
        self.restorer.queue(tp.partition for tp in waiting)
        self.assigned_once = True
        self.awaiting = False
        added = sorted({tp.partition for tp in partitions})
        rebalance_changed(self.agent, "assigned", len(added))
        log.info(
            "partitions assigned",
            extra={
                "agent": self.agent,
                "partitions": added,
                "owned": sorted({p for _, p in self.owned}),
                "incremental": self.incremental,
            },
        )

    def detach(self) -> None:
        """The session closes: the revoke its consumer's close serves must not commit or log."""
        self.detached = True

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Settle and close only the revoked partitions; the rest go on being processed."""
        if self.detached:
            return  # the client takes them away after the callback
        gone = self._release(partitions)
        self.committer.revoke({tp.partition for tp in partitions})
        self.close(gone)
        self._unassign(consumer, partitions)
        rebalance_changed(self.agent, "revoked", len({tp.partition for tp in partitions}))
        log.info(
            "partitions revoked",
            extra={
                "agent": self.agent,
                "partitions": sorted({tp.partition for tp in partitions}),
                "kept": sorted({p for _, p in self.owned}),
            },
        )

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (the session expired): nothing can be committed for them any more."""
        if self.detached:
            return  # the client takes them away after the callback
        self.close(self._release(partitions))
        self._unassign(consumer, partitions)
        rebalance_changed(self.agent, "lost", len({tp.partition for tp in partitions}))
        log.warning(
            "partitions lost", extra={"agent": self.agent, "partitions": sorted({tp.partition for tp in partitions})}
        )

    def _release(self, partitions: list[TopicPartition]) -> set[int]:
        """Forget ``partitions``; returns the partition numbers whose store has no input left here."""
        self.owned.difference_update((tp.topic, tp.partition) for tp in partitions)
        if not self.incremental:
            self.owned.clear()  # eager: a revoke takes everything
        kept = {p for _, p in self.owned}
        for p, tps in list(self.paused.items()):
            left = [tp for tp in tps if (tp.topic, tp.partition) in self.owned]
            if left:
                self.paused[p] = left
        if not self.owned:
            self.awaiting = True
        return {tp.partition for tp in partitions} - kept

    def _unassign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Incremental protocols take the revoked partitions away from the consumer here (eager:
        the client unassigns everything after the callback)."""
        if self.incremental and partitions:
            consumer.incremental_unassign(partitions)

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
