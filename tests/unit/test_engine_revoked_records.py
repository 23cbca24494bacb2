"""A record fetched just before its partition was revoked (or while it is paused for a restore)
reaches the loop without an open store: the loop must neither stop nor commit it. Revoked: the
new owner starts from the committed offset, the record is dropped. Still assigned but restoring:
the consumer is sought back to it, so it is handled once the store is ready."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from confluent_kafka import Message, TopicPartition

from processors.runtime._commit import Batch
from processors.runtime.worker import AgentRunner, WorkerOptions
from processors.settings import Settings
from tests.engine.app import build_app


class SeekRecorder:
    """Stands in for the consumer's seek only (no broker involved in this decision)."""

    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def test_records_of_partitions_without_a_store_are_dropped_or_sought_back(tmp_path) -> None:
    app = build_app("revoked-test")
    spec = app.agents["counter"]
    runner = AgentRunner(app, spec, Settings(state_dir=tmp_path), "w1", "exactly_once", threading.Event(),
                         WorkerOptions())  # fmt: skip
    consumer = SeekRecorder()
    runner.consumer = consumer  # type: ignore[assignment]
    runner.assignment = SimpleNamespace(paused={1: []}, stores={})  # type: ignore[assignment]
    topic = app.input_topics(spec)[0]
    msgs = [
        Message(topic=topic, partition=1, offset=10, key=b"k", value=b"v", headers=[], error=None),
        Message(topic=topic, partition=1, offset=11, key=b"k", value=b"v", headers=[], error=None),
        Message(topic=topic, partition=2, offset=20, key=b"k", value=b"v", headers=[], error=None),
    ]
    batch = Batch({})
    handled = runner._handle_records(msgs, batch)  # type: ignore[arg-type]
    assert handled == 0
    assert batch.next_offsets == {} and batch.first_offsets == {}, "a record not ours would be committed"
    assert consumer.seeks == [(topic, 1, 10)], "the paused partition goes back to its first record only"
