"""The commit interval (``commit_interval_ms``): work stays open across polls until it is due, and
every promise of a per-batch commit still holds. The loop's decisions are checked here with the real
processor and stores and a committer that records what each commit covers (no broker involved in
these decisions; the broker-side proof is tests/integration/test_engine_commit_interval.py).

What would be wrong: a commit covering an input not handled (or handled after an abort it does not
include), open work dropped on revoke or lost with a partition, stores written before the commit
that makes their work durable, an abort rewinding only to the last poll's offsets."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from processors.contracts import Envelope
from processors.partitioner import partition_for
from processors.runtime._commit import Batch, BatchAborted
from processors.runtime._housekeeping import Housekeeping, HousekeepingOptions
from processors.runtime.state import keys
from processors.runtime.state.store import MemoryStore
from processors.runtime.worker import AgentRunner, WorkerOptions
from processors.settings import Settings
from tests.engine.app import build_app

PARTITIONS = 3


@dataclass
class Commit:
    offsets: dict[tuple[str, int], int]
    writes: int
    stores_before: dict[int, int]


@dataclass
class RecordingCommitter:
    """Records each commit's offsets and writes; refuses a produce when told to."""

    stores: dict[int, MemoryStore]
    commits: list[Commit] = field(default_factory=list)
    aborts: int = 0
    refuse_next_send: bool = False
    before_revoke: Any = None
    pending = False

    def send_records(self, records: Any) -> None:
        if self.refuse_next_send:
            self.refuse_next_send = False
            raise BatchAborted("broker away")

    def commit(self, batch: Batch) -> dict[int, int]:
        before = {p: len(s.items()) for p, s in self.stores.items()}
        writes = sum(len(v.writes) for v in batch.views.values())
        self.commits.append(Commit(dict(batch.next_offsets), writes, before))
        batch.write_stores({})
        return {}

    def abort(self) -> None:
        self.aborts += 1

    def explain(self, exc: BatchAborted) -> BatchAborted:
        return exc

    def revoke(self, partitions: set[int]) -> None:
        if self.before_revoke is not None:
            self.before_revoke(partitions)


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def assignment(self) -> list[TopicPartition]:
        return []


def make_runner(tmp_path, interval_s: float) -> tuple[AgentRunner, RecordingCommitter, FakeConsumer]:
    app = build_app("interval-test")
    spec = app.agents["counter"]
    options = WorkerOptions(commit_interval_s=interval_s, commit_idle_s=0.0)
    runner = AgentRunner(app, spec, Settings(state_dir=tmp_path), "w1", "exactly_once", threading.Event(), options)
    stores = {p: MemoryStore() for p in range(PARTITIONS)}
    committer = RecordingCommitter(stores)
    committer.before_revoke = runner._settle_revoked
    consumer = FakeConsumer()
    runner.consumer = consumer  # type: ignore[assignment]
    runner.committer = committer  # type: ignore[assignment]
    runner.restorer = SimpleNamespace(busy=False)  # type: ignore[assignment]
    runner.assignment = SimpleNamespace(stores=stores, paused={})  # type: ignore[assignment]
    runner.housekeeping = Housekeeping(runner.processor, stores, runner.metrics, HousekeepingOptions())
    return runner, committer, consumer


class Records:
    """Valid counter.incremented records, each on the partition its key belongs to."""

    def __init__(self, app_topic: str, codec: Any) -> None:
        self.topic = app_topic
        self.codec = codec
        self.next_offset: dict[int, int] = {}

    def make(self, name: str) -> Any:  # a Message, standing in for a ConsumedRecord
        key = name.encode()
        p = partition_for(key, PARTITIONS)
        off = self.next_offset.get(p, 0)
        self.next_offset[p] = off + 1
        value = self.codec.encode("counter.incremented", {"name": name, "by": 1})
        headers: Any = Envelope.new("counter.incremented", "/t").to_headers()
        return Message(topic=self.topic, partition=p, offset=off, key=key, value=value, headers=headers, error=None)


@pytest.fixture
def setup(tmp_path):
    runner, committer, consumer = make_runner(tmp_path, interval_s=5.0)
    records = Records(runner.topics[0], runner.app.codec)
    return runner, committer, consumer, records


def _state_total(runner: AgentRunner, name: str) -> int | None:
    p = partition_for(name.encode(), PARTITIONS)
    raw = runner.assignment.stores[p].get(keys.state_key(name.encode()))
    return None if raw is None else len(raw)


def test_work_stays_open_across_polls_and_one_commit_covers_it_all(setup) -> None:
    runner, committer, _, records = setup
    first = [records.make("a"), records.make("b")]
    runner._process(first)
    assert committer.commits == [], "committed before the interval was up"
    assert all(not s.items() for s in runner.assignment.stores.values()), "a store written before its commit"
    runner._process([records.make("a")])
    assert committer.commits == []
    assert runner.open is not None and runner.open.handled == 3
    runner.open.opened -= 6  # the interval is up
    runner._process([])
    assert len(committer.commits) == 1
    commit = committer.commits[0]
    expected = {(records.topic, p): n for p, n in records.next_offset.items()}
    assert commit.offsets == expected, "the one commit covers every poll's inputs, and only them"
    assert all(n == 0 for n in commit.stores_before.values()), "stores written before the commit"
    assert _state_total(runner, "a") is not None, "the stores are written at the commit"
    assert runner.open is None


def test_a_later_poll_reads_what_an_earlier_one_wrote(setup) -> None:
    runner, committer, _, records = setup
    runner._process([records.make("a")])
    runner._process([records.make("a")])
    runner.open.opened -= 6
    runner._process([])
    p = partition_for(b"a", PARTITIONS)
    raw = runner.assignment.stores[p].get(keys.state_key(b"a"))
    assert raw is not None and b'"n":2' in raw, "the second poll saw the first one's uncommitted state"


def test_an_abort_rewinds_to_where_the_open_work_began_and_commits_nothing(setup) -> None:
    runner, committer, consumer, records = setup
    a1 = records.make("a")
    runner._process([a1])
    committer.refuse_next_send = True
    runner._process([records.make("a")])
    assert committer.commits == [], "a commit covered work of an aborted batch"
    assert committer.aborts == 1 and runner.open is None
    assert (records.topic, a1.partition(), a1.offset()) in consumer.seeks, "rewound to the first poll's offset"
    assert all(not s.items() for s in runner.assignment.stores.values()), "aborted work reached a store"


def test_an_abort_while_the_batch_runs_hands_back_the_records_not_reached(setup) -> None:
    """A write refused while the poll's first record is handled (the rest not yet reached): every
    partition of the poll goes back to its first record, or the consumer, already past them, never
    fetches them again (seen under load: two partitions stuck until the next rebalance)."""
    runner, committer, consumer, records = setup
    polled = [records.make(f"k{i}") for i in range(12)]
    partitions = {m.partition() for m in polled}
    assert len(partitions) >= 2, "the poll must span partitions"
    committer.refuse_next_send = True  # the first record's outputs are refused
    runner._process(polled)
    assert committer.commits == [] and committer.aborts == 1
    first: dict[int, int] = {}
    for m in polled:
        first.setdefault(m.partition(), m.offset())
    sought = {p: off for _, p, off in consumer.seeks}
    assert sought == first, "a partition of the poll was left past records never handled"


def test_a_revoke_commits_the_open_work_before_the_partitions_go(setup) -> None:
    runner, committer, _, records = setup
    runner._process([records.make("a"), records.make("b")])
    assert committer.commits == []
    committer.revoke({0, 1, 2})  # what the revoke callback calls, inside the poll
    assert len(committer.commits) == 1, "open work lost on revoke"
    assert sum(committer.commits[0].offsets.values()) == 2
    assert runner.open is None
    assert runner._settle_after_poll([]) == []


def test_a_failed_commit_on_revoke_aborts_and_rewinds_what_stays_here(setup) -> None:
    runner, committer, consumer, records = setup
    a, b = records.make("a"), records.make("b")
    assert a.partition() != b.partition()
    runner._process([a, b])

    def refuse(batch: Batch) -> dict[int, int]:
        raise BatchAborted("coordinator away")

    committer.commit = refuse
    committer.revoke({a.partition()})
    assert committer.aborts == 1
    later = records.make("b")
    kept = runner._settle_after_poll([later])
    assert kept == [], "a record past the rewind point would be handled out of order"
    assert consumer.seeks == [(records.topic, b.partition(), b.offset())], "only the kept partition is rewound"


def test_open_work_of_a_lost_partition_is_aborted_not_committed(setup) -> None:
    runner, committer, consumer, records = setup
    a, b = records.make("a"), records.make("b")
    runner._process([a, b])
    del runner.assignment.stores[a.partition()]  # on_lost closed its store
    runner._settle_after_poll([])
    assert committer.commits == [] and committer.aborts == 1 and runner.open is None
    assert consumer.seeks == [(records.topic, b.partition(), b.offset())]


def test_a_restore_step_or_a_stop_commits_the_open_work_first(setup) -> None:
    runner, committer, _, records = setup
    runner._process([records.make("a")])
    runner.restorer.busy = True  # a poll assigned a partition to restore
    runner._settle_after_poll([])
    assert len(committer.commits) == 1, "a restore step would write the changelog inside the open transaction"
    runner.restorer.busy = False
    runner._process([records.make("b")])
    runner._commit_open_work()
    assert len(committer.commits) == 2, "open work lost at stop"


def test_the_size_bound_and_interval_zero_commit_at_once(tmp_path) -> None:
    runner, committer, _ = make_runner(tmp_path, interval_s=0.0)
    records = Records(runner.topics[0], runner.app.codec)
    runner._process([records.make("a")])
    assert len(committer.commits) == 1, "interval 0 commits every batch"
    bounded, committer2, _ = make_runner(tmp_path / "b", interval_s=5.0)
    bounded.options = WorkerOptions(commit_interval_s=5.0, commit_max_records=2, commit_idle_s=0.0)
    records2 = Records(bounded.topics[0], bounded.app.codec)
    bounded._process([records2.make("a")])
    assert committer2.commits == []
    bounded._process([records2.make("b")])
    assert len(committer2.commits) == 1, "the size bound commits"


def test_the_poll_waits_no_longer_than_the_open_work_may(setup) -> None:
    runner, _, _, records = setup
    assert runner._poll_timeout() == runner.options.poll_timeout_s
    runner._process([records.make("a")])
    runner.open.opened -= 4.95
    assert runner._poll_timeout() <= 0.05 + 1e-3


def test_an_interval_past_the_transaction_timeout_is_refused(tmp_path) -> None:
    app = build_app("interval-test")
    options = WorkerOptions(commit_interval_s=15.0)  # + max_batch_s 10 s > transaction timeout 20 s
    with pytest.raises(Exception, match="transaction timeout"):
        AgentRunner(app, app.agents["counter"], Settings(state_dir=tmp_path), "w1", "exactly_once",
                    threading.Event(), options)  # fmt: skip
    AgentRunner(app, app.agents["counter"], Settings(state_dir=tmp_path), "w1", "at_least_once",
                threading.Event(), options)  # fmt: skip


def test_an_idle_poll_commits_early_when_commit_idle_is_set(tmp_path) -> None:
    runner, committer, _ = make_runner(tmp_path, interval_s=5.0)
    records = Records(runner.topics[0], runner.app.codec)
    runner._process([records.make("a")])
    runner._process([])  # commit_idle off: an empty poll does not commit
    assert committer.commits == []
    assert runner._poll_timeout() > 0.1
    runner.commit_idle_s = 0.01
    assert runner._poll_timeout() <= 0.01, "the poll waits no longer than the idle time"
    runner._process([records.make("b")])
    assert committer.commits == [], "a poll that brought records is not idle"
    runner._process([])
    assert len(committer.commits) == 1 and sum(committer.commits[0].offsets.values()) == 2


def test_commit_idle_defaults_on_and_zero_turns_it_off(tmp_path) -> None:
    app = build_app("interval-test")
    spec = app.agents["counter"]
    on = AgentRunner(app, spec, Settings(state_dir=tmp_path), "w1", "exactly_once", threading.Event(), WorkerOptions())
    assert on.commit_interval_s == 0.02 and on.commit_idle_s == 0.01
    off = AgentRunner(app, spec, Settings(state_dir=tmp_path, commit_idle_ms=0), "w1", "exactly_once",
                      threading.Event(), WorkerOptions())  # fmt: skip
    assert off.commit_idle_s is None
